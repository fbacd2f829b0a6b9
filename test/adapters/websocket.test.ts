// WebSocket JSON events through the real gateway: frames of one event or a batch, acks and nacks,
// auth at the upgrade, frame size, keepalive and a client that does not read its acks.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { once } from 'node:events'
import { WebSocket } from 'ws'
import { tempDir, waitFor } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import type { Gateway } from '../../gateway/gateway.js'

interface Answer { ack?: Array<{ id: string, eventId: string }>, nack?: Array<{ id: string | null, code: string, message: string }> }

async function setup (t: TestContext, websocket: Record<string, unknown> = {}) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, {
    websocket: { host: '127.0.0.1', port: 0, maxFrameSize: '4KiB', maxBatch: 10, ...websocket },
  }), { faults: true })
  const port = Number(gw.listeners().websocket!.split(':').pop())
  return { rx, gw, port }
}

async function open (t: TestContext, url: string, headers: Record<string, string> = { authorization: `Bearer sensor-1:${TOKENS['sensor-1']}` }): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers })
  t.after(() => ws.terminate())
  queueFrames(ws)
  await once(ws, 'open')
  return ws
}

const queues = new WeakMap<WebSocket, { frames: Buffer[], wake: (() => void) | null }>()

/** Frames arrive several per tick: queue them from the start so none is missed between awaits. */
function queueFrames (ws: WebSocket): void {
  const q = { frames: [] as Buffer[], wake: null as (() => void) | null }
  queues.set(ws, q)
  ws.on('message', (data: Buffer) => { q.frames.push(data); q.wake?.() })
}

async function nextFrame (ws: WebSocket): Promise<Buffer> {
  const q = queues.get(ws)!
  while (q.frames.length === 0) await new Promise<void>((resolve) => { q.wake = resolve })
  q.wake = null
  return q.frames.shift()!
}

/** The next `frames` answer frames (`{"ack": […]}` or `{"nack": id, code, message}`), folded into one view. */
async function answer (ws: WebSocket, frames = 1): Promise<Answer> {
  const out: Required<Answer> = { ack: [], nack: [] }
  let sawAck = false
  for (let i = 0; i < frames; i++) {
    const data = await nextFrame(ws)
    const f = JSON.parse(data.toString()) as { ack?: Array<{ id: string, eventId: string }>, nack?: string | null, code?: string, message?: string }
    if (f.ack !== undefined) { sawAck = true; out.ack.push(...f.ack) } else {
      assert.ok('nack' in f && typeof f.code === 'string', `an answer frame is an ack or a nack: ${data.toString()}`)
      out.nack.push({ id: f.nack ?? null, code: f.code, message: f.message ?? '' })
    }
  }
  return { ...(sawAck ? { ack: out.ack } : {}), ...(out.nack.length > 0 ? { nack: out.nack } : {}) }
}

/** What the upgrade was answered with when it was refused. */
function refused (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: Record<string, string>, headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    ws.once('open', () => { ws.terminate(); reject(new Error('the upgrade was accepted')) })
    ws.once('error', () => {})
    ws.once('unexpected-response', (_req, res) => {
      let text = ''
      res.on('data', (c: Buffer) => { text += c.toString() })
      res.on('end', () => { ws.terminate(); resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, string>, headers: res.headers }) })
    })
  })
}

async function wsConnections (gw: Gateway): Promise<number> {
  return (await gw.metrics.connections.get()).values.find(v => v.labels.protocol === 'ws')?.value ?? 0
}

