// The store stays bounded and honest (DESIGN.md "Store"): quota with drop-oldest and reject-new,
// maxLag, per-uplink filters, a full disk, TTL across a clock step, and the WAL checkpointer.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { tempDir, waitFor } from '../helpers/util.js'
import { startReceiver, type Receiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import type { Gateway } from '../../gateway/gateway.js'

interface UplinkView {
  name: string
  state: string
  backlogEvents: number
  backlogBytes: number
  deadLetters: number
  dropped: { quota: number, ttl: number, lag: number }
}

async function uplinks (gw: Gateway): Promise<UplinkView[]> {
  const res = await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/uplinks`)
  return (await res.json() as { uplinks: UplinkView[] }).uplinks
}

async function uplink (gw: Gateway, name: string): Promise<UplinkView> {
  return (await uplinks(gw)).find(u => u.name === name)!
}

async function metrics (gw: Gateway): Promise<string> {
  return (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
}

const down = (rx: Receiver): void => { rx.respond = () => ({ status: 503 }) }
const up = (rx: Receiver): void => { rx.respond = () => ({ status: 200 }) }

/** `n` values of the received events' data.n, as numbers. */
const ns = (rx: Receiver): number[] => rx.events.map(e => (e.data as { n: number }).n)

const PAD = 'x'.repeat(1000)

function config (t: TestContext, uplinkUrls: Record<string, string>, store: Record<string, unknown>, perUplink: Record<string, Record<string, unknown>> = {}) {
  const c = baseConfig(path.join(tempDir(t), 'data'), uplinkUrls, { store: { reserveBytes: '64KiB', ...store } })
  c.uplinks = (c.uplinks as Array<Record<string, unknown>>).map(u => ({ ...u, ...(perUplink[u.name as string] ?? {}) }))
  return c
}

test('drop-oldest under a tiny quota keeps the newest events and counts every drop', async (t) => {
  const rx = await startReceiver(t)
  down(rx)
  const gw = await startInProcess(t, config(t, { cloud: rx.url }, { maxBytes: '512KiB', walMaxBytes: '128KiB', whenFull: 'drop-oldest' }))
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const total = 1500
  for (let n = 0; n < total; n++) await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n, pad: PAD }), { qos: 1 })
  const before = await uplink(gw, 'cloud')
  assert.ok(before.dropped.quota > 0, 'the quota forced drops')
  assert.equal(before.backlogEvents + before.dropped.quota, total, 'every acked event is either waiting or counted as dropped')
  const stats = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/store`)).json() as { usedBytes: number, walBytes: number }
  assert.ok(stats.usedBytes + stats.walBytes <= 512 * 1024, `pages in use + WAL = ${stats.usedBytes + stats.walBytes} bytes stay within maxBytes`)
  up(rx)
  await waitFor(async () => (await uplink(gw, 'cloud')).backlogEvents === 0 && rx.events.length > 0, 'the backlog delivered')
  const got = ns(rx)
  const dropped = (await uplink(gw, 'cloud')).dropped.quota
  assert.equal(got.length + dropped, total, `delivered ${got.length} + dropped ${dropped} = acked ${total}`)
  // The survivors are the newest, in order, without gaps.
  assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => total - got.length + i))
  assert.match(await metrics(gw), new RegExp(`gridgate_dropped_events_total\\{uplink="cloud",reason="quota"\\} ${dropped}`))
})

