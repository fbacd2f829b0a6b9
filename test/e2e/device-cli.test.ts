// `gridgate device add|list|enable|disable|remove` with the gateway stopped (the CLI opens the store)
// and running (through the admin API on the data dir's socket, effective without a restart).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { once, type EventEmitter } from 'node:events'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tempDir, waitFor, cliPath } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, spawnGateway, writeConfig } from '../helpers/gateway.js'
import { connect, connectRefused } from '../helpers/mqtt.js'

const run = promisify(execFile)

interface Result { stdout: string, stderr: string }

function device (configFile: string, ...args: string[]): Promise<Result> {
  return run(process.execPath, [cliPath, 'device', ...args, '--config', configFile], { env: { PATH: process.env.PATH ?? '' } })
}

async function json (configFile: string, ...args: string[]): Promise<Record<string, unknown>> {
  return JSON.parse((await device(configFile, ...args)).stdout) as Record<string, unknown>
}

/** `<id>:<secret>` from `device add`: the only line on stdout. */
async function add (configFile: string, id: string, ...args: string[]): Promise<{ credential: string, secret: string, stderr: string }> {
  const { stdout, stderr } = await device(configFile, 'add', id, ...args)
  const credential = stdout.trim()
  assert.match(credential, new RegExp(`^${id}:[A-Za-z0-9_-]{43}$`))
  return { credential, secret: credential.slice(id.length + 1), stderr }
}

interface Listed { devices: Array<{ id: string, source: string, enabled: boolean, publish: string[], online: boolean, lastSeen: string | null, protocols: Record<string, { online: boolean, connections?: number, lastSeen: string | null }> }> }

function failsWith (exitCode: number, code: string) {
  return (err: Error & { code?: number, stderr?: string }) => err.code === exitCode && (err.stderr ?? '').includes(code)
}

function storeBytes (dataDir: string): Buffer {
  return Buffer.concat(fs.readdirSync(dataDir).filter(f => f.startsWith('gridgate.db')).map(f => fs.readFileSync(path.join(dataDir, f))))
}

