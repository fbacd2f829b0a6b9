import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import v8 from 'node:v8'
import vm from 'node:vm'
import { classifyStatus, parseRetryAfter, createHttpSink } from '../../adapters/uplink-http/index.js'
import { backoffDelay } from '../../store-forward/forwarder.js'
import { encodeEvent, renderJsonBatch } from '../../gateway/event.js'
import { reuseBatches, sendRenderingAhead } from '../helpers/sink-batches.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import { tempDir, waitFor } from '../helpers/util.js'

test('HTTP answers map to the outcome classes of the design', () => {
  const table: Array<[number, string]> = [
    [200, 'delivered'], [202, 'delivered'], [204, 'delivered'],
    [408, 'retry'], [429, 'retry'], [500, 'retry'], [502, 'retry'], [503, 'retry'],
    [400, 'poison'], [422, 'poison'], [413, 'too_large'],
    [401, 'rejected'], [403, 'rejected'], [404, 'rejected'], [405, 'rejected'], [301, 'rejected'],
  ]
  for (const [status, kind] of table) assert.equal(classifyStatus(status, '', undefined).kind, kind, `HTTP ${status}`)
  assert.deepEqual(classifyStatus(429, 'slow down', 1500), { kind: 'retry', reason: 'slow down', status: 429, retryAfterMs: 1500 })
})

test('Retry-After is read as seconds or as an HTTP date, clamped to an hour', () => {
  const now = Date.parse('2026-11-22T00:00:00Z')
  assert.equal(parseRetryAfter('3', now), 3000)
  assert.equal(parseRetryAfter('Sun, 22 Nov 2026 00:00:10 GMT', now), 10_000)
  assert.equal(parseRetryAfter('Sat, 21 Nov 2026 00:00:10 GMT', now), 0)
  assert.equal(parseRetryAfter('999999', now), 3_600_000)
  assert.equal(parseRetryAfter('soon', now), undefined)
  assert.equal(parseRetryAfter(null, now), undefined)
})

test('backoff is full jitter under a capped exponential ceiling', () => {
  assert.equal(backoffDelay(0, 100, 30_000, () => 0.999), 99)
  assert.equal(backoffDelay(3, 100, 30_000, () => 0.5), 400)
  assert.equal(backoffDelay(20, 100, 30_000, () => 0.999), 29_970)
  assert.equal(backoffDelay(100, 100, 30_000, () => 0), 0)
})