test('reject-new: MQTT 5 gets 0x97, MQTT 3.1.1 has its ack withheld then loses the connection, and ingest resumes once the uplink drains', async (t) => {
  const rx = await startReceiver(t)
  down(rx)
  const gw = await startInProcess(t, config(t, { cloud: rx.url }, { maxBytes: '512KiB', walMaxBytes: '128KiB', whenFull: 'reject-new', rejectWait: '1500ms' }))
  const port = gw.mqttAddress!.port
  const v5 = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  let acked = 0
  let refusal: number | undefined
  for (let n = 0; n < 5000 && refusal === undefined; n++) {
    try {
      await v5.publishAsync('devices/sensor-1/t', JSON.stringify({ n, pad: PAD }), { qos: 1 })
      acked++
    } catch (err) {
      refusal = (err as { code?: number }).code
    }
  }
  assert.equal(refusal, 0x97, 'MQTT 5 answers quota exceeded')
  assert.equal((await uplink(gw, 'cloud')).dropped.quota, 0, 'reject-new drops nothing')
  assert.match(await metrics(gw), /gridgate_store_full 1/)

  // MQTT 3.1.1 cannot refuse one publish: no PUBACK, and after rejectWait the connection closes.
  const v3 = await connect(t, port, { username: 'sensor-2', password: TOKENS['sensor-2'] })
  let v3acked = false
  const closed = new Promise<void>((resolve) => v3.once('close', () => resolve()))
  // At least as large as the refused MQTT 5 publish: a smaller event could still fit in the last page.
  v3.publish('devices/sensor-2/t', JSON.stringify({ n: -1, pad: PAD + PAD }), { qos: 1 }, (err) => { if (err == null) v3acked = true })
  await sleep(500)
  assert.equal(v3acked, false, 'the ack is withheld while the store is full')
  await closed
  assert.equal(v3acked, false, 'the connection closed without an ack')

  // A 3.1.1 publish made while full is acked once space returns within rejectWait.
  const v3b = await connect(t, port, { username: 'sensor-2', password: TOKENS['sensor-2'] })
  const late = v3b.publishAsync('devices/sensor-2/t', JSON.stringify({ n: -2 }), { qos: 1 })
  await sleep(200)
  up(rx)
  await late
  await waitFor(async () => (await uplink(gw, 'cloud')).backlogEvents === 0, 'drained')
  await v5.publishAsync('devices/sensor-1/t', JSON.stringify({ n: 'after' }), { qos: 1 })
  await waitFor(() => rx.events.some(e => (e.data as { n: unknown }).n === 'after'), 'ingest resumed')
  const got = rx.events.map(e => (e.data as { n: unknown }).n)
  assert.equal(new Set(got).size, got.length, 'no duplicates')
  assert.equal(got.length, acked + 2, 'exactly the acked events were delivered')
  assert.ok(!got.includes(-1), 'the unacknowledged 3.1.1 publish was not stored')
})

test('three uplinks under reject-new: maxLag on the dead one keeps devices acked and the live ones complete', async (t) => {
  const [a, b, dead] = [await startReceiver(t), await startReceiver(t), await startReceiver(t)]
  down(dead)
  const gw = await startInProcess(t, config(t, { a: a.url, b: b.url, dead: dead.url },
    { maxBytes: '512KiB', walMaxBytes: '128KiB', whenFull: 'reject-new' },
    { dead: { maxLag: { bytes: '64KiB' } } }))
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  const total = 1500
  // Far more than the quota holds: without maxLag the dead uplink would pin it all and 0x97 would follow.
  for (let n = 0; n < total; n++) await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n, pad: PAD }), { qos: 1 })
  await waitFor(() => a.events.length === total && b.events.length === total, 'both live uplinks got everything')
  assert.deepEqual(ns(a), Array.from({ length: total }, (_, i) => i))
  assert.deepEqual(ns(b), Array.from({ length: total }, (_, i) => i))
  const lagged = (await uplink(gw, 'dead')).dropped.lag
  assert.ok(lagged > 0, 'the dead uplink skipped its oldest events')
  up(dead)
  await waitFor(async () => (await uplink(gw, 'dead')).backlogEvents === 0 && dead.events.length > 0, 'the returning uplink caught up')
  const got = ns(dead)
  assert.equal(got.length + lagged, total, `what its lag allowed (${got.length}) plus what it skipped (${lagged}) is everything`)
  assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => total - got.length + i), 'in order, the newest')
})

