// HTTP ingest through the real gateway: routes, topics, Idempotency-Key, and every error status with
// its JSON body `{ code, message }`.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import path from 'node:path'
import { once } from 'node:events'
import { pino } from 'pino'
import { tempDir, waitFor } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, writeConfig, TOKENS } from '../helpers/gateway.js'
import { loadConfig } from '../../config/load.js'
import { Gateway } from '../../gateway/gateway.js'

const AUTH = { authorization: `Bearer sensor-1:${TOKENS['sensor-1']}` }

async function setup (t: TestContext, extra: Record<string, unknown> = {}) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, { http: { maxBodySize: '1KiB' }, ...extra }), { faults: true })
  const base = `http://127.0.0.1:${gw.listeners().websocket!.split(':').pop()}`
  return { rx, gw, base }
}

async function post (url: string, body: string | undefined, headers: Record<string, string> = {}, method = 'POST') {
  const res = await fetch(url, { method, headers, ...(body === undefined ? {} : { body }) })
  const text = await res.text()
  return { status: res.status, headers: res.headers, text, json: text === '' ? undefined : JSON.parse(text) as Record<string, unknown> }
}

test('a POST is answered 202 with the event id after the commit, and the event carries the path topic', async (t) => {
  const { rx, base } = await setup(t)
  const r = await post(`${base}/v1/devices/sensor-1/events/env/temp`, '{"c":21.5}', { ...AUTH, 'content-type': 'application/json', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' })
  assert.equal(r.status, 202)
  const ids = (r.json as { ids: string[] }).ids
  assert.equal(ids.length, 1)
  await waitFor(() => rx.events.length === 1, 'the event forwarded')
  const e = rx.events[0]!
  assert.equal(e.id, ids[0])
  assert.equal(e.subject, 'devices/sensor-1/env/temp')
  assert.equal(e.protocol, 'http')
  assert.equal(e.deviceid, 'sensor-1')
  assert.equal(e.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
  assert.deepEqual(e.data, { c: 21.5 })
})

test('the Dapr-style route publishes under the authenticated device; a JSON array body is one event', async (t) => {
  const { rx, base } = await setup(t)
  const r = await post(`${base}/v1.0/publish/gridgate/orders/new`, '[1,2,3]', { ...AUTH, 'content-type': 'application/json' })
  assert.equal(r.status, 202)
  const text = await post(`${base}/v1.0/publish/gridgate/note`, 'hello', { ...AUTH, 'content-type': 'text/plain' })
  assert.equal(text.status, 202)
  const sniffed = await post(`${base}/v1.0/publish/gridgate/raw`, undefined, AUTH)
  assert.equal(sniffed.status, 202, 'an empty body without a content type is an event too')
  await waitFor(() => rx.events.length === 3, 'three events forwarded')
  assert.deepEqual(rx.events.map(e => [e.subject, e.data]), [
    ['devices/sensor-1/orders/new', [1, 2, 3]],
    ['devices/sensor-1/note', 'hello'],
    ['devices/sensor-1/raw', undefined],
  ])
})

test('the same Idempotency-Key gets the same answer and stores one event, also after a restart', async (t) => {
  const rx = await startReceiver(t)
  const dir = tempDir(t)
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), { cloud: rx.url }))
  const start = async (): Promise<{ gw: Gateway, url: string }> => {
    const gw = new Gateway(loadConfig({ path: file, env: {} }), { log: pino({ level: 'silent' }) })
    await gw.start()
    t.after(() => gw.stop().catch(() => {}))
    return { gw, url: `http://127.0.0.1:${gw.listeners().websocket!.split(':').pop()}/v1/devices/sensor-1/events/once` }
  }
  const headers = { ...AUTH, 'content-type': 'application/json', 'idempotency-key': 'order-42' }
  let { gw, url } = await start()
  const a = await post(url, '{"n":1}', headers)
  const b = await post(url, '{"n":1}', headers)
  assert.equal(a.status, 202)
  assert.equal(b.status, 202)
  assert.deepEqual(b.json, a.json)
  await gw.stop()
  ;({ gw, url } = await start())
  const c = await post(url, '{"n":1}', headers)
  assert.deepEqual(c.json, a.json, 'the key was reloaded with the store')
  const other = await post(url, '{"n":2}', { ...headers, 'idempotency-key': 'order-43' })
  assert.equal(other.status, 202)
  await waitFor(() => rx.events.some(e => (e.data as { n: number }).n === 2), 'the second event forwarded')
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 1 }, { n: 2 }])
})

