// Dead letters round trip through `gridgate dlq list|replay|purge`, with the gateway running (the CLI
// goes through the admin API on the data dir's socket) and stopped (the CLI opens the store itself).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tempDir, waitFor, cliPath } from '../helpers/util.js'
import { startReceiver, type Receiver } from '../helpers/receiver.js'
import { baseConfig, spawnGateway, writeConfig, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'

const run = promisify(execFile)

async function dlq (configFile: string, ...args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await run(process.execPath, [cliPath, 'dlq', ...args, '--config', configFile], { env: { PATH: process.env.PATH ?? '' } })
  return JSON.parse(stdout) as Record<string, unknown>
}

interface Listed { deadLetters: Array<{ id: number, uplink: string, eventId: string, reason: string, status: number, event: { data: { n: number } } }>, next: number | null }

/** The receiver refuses any batch holding a poison event with 400: the forwarder bisects it into dead letters. */
function refusePoison (rx: Receiver): void {
  rx.respond = (events) => events.some(e => (e.data as { poison?: boolean }).poison === true) ? { status: 400, body: 'bad event' } : { status: 200 }
}

test('dlq list, replay and purge, with the gateway running and stopped', async (t) => {
  const rx = await startReceiver(t)
  refusePoison(rx)
  const dir = tempDir(t)
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), { cloud: rx.url }))
  let gw = await spawnGateway(t, file)
  const c = await connect(t, gw.mqttPort, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 6; n++) {
    await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n, poison: n % 2 === 1 }), { qos: 1 })
  }
  await waitFor(() => rx.events.length === 3, 'the good events delivered')
  await waitFor(async () => ((await (await gw.admin('/api/v1/uplinks')).json()) as { uplinks: Array<{ deadLetters: number }> }).uplinks[0]!.deadLetters === 3, 'three dead letters')

  // Running: the CLI goes through the gateway.
  const listed = await dlq(file, 'list') as unknown as Listed
  assert.deepEqual(listed.deadLetters.map(d => d.event.data.n), [1, 3, 5])
  assert.ok(listed.deadLetters.every(d => d.uplink === 'cloud' && d.status === 400 && /rejected/.test(d.reason)))
  const ids = new Map(listed.deadLetters.map(d => [d.event.data.n, d.eventId]))

  // Replay one of them while the receiver accepts everything: it arrives with its original id.
  rx.respond = () => ({ status: 200 })
  const replay = await dlq(file, 'replay', '--id', String(listed.deadLetters[0]!.id))
  assert.deepEqual(replay, { replayed: 1, skipped: 0, via: 'gateway' })
  await waitFor(() => rx.events.length === 4, 'the replayed event delivered')
  const replayed = rx.events[3]!
  assert.equal(replayed.id, ids.get(1), 'the original event id')
  assert.ok(BigInt(replayed.sequence) > BigInt(rx.events[2]!.sequence), 'a new, higher sequence')

  // Stopped: the CLI opens the store itself.
  gw.child.kill('SIGTERM')
  assert.equal((await gw.exited).code, 0)
  const offline = await dlq(file, 'list', '--uplink', 'cloud') as unknown as Listed
  assert.deepEqual(offline.deadLetters.map(d => d.event.data.n), [3, 5])
  assert.deepEqual(await dlq(file, 'replay', '--uplink', 'cloud'), { replayed: 2, skipped: 0, via: 'store' })
  assert.deepEqual((await dlq(file, 'list') as unknown as Listed).deadLetters, [])
  gw = await spawnGateway(t, file)
  await waitFor(() => rx.events.length === 6, 'the events replayed offline are delivered after the start')
  assert.deepEqual(rx.events.slice(4).map(e => e.id), [ids.get(3), ids.get(5)])

  // Purge, running: new poison, then purge it.
  refusePoison(rx)
  const c2 = await connect(t, gw.mqttPort, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await c2.publishAsync('devices/sensor-1/t', JSON.stringify({ n: 7, poison: true }), { qos: 1 })
  await waitFor(async () => (await dlq(file, 'list') as unknown as Listed).deadLetters.length === 1, 'a new dead letter')
  assert.deepEqual(await dlq(file, 'purge'), { purged: 1, via: 'gateway' })
  assert.deepEqual((await dlq(file, 'list') as unknown as Listed).deadLetters, [])
  const metrics = await (await gw.admin('/metrics')).text()
  assert.match(metrics, /gridgate_dead_letters\{uplink="cloud"\} 0/)

  // A wrong uplink name is a usage error (exit 2) with a message naming the configured ones.
  await assert.rejects(dlq(file, 'list', '--uplink', 'nope'), (err: Error & { code?: number, stderr?: string }) => err.code === 2 && /configured: cloud/.test(err.stderr ?? ''))
})