test('a batch with valid and invalid items is answered with one ack frame and a nack per refused item; only the valid ones are stored', async (t) => {
  const { rx, port } = await setup(t)
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  ws.send(JSON.stringify([
    { id: 'a', topic: 'devices/sensor-1/loc', data: { lat: 52.1, lon: 4.3 } },
    { id: 'b', topic: 'devices/sensor-2/loc', data: { spoof: true } },
    { id: 'c', topic: 'devices/sensor-1/note', data: 'hi', contentType: 'text/plain' },
    { id: 'd', topic: 'devices/sensor-1/bad', data_base64: Buffer.from('{"x":').toString('base64'), contentType: 'application/json' },
    { id: 'e', topic: 'devices/sensor-1/raw', data_base64: Buffer.from([1, 2, 3]).toString('base64'), contentType: 'application/octet-stream' },
    { id: 'f', topic: 'devices/sensor-1/commands/reboot', data: {} },
    { id: 'g', topic: 'devices/sensor-1/img', data_base64: 'AAAA', contentType: 'image/png' },
    { topic: 'devices/sensor-1/noid', data: 1 },
    { id: 'h', topic: 'devices/sensor-1/both', data: 1, data_base64: 'AA==' },
    { id: 'a', topic: 'devices/sensor-1/loc', data: { lat: 52.1, lon: 4.3 } },
  ]))
  const a = await answer(ws, 7)
  assert.deepEqual(a.ack?.map(x => x.id), ['a', 'c', 'e', 'a'])
  assert.equal(a.ack?.[0]?.eventId, a.ack?.[3]?.eventId, 'a repeated id gets the original ack')
  assert.deepEqual(a.nack?.map(x => [x.id, x.code]), [
    ['b', 'GG_ERR_FORBIDDEN_TOPIC'],
    ['d', 'GG_ERR_PAYLOAD_INVALID'],
    ['f', 'GG_ERR_FORBIDDEN_TOPIC'],
    ['g', 'GG_ERR_CONTENT_TYPE_UNSUPPORTED'],
    [null, 'GG_ERR_PAYLOAD_INVALID'],
    ['h', 'GG_ERR_PAYLOAD_INVALID'],
  ])
  for (const n of a.nack ?? []) assert.equal(typeof n.message, 'string')
  await waitFor(() => rx.events.length === 3, 'three events forwarded')
  assert.deepEqual(rx.events.map(e => [e.subject, e.protocol, e.data ?? e.data_base64]), [
    ['devices/sensor-1/loc', 'ws', { lat: 52.1, lon: 4.3 }],
    ['devices/sensor-1/note', 'ws', 'hi'],
    ['devices/sensor-1/raw', 'ws', 'AQID'],
  ])
  assert.equal(rx.events[0]!.id, a.ack?.[0]?.eventId)
})

test('a frame that is not JSON or holds too many events is nacked and the connection stays usable', async (t) => {
  const { rx, port } = await setup(t)
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  ws.send('not json {')
  assert.deepEqual((await answer(ws)).nack?.map(n => [n.id, n.code]), [[null, 'GG_ERR_PAYLOAD_INVALID']])
  ws.send(Buffer.from([0xff, 0x00]), { binary: true })
  assert.deepEqual((await answer(ws)).nack?.map(n => n.code), ['GG_ERR_PAYLOAD_INVALID'])
  ws.send(JSON.stringify(Array.from({ length: 11 }, (_, i) => ({ id: `m${i}`, topic: 'devices/sensor-1/x', data: i }))))
  assert.deepEqual((await answer(ws)).nack?.map(n => [n.id, n.code]), [[null, 'GG_ERR_BATCH_TOO_LARGE']])
  ws.send(JSON.stringify({ id: 'ok', topic: 'devices/sensor-1/x', data: 'ok' }))
  assert.deepEqual((await answer(ws)).ack?.map(x => x.id), ['ok'])
  ws.send(Buffer.from(JSON.stringify({ id: 'bin', topic: 'devices/sensor-1/x', data: 'json in a binary frame' })), { binary: true })
  assert.deepEqual((await answer(ws)).ack?.map(x => x.id), ['bin'])
  await waitFor(() => rx.events.length === 2, 'the valid events forwarded')
  assert.deepEqual(rx.events.map(e => e.data), ['ok', 'json in a binary frame'])
})

test('a full store nacks with GG_ERR_STORE_FULL', async (t) => {
  const { gw, port } = await setup(t)
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  gw.store.fault('failCommits', 1)
  ws.send(JSON.stringify({ id: 'full', topic: 'devices/sensor-1/x', data: 1 }))
  assert.deepEqual((await answer(ws)).nack?.map(n => [n.id, n.code]), [['full', 'GG_ERR_STORE_FULL']])
  ws.send(JSON.stringify({ id: 'full', topic: 'devices/sensor-1/x', data: 1 }))
  assert.deepEqual((await answer(ws)).ack?.map(x => x.id), ['full'], 'after a failed commit the resent id is stored')
})