test('a request that hangs past the timeout is a retry, not a delivery', async (t) => {
  const rx = await startReceiver(t)
  rx.respond = () => 'hang'
  const sink = createHttpSink({ url: rx.url, timeoutMs: 200 })
  const body = encodeEvent({ id: 'a', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const outcome = await sink.send({ storeId: 'store', events: [{ seq: 1, ingestMs: Date.now(), body }] }, new AbortController().signal)
  assert.equal(outcome.kind, 'retry')
  assert.match((outcome as { reason: string }).reason, /timeout/)
})

test('the timeout fires even when garbage collection runs while the request hangs (nodejs/node#57736)', async (t) => {
  // AbortSignal.any([signal, AbortSignal.timeout(ms)]) never fired here once a GC ran in between,
  // which left an uplink "sending" for good under load.
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  const rx = await startReceiver(t)
  rx.respond = () => 'hang'
  const sink = createHttpSink({ url: rx.url, timeoutMs: 300 })
  t.after(() => sink.close())
  const body = encodeEvent({ id: 'a', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const collect = setInterval(gc, 20)
  t.after(() => clearInterval(collect))
  const outcome = await Promise.race([
    sink.send({ storeId: 'store', events: [{ seq: 1, ingestMs: Date.now(), body }] }, new AbortController().signal),
    new Promise<null>(resolve => setTimeout(() => resolve(null), 5000)),
  ])
  assert.notEqual(outcome, null, 'the send was still hanging 5 s after its 300 ms timeout')
  assert.equal(outcome!.kind, 'retry')
  assert.match((outcome as { reason: string }).reason, /timeout after 300 ms/)
})

test('a 429 with Retry-After is waited out before the batch is sent again', async (t) => {
  const rx = await startReceiver(t)
  const answered: number[] = []
  rx.respond = () => {
    answered.push(Date.now())
    return answered.length === 1 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 }
  }
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'delivered after the 429')
  // The configured retry.maxDelay is 200 ms; only Retry-After explains a wait of about a second.
  assert.ok(answered[1]! - answered[0]! >= 900, `waited ${answered[1]! - answered[0]!} ms`)
})

test('consecutive batches share one keep-alive connection; an error answer gives its status and the start of its body', async (t) => {
  const ports: number[] = []
  const answers = [200, 204, 503, 200]
  const server = http.createServer((req, res) => {
    ports.push(req.socket.remotePort!)
    req.resume()
    req.on('end', () => {
      const status = answers[ports.length - 1] ?? 200
      res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 503 ? `overloaded ${'x'.repeat(300)}` : 'ok')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const sink = createHttpSink({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`, timeoutMs: 2000 })
  t.after(() => sink.close())
  const body = encodeEvent({ id: 'a', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const outcomes = []
  for (let seq = 1; seq <= 4; seq++) outcomes.push(await sink.send({ storeId: 'store', events: [{ seq, ingestMs: Date.now(), body }] }, new AbortController().signal))
  assert.deepEqual(outcomes.map(o => o.kind), ['delivered', 'delivered', 'retry', 'delivered'])
  const failed = outcomes[2] as { reason: string, status: number }
  assert.equal(failed.status, 503)
  assert.match(failed.reason, /^HTTP 503 overloaded x+…$/)
  assert.equal(failed.reason.length, 'HTTP 503 '.length + 201)
  assert.equal(new Set(ports).size, 1, `requests came over ${new Set(ports).size} connections`)
})

test('bodies written into the buffer of a delivered one go out whole, larger or smaller than it; a retried one is sent as it was', async (t) => {
  const bodies: string[] = []
  const answers = [200, 200, 503, 200, 200]
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      bodies.push(Buffer.concat(chunks).toString('utf8'))
      res.writeHead(answers[bodies.length - 1] ?? 200).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const sink = createHttpSink({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`, timeoutMs: 2000 })
  t.after(() => sink.close())
  const batches = reuseBatches()
  const outcomes = await sendRenderingAhead(sink, batches)
  assert.deepEqual(outcomes, ['delivered', 'delivered', 'retry', 'delivered'])
  const expected = batches.map(b => renderJsonBatch(b.events, 'store'))
  assert.deepEqual(bodies, [expected[0], expected[1], expected[2], expected[2], expected[3]])
})

test('a connection the receiver drops is a retry, and the next batch opens a new one', async (t) => {
  const rx = await startReceiver(t)
  let n = 0
  rx.respond = () => (++n === 1 ? 'drop' : { status: 200 })
  const sink = createHttpSink({ url: rx.url, timeoutMs: 2000 })
  t.after(() => sink.close())
  const body = encodeEvent({ id: 'a', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const first = await sink.send({ storeId: 'store', events: [{ seq: 1, ingestMs: Date.now(), body }] }, new AbortController().signal)
  assert.equal(first.kind, 'retry')
  assert.match((first as { reason: string }).reason, /ECONNRESET|socket hang up/)
  const second = await sink.send({ storeId: 'store', events: [{ seq: 1, ingestMs: Date.now(), body }] }, new AbortController().signal)
  assert.equal(second.kind, 'delivered')
  assert.equal(rx.events.length, 1)
})

test('a send stopped by its caller gives up at once, without waiting for the timeout', async (t) => {
  const rx = await startReceiver(t)
  rx.respond = () => 'hang'
  const sink = createHttpSink({ url: rx.url, timeoutMs: 10_000 })
  t.after(() => sink.close())
  const body = encodeEvent({ id: 'a', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const stop = new AbortController()
  setTimeout(() => stop.abort(), 100)
  const started = Date.now()
  const outcome = await sink.send({ storeId: 'store', events: [{ seq: 1, ingestMs: Date.now(), body }] }, stop.signal)
  assert.equal(outcome.kind, 'retry')
  assert.equal((outcome as { reason: string }).reason, 'ABORT_ERR')
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`)
})