test('every error is a JSON { code, message } with its status', async (t) => {
  const { rx, gw, base } = await setup(t)
  const ev = `${base}/v1/devices/sensor-1/events/x`
  const json = { 'content-type': 'application/json' }
  const cases: Array<[string, Promise<Awaited<ReturnType<typeof post>>>, number, string]> = [
    ['bad JSON', post(ev, '{"a":', { ...AUTH, ...json }), 400, 'GG_ERR_PAYLOAD_INVALID'],
    ['bad percent-encoding in the path', post(`${base}/v1/devices/sensor-1/events/%E0%A4%A`, '{}', { ...AUTH, ...json }), 400, 'GG_ERR_PAYLOAD_INVALID'],
    ['empty Idempotency-Key', post(ev, '{}', { ...AUTH, ...json, 'idempotency-key': '' }), 400, 'GG_ERR_PAYLOAD_INVALID'],
    ['no credential', post(ev, '{}', json), 401, 'GG_ERR_AUTH_REQUIRED'],
    ['wrong secret', post(ev, '{}', { ...json, authorization: 'Bearer sensor-1:wrong-secret' }), 401, 'GG_ERR_AUTH_FAILED'],
    ['not a Bearer credential', post(ev, '{}', { ...json, authorization: 'Basic c2Vuc29yLTE6eA==' }), 401, 'GG_ERR_AUTH_FAILED'],
    ['path names another device', post(`${base}/v1/devices/sensor-2/events/x`, '{}', { ...AUTH, ...json }), 403, 'GG_ERR_FORBIDDEN_TOPIC'],
    ['own command topic', post(`${base}/v1/devices/sensor-1/events/commands/reboot`, '{}', { ...AUTH, ...json }), 403, 'GG_ERR_FORBIDDEN_TOPIC'],
    ['unknown route', post(`${base}/v2/anything`, '{}', AUTH), 404, 'GG_ERR_NOT_FOUND'],
    ['unknown pub/sub', post(`${base}/v1.0/publish/other/x`, '{}', { ...AUTH, ...json }), 404, 'GG_ERR_NOT_FOUND'],
    ['no topic', post(`${base}/v1/devices/sensor-1/events/`, '{}', { ...AUTH, ...json }), 404, 'GG_ERR_NOT_FOUND'],
    ['GET on an ingest path', post(ev, undefined, AUTH, 'GET'), 405, 'GG_ERR_METHOD_NOT_ALLOWED'],
    ['PUT on the Dapr path', post(`${base}/v1.0/publish/gridgate/x`, '{}', AUTH, 'PUT'), 405, 'GG_ERR_METHOD_NOT_ALLOWED'],
    ['body over http.maxBodySize', post(ev, JSON.stringify({ pad: 'x'.repeat(2048) }), { ...AUTH, ...json }), 413, 'GG_ERR_PAYLOAD_TOO_LARGE'],
    ['content type without a decoder', post(ev, 'x', { ...AUTH, 'content-type': 'image/png' }), 415, 'GG_ERR_CONTENT_TYPE_UNSUPPORTED'],
    ['not a media type', post(ev, 'x', { ...AUTH, 'content-type': 'nonsense' }), 415, 'GG_ERR_CONTENT_TYPE_UNSUPPORTED'],
  ]
  for (const [what, pending, status, code] of cases) {
    const r = await pending
    assert.equal(r.status, status, `${what}: ${r.text}`)
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/, what)
    assert.equal(r.json?.code, code, what)
    assert.equal(typeof r.json?.message, 'string', what)
    if (status === 401) assert.equal(r.headers.get('www-authenticate'), 'Bearer', what)
    if (status === 405) assert.equal(r.headers.get('allow'), 'POST', what)
  }

  gw.store.fault('failCommits', 1)
  const full = await post(ev, '{"n":"full"}', { ...AUTH, ...json })
  assert.equal(full.status, 503)
  assert.equal(full.json?.code, 'GG_ERR_STORE_FULL')
  assert.equal(full.headers.get('retry-after'), '1')

  const ok = await post(ev, '{"n":"ok"}', { ...AUTH, ...json })
  assert.equal(ok.status, 202)
  await waitFor(() => rx.events.length === 1, 'the accepted event forwarded')
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 'ok' }], 'no refused request stored anything')
})

