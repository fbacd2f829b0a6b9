// MQTT device → gateway → real node:http cloud receiver, with the gateway in-process.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tempDir, waitFor, hasCommand } from '../helpers/util.js'
import { startReceiver, type ReceivedEvent } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import type { Gateway } from '../../gateway/gateway.js'
import { freePort } from '../../scripts/net.js'

const run = promisify(execFile)
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

function checkEvent (ev: ReceivedEvent, gw: Gateway, topic: string, data: unknown): void {
  assert.equal(ev.specversion, '1.0')
  assert.match(ev.id, UUID_V7)
  assert.equal(ev.source, '/gateways/gw-test/devices/sensor-1')
  assert.equal(ev.type, 'gridgate.telemetry')
  assert.equal(ev.subject, topic)
  assert.match(String(ev.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  assert.ok(Math.abs(Date.parse(String(ev.time)) - Date.now()) < 60_000, 'time is the receipt time')
  assert.equal(ev.datacontenttype, 'application/json')
  assert.deepEqual(ev.data, data)
  assert.equal(ev.deviceid, 'sensor-1')
  assert.equal(ev.protocol, 'mqtt')
  assert.equal(ev.gatewayid, 'gw-test')
  assert.equal(ev.storeid, gw.store.info.storeId)
  assert.match(ev.sequence, /^\d{20}$/)
}

const seqOf = (e: ReceivedEvent): number => Number(e.sequence)

test('an MQTT publish reaches the HTTP uplink as a CloudEvent with every attribute', async (t) => {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/temp', '{"c":21.5}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'one event at the receiver')
  checkEvent(rx.events[0]!, gw, 'devices/sensor-1/temp', { c: 21.5 })
  const req = rx.requests[0]!
  assert.equal(req.headers['content-type'], 'application/cloudevents-batch+json')
  const seq = seqOf(rx.events[0]!)
  assert.equal(req.headers['idempotency-key'], `${gw.store.info.storeId}:${seq}-${seq}`)
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  for (const series of [
    'gridgate_ingress_total{protocol="mqtt",outcome="stored"} 1',
    'gridgate_queue_events{uplink="cloud"}',
    'gridgate_queue_bytes{uplink="cloud"}',
    'gridgate_queue_oldest_age_seconds{uplink="cloud"}',
    'gridgate_uplink_sends_total{uplink="cloud",outcome="delivered"}',
    'gridgate_uplink_events_total{uplink="cloud"} 1',
    'gridgate_store_synchronous 2',
    'gridgate_store_ready 1',
    'gridgate_clock_synced 1',
    'gridgate_connections{protocol="mqtt"} 1',
    'gridgate_process_resident_memory_bytes',
  ]) assert.ok(metrics.includes(series), `/metrics has ${series}`)
})

test('mosquitto_pub with its default client id publishes an event that reaches the uplink', { skip: hasCommand('mosquitto_pub') ? false : 'mosquitto_pub is not installed (apt-get install mosquitto-clients)' }, async (t) => {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }))
  await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(gw.mqttAddress!.port), '-u', 'sensor-1', '-P', TOKENS['sensor-1'],
    '-q', '1', '-t', 'devices/sensor-1/temp', '-m', '{"c":21.5}'])
  await waitFor(() => rx.events.length === 1, 'the mosquitto_pub event at the receiver')
  checkEvent(rx.events[0]!, gw, 'devices/sensor-1/temp', { c: 21.5 })
  // MQTT 5 with a content type, through mosquitto_pub too.
  await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(gw.mqttAddress!.port), '-u', 'sensor-1', '-P', TOKENS['sensor-1'],
    '-V', 'mqttv5', '-D', 'publish', 'content-type', 'text/plain', '-q', '2', '-t', 'devices/sensor-1/level', '-m', '42'])
  await waitFor(() => rx.events.length === 2, 'the MQTT 5 event')
  assert.deepEqual(rx.events[1]!.data, { value: 42 })
  assert.equal(rx.events[1]!.sourcecontenttype, 'text/plain')
})