test('two uplinks with different filters receive exactly their events', async (t) => {
  const [temps, s2] = [await startReceiver(t), await startReceiver(t)]
  const gw = await startInProcess(t, config(t, { temps: temps.url, s2: s2.url }, {}, {
    temps: { filter: { subjects: ['devices/+/temp'] } },
    s2: { filter: { subjects: ['devices/sensor-2/#'], types: ['gridgate.*'] } },
  }))
  const c1 = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const c2 = await connect(t, gw.mqttAddress!.port, { username: 'sensor-2', password: TOKENS['sensor-2'] })
  await c1.publishAsync('devices/sensor-1/temp', '{"n":1}', { qos: 1 })
  await c1.publishAsync('devices/sensor-1/hum', '{"n":2}', { qos: 1 })
  await c2.publishAsync('devices/sensor-2/temp', '{"n":3}', { qos: 1 })
  await c2.publishAsync('devices/sensor-2/hum', '{"n":4}', { qos: 1 })
  await waitFor(() => temps.events.length === 2 && s2.events.length === 2, 'both filtered uplinks delivered')
  await sleep(200)
  assert.deepEqual(ns(temps), [1, 3])
  assert.deepEqual(ns(s2), [3, 4])
  // The event nobody routes (n=2) is not kept: nothing waits for it.
  const stats = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/store`)).json() as { events: number }
  await waitFor(async () => ((await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/store`)).json()) as { events: number }).events === 0, 'the store emptied')
  assert.ok(stats.events <= 4)
})

test('a commit that hits a full disk acks nothing, frees the reserve, and service recovers without a restart', async (t) => {
  const rx = await startReceiver(t)
  down(rx)
  const dataDir = path.join(tempDir(t), 'data')
  const c = baseConfig(dataDir, { cloud: rx.url }, { store: { whenFull: 'reject-new', reserveBytes: '256KiB' } })
  const gw = await startInProcess(t, c, { faults: true })
  const reserve = path.join(dataDir, 'gridgate.reserve')
  assert.equal(fs.statSync(reserve).size, 256 * 1024, 'the reserve file exists')
  const mq = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  await mq.publishAsync('devices/sensor-1/t', JSON.stringify({ n: 0 }), { qos: 1 })
  gw.store.fault('diskFull', 1)
  const acked = [0]
  let refused = 0
  for (let n = 1; n < 2000 && refused < 3; n++) {
    try {
      await mq.publishAsync('devices/sensor-1/t', JSON.stringify({ n, pad: PAD }), { qos: 1 })
      acked.push(n)
    } catch (err) {
      assert.equal((err as { code?: number }).code, 0x97, 'a full disk answers quota exceeded')
      refused++
    }
  }
  assert.equal(refused, 3, 'the disk filled')
  assert.equal(fs.existsSync(reserve), false, 'the reserve file was released')
  gw.store.fault('diskFull', 0)
  await waitFor(async () => {
    try { await mq.publishAsync('devices/sensor-1/t', JSON.stringify({ n: 'back' }), { qos: 1 }); return true } catch { return false }
  }, 'ingest recovered once space returned', 10_000, 200)
  await waitFor(() => fs.existsSync(reserve), 'the reserve file re-created')
  up(rx)
  await waitFor(() => rx.events.some(e => (e.data as { n: unknown }).n === 'back'), 'delivered')
  const got = rx.events.map(e => (e.data as { n: unknown }).n)
  assert.deepEqual(got, [...acked, 'back'], 'exactly the acked events, nothing half-stored')
})

test('TTL counts from the stored ingest time and a ten-year clock step expires nothing fresh', async (t) => {
  const rx = await startReceiver(t)
  down(rx)
  let wall = Date.UTC(1970, 0, 2)
  let mono = 0
  const gw = await startInProcess(t, config(t, { cloud: rx.url }, { ttl: '1h' }), {
    gateway: { wallClock: () => wall, monoClock: () => mono, maintainIntervalMs: 50 },
  })
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 5; n++) await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n }), { qos: 1 })
  // NTP arrives: ten years forward in an instant (no time passed on the monotonic clock).
  wall += 10 * 365 * 86_400_000
  await sleep(400)
  let u = await uplink(gw, 'cloud')
  assert.equal(u.dropped.ttl, 0, 'the clock step expired nothing')
  assert.equal(u.backlogEvents, 5)
  assert.match(await metrics(gw), /gridgate_clock_synced 1/)
  // Fresh events after the step, then real time passes: 50 min (nothing due) and 20 more (the old five are).
  for (let n = 5; n < 7; n++) await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n }), { qos: 1 })
  wall += 50 * 60_000; mono += 50 * 60_000
  await sleep(300)
  assert.equal((await uplink(gw, 'cloud')).dropped.ttl, 0, 'nothing is older than the TTL yet')
  wall += 20 * 60_000; mono += 20 * 60_000
  await waitFor(async () => (await uplink(gw, 'cloud')).dropped.ttl === 7, 'all seven expired after 70 minutes', 5000)
  u = await uplink(gw, 'cloud')
  assert.equal(u.backlogEvents, 0)
  up(rx)
  await c.publishAsync('devices/sensor-1/t', JSON.stringify({ n: 'fresh' }), { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'only the fresh event delivered')
  assert.deepEqual(rx.events.map(e => (e.data as { n: unknown }).n), ['fresh'])
})

