// MQTT device → gateway (in-process) → gRPC uplink → the reference receiver (scripts/grpc-receiver.ts).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { tempDir, waitFor, hasCommand } from '../helpers/util.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import { makeCerts } from '../helpers/certs.js'
import { startGrpcReceiver } from '../../scripts/grpc-receiver.js'

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const noOpenssl = hasCommand('openssl') ? false : 'openssl is not installed'

function grpcUplink (address: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'analytics', type: 'grpc', address, batchMaxDelay: '5ms', timeout: '2s', retry: { initialDelay: '10ms', maxDelay: '200ms' }, ...extra }
}

test('an MQTT publish reaches the gRPC receiver as a protobuf CloudEvent with storeid and sequence', async (t) => {
  const rx = await startGrpcReceiver()
  t.after(() => rx.close())
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, { uplinks: [grpcUplink(rx.address)] }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/temp', '{"c":21.5}', { qos: 1 })
  await client.publishAsync('devices/sensor-1/temp', '{"c":22}', { qos: 1 })
  await waitFor(() => rx.events.length === 2, 'two events at the gRPC receiver')
  const [ev] = rx.events
  assert.equal(ev!.specversion, '1.0')
  assert.match(ev!.id, UUID_V7)
  assert.equal(ev!.source, '/gateways/gw-test/devices/sensor-1')
  assert.equal(ev!.subject, 'devices/sensor-1/temp')
  assert.equal(ev!.datacontenttype, 'application/json')
  assert.deepEqual(rx.events.map(e => e.data), [{ c: 21.5 }, { c: 22 }])
  assert.equal(ev!.storeid, gw.store.info.storeId)
  assert.match(ev!.sequence, /^\d{20}$/)
  assert.ok(Number(rx.events[1]!.sequence) > Number(ev!.sequence))
  const report = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/uplinks`)).json() as { uplinks: Array<{ name: string, endpoints: Array<{ endpoint: string, breaker: string }> }> }
  assert.deepEqual(report.uplinks[0]!.endpoints.map(e => [e.endpoint, e.breaker]), [[rx.address, 'closed']])
})

test('the gRPC uplink speaks mutual TLS with a private CA', { skip: noOpenssl }, async (t) => {
  const certs = makeCerts(t)
  const rx = await startGrpcReceiver({ tls: { cert: certs.pem.serverCert, key: certs.pem.serverKey, ca: certs.pem.ca } })
  t.after(() => rx.close())
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [grpcUplink(`127.0.0.1:${rx.port}`, { tls: { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey }, gzip: true })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/secure', '{"tls":true}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the event over mutual TLS')
  assert.deepEqual(rx.events[0]!.data, { tls: true })
})

test('without a client certificate the TLS receiver never gets the events, and they are kept', { skip: noOpenssl }, async (t) => {
  const certs = makeCerts(t)
  const rx = await startGrpcReceiver({ tls: { cert: certs.pem.serverCert, key: certs.pem.serverKey, ca: certs.pem.ca } })
  t.after(() => rx.close())
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [grpcUplink(`127.0.0.1:${rx.port}`, { tls: { ca: certs.ca } })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/secure', '{"n":1}', { qos: 1 })
  const uplink = async (): Promise<{ state: string, backlogEvents: number, deadLetters: number, lastError: string | null }> =>
    ((await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/uplinks`)).json()) as { uplinks: Array<{ state: string, backlogEvents: number, deadLetters: number, lastError: string | null }> }).uplinks[0]!
  await waitFor(async () => (await uplink()).lastError !== null, 'a failed handshake reported')
  const u = await uplink()
  assert.equal(u.backlogEvents, 1)
  assert.equal(u.deadLetters, 0)
  assert.equal(rx.events.length, 0)
})

test('with a wrong token the events are kept, not dead-lettered, and arrive once the token is fixed', async (t) => {
  const rx = await startGrpcReceiver({ token: 'cloud-token-2026' })
  t.after(() => rx.close())
  const dataDir = path.join(tempDir(t), 'data')
  const gw = await startInProcess(t, baseConfig(dataDir, {}, { uplinks: [grpcUplink(rx.address, { bearerToken: 'expired-token' })] }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 5; n++) await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`
  type Report = { state: string, backlogEvents: number, deadLetters: number, lastError: string | null, endpoints: Array<{ breaker: string }> }
  const uplink = async (): Promise<Report> => ((await (await fetch(`${admin}/api/v1/uplinks`)).json()) as { uplinks: Report[] }).uplinks[0]!
  await waitFor(async () => (await uplink()).state === 'rejected', 'the uplink in state rejected')
  const u = await uplink()
  assert.equal(u.backlogEvents, 5)
  assert.equal(u.deadLetters, 0)
  assert.match(u.lastError ?? '', /UNAUTHENTICATED/)
  assert.equal(u.endpoints[0]!.breaker, 'open')
  assert.equal(rx.events.length, 0)
  assert.ok(rx.calls.every(c => c.code === 16), 'every call was refused as UNAUTHENTICATED')
  client.end(true)
  await gw.stop()

  const fixed = await startInProcess(t, baseConfig(dataDir, {}, { uplinks: [grpcUplink(rx.address, { bearerToken: 'cloud-token-2026' })] }))
  await waitFor(() => rx.events.length >= 5, 'the kept events after the token was fixed')
  assert.deepEqual(rx.events.map(e => (e.data as { n: number }).n), [0, 1, 2, 3, 4])
  assert.equal(rx.calls.at(-1)?.metadata.authorization, 'Bearer cloud-token-2026')
  await waitFor(() => fixed.store.uplinks.get('analytics')?.backlogEvents === 0, 'the backlog drained')
})

test('the reference receiver runs as a script and prints each event as a JSON line', async (t) => {
  const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'grpc-receiver.js')
  const child = spawn(process.execPath, [script, '--host', '127.0.0.1', '--port', '0', '--token', 'tok-12345'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => { child.kill('SIGKILL') })
  let stderr = ''
  let stdout = ''
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  const address = (await waitFor(() => /listening on (\S+)/.exec(stderr)?.[1], 'the receiver listening'))
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, { uplinks: [grpcUplink(address, { bearerToken: 'tok-12345' })] }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"hello":"cloud"}', { qos: 1 })
  const line = await waitFor(() => stdout.split('\n').find(l => l.includes('"hello"')), 'a JSON line on stdout')
  const ev = JSON.parse(line) as Record<string, unknown>
  assert.deepEqual(ev.data, { hello: 'cloud' })
  assert.equal(ev.storeid, gw.store.info.storeId)
})

test('gRPC failover: while the first receiver answers UNAVAILABLE the second one gets the events', async (t) => {
  const first = await startGrpcReceiver()
  const second = await startGrpcReceiver()
  t.after(() => Promise.all([first.close(), second.close()]))
  first.respond = () => ({ code: 14, details: 'draining' })
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [{ ...grpcUplink(''), address: undefined, endpoints: [first.address, second.address], breaker: { failures: 1, halfOpenAfter: '1m' } }],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 3; n++) await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
  await waitFor(() => second.events.length === 3, 'three events at the second receiver')
  assert.deepEqual(second.events.map(e => (e.data as { n: number }).n), [0, 1, 2])
  assert.equal(first.events.length, 0)
  assert.equal(first.calls.length, 1, 'the first receiver was ejected after one failure')
})