test('during an outage (connections refused, then 503) events are kept and all arrive in sequence order', async (t) => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}/events`
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const N = 1200
  for (let i = 0; i < N / 2; i++) await client.publishAsync('devices/sensor-1/n', JSON.stringify({ n: i }), { qos: 1 })
  await waitFor(() => gw.forwarders.get('cloud')!.state === 'backoff', 'the forwarder is backing off')
  // The receiver comes up on that port but answers 503 for a while.
  const rx = await startReceiver(t)
  await rx.close()
  const http = await import('node:http')
  let unavailable = true
  const events: ReceivedEvent[] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      if (unavailable) { res.writeHead(503).end(); return }
      events.push(...JSON.parse(Buffer.concat(chunks).toString()) as ReceivedEvent[])
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  for (let i = N / 2; i < N; i++) await client.publishAsync('devices/sensor-1/n', JSON.stringify({ n: i }), { qos: 1 })
  assert.equal(events.length, 0)
  unavailable = false
  await waitFor(() => events.length >= N, `all ${N} events delivered`, 60_000)
  const ns = events.map(e => (e.data as { n: number }).n)
  assert.deepEqual(ns, Array.from({ length: N }, (_, i) => i), 'every event, once, in order')
  const seqs = events.map(seqOf)
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!)
  // The incremental backlog counters come back to zero exactly.
  const counters = gw.store.uplinks.get('cloud')!
  await waitFor(() => counters.backlogEvents === 0 && counters.backlogBytes === 0, 'the backlog counters are back to zero')
  await waitFor(async () => (await gw.store.stats()).events === 0, 'every delivered row deleted')
})

test('a misconfigured cloud (401) keeps every event: nothing dead-lettered, all delivered once it accepts', async (t) => {
  const rx = await startReceiver(t)
  let status = 401
  rx.respond = () => ({ status })
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const N = 1000
  await Promise.all(Array.from({ length: N }, (_, i) => client.publishAsync('devices/sensor-1/n', JSON.stringify({ n: i }), { qos: 1 })))
  await waitFor(() => gw.forwarders.get('cloud')!.state === 'rejected', 'the uplink is in the rejected state')
  assert.equal(gw.store.uplinks.get('cloud')!.backlogEvents, N)
  status = 200
  await waitFor(() => rx.events.length >= N, 'all events delivered', 60_000)
  assert.equal(gw.store.uplinks.get('cloud')!.deadLetters, 0)
  assert.deepEqual(rx.events.map(e => (e.data as { n: number }).n), Array.from({ length: N }, (_, i) => i))
})

test('one poison event among 500 (400) is dead-lettered and the other 499 are delivered in order', async (t) => {
  const rx = await startReceiver(t)
  rx.respond = (events) => events.some(e => (e.data as { n: number }).n === 250) ? { status: 400, body: 'bad event' } : { status: 200 }
  const cfg = baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url })
  ;(cfg.uplinks as Array<Record<string, unknown>>)[0]!.batchMaxDelay = '200ms'
  const gw = await startInProcess(t, cfg)
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await Promise.all(Array.from({ length: 500 }, (_, i) => client.publishAsync('devices/sensor-1/n', JSON.stringify({ n: i }), { qos: 1 })))
  await waitFor(() => rx.events.length === 499, '499 events delivered', 30_000)
  const ns = rx.events.map(e => (e.data as { n: number }).n)
  assert.deepEqual(ns, Array.from({ length: 500 }, (_, i) => i).filter(n => n !== 250))
  await waitFor(() => gw.store.uplinks.get('cloud')!.deadLetters === 1, 'the poison event is a dead letter')
  const res = await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/uplinks`)
  const body = await res.json() as { uplinks: Array<{ name: string, deadLetters: number, backlogEvents: number }> }
  assert.equal(body.uplinks[0]!.deadLetters, 1)
  await waitFor(async () => (await gw.store.stats()).deadLetters === 1, 'the dead letter is stored')
})

test('after the store drains to empty and the gateway restarts, a new event gets a larger sequence', async (t) => {
  const rx = await startReceiver(t)
  const dataDir = path.join(tempDir(t), 'data')
  const gw1 = await startInProcess(t, baseConfig(dataDir, { cloud: rx.url }))
  const c1 = await connect(t, gw1.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let i = 0; i < 3; i++) await c1.publishAsync('devices/sensor-1/n', JSON.stringify({ n: i }), { qos: 1 })
  await waitFor(() => rx.events.length === 3, 'three events delivered')
  await waitFor(async () => (await gw1.store.stats()).events === 0, 'the store drained to empty')
  c1.end(true)
  await gw1.stop()
  const gw2 = await startInProcess(t, baseConfig(dataDir, { cloud: rx.url }))
  assert.equal(gw2.store.info.storeId, gw1.store.info.storeId)
  const c2 = await connect(t, gw2.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await c2.publishAsync('devices/sensor-1/n', JSON.stringify({ n: 3 }), { qos: 1 })
  await waitFor(() => rx.events.length === 4, 'the new event delivered')
  assert.ok(seqOf(rx.events[3]!) > seqOf(rx.events[2]!), 'the sequence was not reused')
})

test('two uplinks each get every event through their own cursor; a dead one does not hold back the other', async (t) => {
  const live = await startReceiver(t)
  const dead = await startReceiver(t)
  let deadUp = false
  dead.respond = () => deadUp ? { status: 200 } : { status: 503 }
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { live: live.url, dead: dead.url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-2', password: TOKENS['sensor-2'] })
  for (let i = 0; i < 50; i++) await client.publishAsync('devices/sensor-2/n', JSON.stringify({ n: i }), { qos: 1 })
  await waitFor(() => live.events.length === 50, 'the live uplink got everything')
  assert.equal(dead.events.length, 0)
  assert.equal((await gw.store.stats()).events, 50, 'rows stay while the dead uplink has not acknowledged them')
  deadUp = true
  await waitFor(() => dead.events.length === 50, 'the returning uplink catches up')
  await waitFor(async () => (await gw.store.stats()).events === 0, 'rows deleted once both acknowledged')
})

test('credentials in an uplink URL are sent as Basic auth, never in the request line', async (t) => {
  const rx = await startReceiver(t)
  const url = rx.url.replace('http://', 'http://cloud-user:s%40cret@')
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the event delivered')
  assert.equal(rx.requests[0]!.headers.authorization, `Basic ${Buffer.from('cloud-user:s@cret').toString('base64')}`)
})