test('a frame over websocket.maxFrameSize closes the connection with 1009', async (t) => {
  const { gw, port } = await setup(t)
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  ws.send(JSON.stringify({ id: 'big', topic: 'devices/sensor-1/x', data: 'x'.repeat(8192) }))
  const [code] = await once(ws, 'close') as [number]
  assert.equal(code, 1009)
  assert.equal((await gw.metrics.websocketCloses.get()).values.find(v => v.labels.reason === 'frame_too_large')?.value, 1)
})

test('the upgrade is refused with 401, 403 or 404 before any frame; ?auth= works for browsers', async (t) => {
  const { port } = await setup(t)
  const base = `ws://127.0.0.1:${port}`
  const none = await refused(`${base}/ws`)
  assert.equal(none.status, 401)
  assert.equal(none.body.code, 'GG_ERR_AUTH_REQUIRED')
  assert.equal(none.headers['www-authenticate'], 'Bearer')
  const wrong = await refused(`${base}/ws`, { authorization: 'Bearer sensor-1:wrong-secret' })
  assert.equal(wrong.status, 401)
  assert.equal(wrong.body.code, 'GG_ERR_AUTH_FAILED')
  const wrongQuery = await refused(`${base}/ws?auth=sensor-1:wrong-secret`)
  assert.equal(wrongQuery.status, 401)
  const other = await refused(`${base}/ws/sensor-2?auth=sensor-1:${TOKENS['sensor-1']}`)
  assert.equal(other.status, 403)
  assert.equal(other.body.code, 'GG_ERR_FORBIDDEN_TOPIC')
  const nowhere = await refused(`${base}/elsewhere?auth=sensor-1:${TOKENS['sensor-1']}`)
  assert.equal(nowhere.status, 404)
  assert.equal(nowhere.body.code, 'GG_ERR_NOT_FOUND')

  const ws = await open(t, `${base}/ws/sensor-1?auth=${encodeURIComponent(`sensor-1:${TOKENS['sensor-1']}`)}`, {})
  ws.send(JSON.stringify({ id: 'q', topic: 'devices/sensor-1/x', data: 1 }))
  assert.deepEqual((await answer(ws)).ack?.map(x => x.id), ['q'])
})

test('a peer that stops answering pings is dropped', async (t) => {
  const { gw, port } = await setup(t, { pingInterval: '100ms' })
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  await waitFor(async () => await wsConnections(gw) === 1, 'the connection counted')
  // A paused client reads nothing, so it never sees a ping and never answers one.
  ws.pause()
  await waitFor(async () => await wsConnections(gw) === 0, 'the server dropped the silent peer')
  ws.resume()
  await once(ws, 'close')
  assert.equal((await gw.metrics.websocketCloses.get()).values.find(v => v.labels.reason === 'keepalive')?.value, 1)
})

test('a client that does not read its acks is closed, not buffered for ever', async (t) => {
  const { gw, port } = await setup(t, { maxBufferedBytes: '16KiB', maxFrameSize: '64KiB', maxBatch: 100 })
  const ws = await open(t, `ws://127.0.0.1:${port}/ws`)
  ws.on('error', () => {})
  let closed = false
  ws.once('close', () => { closed = true })
  await waitFor(async () => await wsConnections(gw) === 1, 'the connection counted')
  ws.pause()
  // The same long id in every item: one stored event, and every answer is about 30 KB of acks.
  const id = 'r'.repeat(250)
  const frame = JSON.stringify(Array.from({ length: 100 }, () => ({ id, topic: 'devices/sensor-1/x', data: 1 })))
  let sent = 0
  while (await wsConnections(gw) === 1) {
    assert.ok(sent < 5000, 'the server kept buffering answers nobody reads')
    if (!closed && ws.bufferedAmount < 1_000_000) { ws.send(frame); sent++ }
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
  ws.resume()
  await waitFor(() => closed, 'the client saw the connection close')
  assert.equal((await gw.metrics.websocketCloses.get()).values.find(v => v.labels.reason === 'slow_consumer')?.value, 1)
})