test('device add, list, disable, enable and remove, with the gateway stopped and running', async (t) => {
  const rx = await startReceiver(t)
  const dir = tempDir(t)
  const dataDir = path.join(dir, 'data')
  const file = writeConfig(dir, baseConfig(dataDir, { cloud: rx.url }))

  // Usage errors: exit code 2, nothing touched.
  await assert.rejects(device(file, 'add'), failsWith(2, 'GG_ERR_USAGE'))
  await assert.rejects(device(file, 'frobnicate', 'x'), failsWith(2, 'GG_ERR_USAGE'))
  await assert.rejects(device(file, 'list', '--publish', 'x/#'), failsWith(2, 'GG_ERR_USAGE'))
  await assert.rejects(device(file, 'add', 'no/slash'), failsWith(2, 'GG_ERR_DEVICE_INVALID'))
  await assert.rejects(device(file, 'add', 'ok', '--publish', 'a/#/b'), failsWith(2, 'GG_ERR_DEVICE_INVALID'))

  // Stopped: the CLI opens the store (the data dir need not exist yet).
  const early = await add(file, 'early-1')
  assert.match(early.stderr, /when it starts/)
  await assert.rejects(device(file, 'add', 'early-1'), failsWith(1, 'GG_ERR_DEVICE_EXISTS'))
  await assert.rejects(device(file, 'add', 'sensor-1'), failsWith(1, 'GG_ERR_DEVICE_EXISTS'))
  await assert.rejects(device(file, 'disable', 'sensor-1'), failsWith(1, 'GG_ERR_DEVICE_IN_CONFIG'))
  await assert.rejects(device(file, 'remove', 'ghost'), failsWith(1, 'GG_ERR_DEVICE_NOT_FOUND'))
  const doomed = await add(file, 'doomed')
  const off = await json(file, 'disable', 'doomed')
  assert.equal(off.via, 'store')
  assert.equal((off.device as { enabled: boolean }).enabled, false)
  assert.deepEqual(await json(file, 'remove', 'doomed'), { removed: 'doomed', source: 'registry', via: 'store' })
  let listed = await json(file, 'list') as unknown as Listed
  assert.deepEqual(listed.devices.map(d => [d.id, d.source, d.enabled]), [['controller', 'config', true], ['early-1', 'registry', true], ['sensor-1', 'config', true], ['sensor-2', 'config', true]])

  // The gateway reads the registry when it starts.
  const gw = await spawnGateway(t, file)
  const early1 = await connect(t, gw.mqttPort, { username: 'early-1', password: early.secret })
  await early1.publishAsync('devices/early-1/t', '{"n":0}', { qos: 1 })
  assert.equal((await connectRefused(gw.mqttPort, { username: 'doomed', password: doomed.secret })).code, 4)

  // Running: the CLI goes through the gateway; the new device works at once on MQTT and HTTP.
  const live = await add(file, 'live-1', '--publish', 'devices/live-1/#', '--publish', '!devices/live-1/commands/#', '--subscribe', 'devices/live-1/commands/#')
  assert.match(live.stderr, /accepts it now/)
  const c = await connect(t, gw.mqttPort, { username: 'live-1', password: live.secret })
  await c.publishAsync('devices/live-1/temp', '{"c":21.5}', { qos: 1 })
  const webPort = gw.ports.websocket!
  const post = (): Promise<Response> => fetch(`http://127.0.0.1:${webPort}/v1/devices/live-1/events/hum`, { method: 'POST', headers: { authorization: `Bearer ${live.credential}`, 'content-type': 'application/json' }, body: '{"h":40}' })
  assert.equal((await post()).status, 202)
  await waitFor(() => ['devices/early-1/t', 'devices/live-1/temp', 'devices/live-1/hum'].every(s => rx.events.some(e => e.subject === s)), 'the events of both registry devices are delivered')

  // The admin API shows last seen and online per protocol.
  const api = (await (await gw.admin('/api/v1/devices')).json()) as Listed
  const l1 = api.devices.find(d => d.id === 'live-1')!
  assert.equal(l1.source, 'registry')
  assert.deepEqual([l1.protocols.mqtt!.online, l1.protocols.mqtt!.connections, l1.protocols.http!.online, l1.protocols.ws!.online, l1.protocols.coap!.online], [true, 1, true, false, false])
  assert.ok(l1.lastSeen !== null && l1.protocols.mqtt!.lastSeen !== null && l1.protocols.coap!.lastSeen === null)
  listed = await json(file, 'list') as unknown as Listed
  assert.deepEqual(listed.devices.find(d => d.id === 'live-1')!.publish, ['devices/live-1/#', '!devices/live-1/commands/#'])

  // Disable: the live MQTT session is closed; the next CONNECT and the next HTTP request are refused.
  const closed = once(c as unknown as EventEmitter, 'close')
  const disabled = await json(file, 'disable', 'live-1')
  assert.equal(disabled.via, 'gateway')
  assert.equal((disabled.device as { enabled: boolean }).enabled, false)
  await closed
  assert.equal((await connectRefused(gw.mqttPort, { username: 'live-1', password: live.secret })).code, 4)
  assert.equal((await post()).status, 401)
  assert.equal(((await json(file, 'enable', 'live-1')).device as { enabled: boolean }).enabled, true)
  await connect(t, gw.mqttPort, { username: 'live-1', password: live.secret })
  assert.deepEqual(await json(file, 'remove', 'live-1'), { removed: 'live-1', source: 'registry', via: 'gateway' })
  assert.equal((await connectRefused(gw.mqttPort, { username: 'live-1', password: live.secret })).code, 4)

  // Secrets: never in list output, in the gateway's logs, or in the store file in clear.
  const listText = (await device(file, 'list')).stdout
  gw.child.kill('SIGTERM')
  assert.equal((await gw.exited).code, 0)
  const logs = JSON.stringify(gw.logs) + gw.stderr.join('')
  const bytes = storeBytes(dataDir)
  for (const secret of [early.secret, live.secret, doomed.secret]) {
    assert.ok(!listText.includes(secret), 'not in list')
    assert.ok(!logs.includes(secret), 'not in the logs')
    assert.ok(!bytes.includes(Buffer.from(secret)), 'not in the store file')
  }
  assert.ok(!listText.includes('$scrypt$'), 'list shows no hashes')
  assert.ok(bytes.includes(Buffer.from('$scrypt$ln=15,r=8,p=1$')), 'the store holds hashes')

  // Stopped again: the changes made through the gateway are in the store.
  listed = await json(file, 'list') as unknown as Listed
  assert.deepEqual(listed.devices.filter(d => d.source === 'registry').map(d => [d.id, d.enabled]), [['early-1', true]])
})