test('a chunked body over http.maxBodySize is refused with 413 before it is all read', async (t) => {
  const { base } = await setup(t)
  const port = Number(base.split(':').pop())
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  let answer = ''
  socket.on('data', (b: Buffer) => { answer += b.toString() })
  socket.on('error', () => {})
  socket.write(`POST /v1/devices/sensor-1/events/x HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`)
  // 64 KiB in 1 KiB chunks, against a 1 KiB limit; the answer comes while the body is still unsent.
  const chunk = `400\r\n${'x'.repeat(1024)}\r\n`
  for (let i = 0; i < 64 && !answer.includes('\r\n\r\n'); i++) {
    if (socket.destroyed) break
    socket.write(chunk)
    await new Promise((resolve) => setImmediate(resolve))
  }
  await waitFor(() => answer.includes('}'), 'an answer')
  socket.destroy()
  assert.match(answer, /^HTTP\/1\.1 413 /)
  assert.match(answer, /"code":"GG_ERR_PAYLOAD_TOO_LARGE"/)
})

test('a malformed HTTP request gets a JSON 400, not a framework page', async (t) => {
  const { base } = await setup(t)
  const socket = net.connect(Number(base.split(':').pop()), '127.0.0.1')
  await once(socket, 'connect')
  let answer = ''
  socket.on('data', (b: Buffer) => { answer += b.toString() })
  socket.write('THIS IS NOT HTTP\r\n\r\n')
  await once(socket, 'close')
  assert.match(answer, /^HTTP\/1\.1 400 /)
  assert.match(answer, /\{"code":"GG_ERR_PAYLOAD_INVALID","message":"[^"]+"\}$/)
})

test('with http.enabled false the listener serves no ingest routes', async (t) => {
  const { base } = await setup(t, { http: { enabled: false } })
  const r = await post(`${base}/v1/devices/sensor-1/events/x`, '{}', { ...AUTH, 'content-type': 'application/json' })
  assert.equal(r.status, 404)
  assert.equal(r.json?.code, 'GG_ERR_NOT_FOUND')
})

test('a request that arrives while the gateway stops gets a JSON 503; the one being committed is answered 202', async (t) => {
  const { rx, gw, base } = await setup(t)
  const socket = net.connect(Number(base.split(':').pop()), '127.0.0.1')
  await once(socket, 'connect')
  let answer = ''
  socket.on('data', (b: Buffer) => { answer += b.toString() })
  socket.on('error', () => {})
  const request = (n: number): string => `POST /v1/devices/sensor-1/events/x HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"n":${n}}`
  gw.store.fault('holdBeforeCommit', 1)
  socket.write(request(1))
  await waitFor(() => gw.store.faultValue('holding') === 1, 'the commit is held')
  const stopped = gw.stop()
  // Pipelined behind the first: it is read only once the first was answered, while stopping.
  socket.write(request(2))
  gw.store.fault('holdBeforeCommit', 0)
  await stopped
  await waitFor(() => (answer.match(/HTTP\/1\.1/g) ?? []).length === 2, 'two answers')
  const [first, second] = answer.split(/(?=HTTP\/1\.1 )/)
  assert.match(first!, /^HTTP\/1\.1 202 /)
  assert.match(second!, /^HTTP\/1\.1 503 /)
  assert.match(second!, /retry-after: 1/i)
  assert.match(second!, /\{"code":"GG_ERR_STORE_UNAVAILABLE","message":"the gateway is stopping"\}$/)
  assert.equal(rx.events.filter(e => (e.data as { n: number }).n === 2).length, 0)
})