test('under constant ingest with a slow uplink the WAL stays under walMaxBytes', async (t) => {
  const rx = await startReceiver(t)
  const walMax = 256 * 1024
  // Slow: two events per request, so a backlog builds up and the reader keeps reading while ingest goes on.
  const gw = await startInProcess(t, config(t, { cloud: rx.url }, { maxBytes: '16MiB', walMaxBytes: '256KiB' }, { cloud: { batchMaxEvents: 2 } }))
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  let maxWal = 0
  let samples = 0
  let publishing = true
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}/api/v1/store`
  const sampling = (async () => {
    while (publishing) {
      const s = await (await fetch(admin)).json() as { walBytes: number }
      maxWal = Math.max(maxWal, s.walBytes)
      samples++
      await sleep(20)
    }
  })()
  // 2,000 events of ~1 KiB: the WAL would pass walMaxBytes eight times over without the checkpointer.
  let n = 0
  while (n < 2000) {
    await Promise.all(Array.from({ length: 20 }, () => c.publishAsync('devices/sensor-1/t', JSON.stringify({ n: n++, pad: PAD }), { qos: 1 })))
  }
  publishing = false
  await sampling
  t.diagnostic(`${n} events of ~1 KiB; largest WAL seen ${maxWal} bytes in ${samples} samples (walMaxBytes ${walMax}); backlog at the end ${(await uplink(gw, 'cloud')).backlogEvents}`)
  assert.ok(samples >= 5, 'the WAL was sampled while ingest ran')
  assert.ok(maxWal <= walMax, `the WAL stayed at or under walMaxBytes (max ${maxWal})`)
  assert.match(await metrics(gw), /gridgate_store_wal_bytes \d+/)
})

test('a new uplink with startFrom: oldest gets the stored events its filter wants; one without starts at the newest', async (t) => {
  const [a, b, c] = [await startReceiver(t), await startReceiver(t), await startReceiver(t)]
  down(a)
  const dataDir = path.join(tempDir(t), 'data')
  const first = await startInProcess(t, baseConfig(dataDir, { a: a.url }))
  const mq = await connect(t, first.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await mq.publishAsync('devices/sensor-1/temp', '{"n":1}', { qos: 1 })
  await mq.publishAsync('devices/sensor-1/hum', '{"n":2}', { qos: 1 })
  mq.end(true)
  await first.stop()
  const cfg = baseConfig(dataDir, { a: a.url, b: b.url, c: c.url })
  cfg.uplinks = (cfg.uplinks as Array<Record<string, unknown>>).map(u =>
    u.name === 'b' ? { ...u, startFrom: 'oldest', filter: { subjects: ['devices/+/temp'] } } : u)
  up(a)
  const second = await startInProcess(t, cfg)
  await waitFor(() => a.events.length === 2 && b.events.length === 1, 'a drained its backlog, b got the old temp event')
  const mq2 = await connect(t, second.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await mq2.publishAsync('devices/sensor-1/temp', '{"n":3}', { qos: 1 })
  await waitFor(() => c.events.length === 1 && b.events.length === 2, 'new events reach b and c')
  assert.deepEqual(ns(b), [1, 3])
  assert.deepEqual(ns(c), [3], 'startFrom newest (the default) skips what was stored before')
})
