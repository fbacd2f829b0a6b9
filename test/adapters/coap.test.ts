// The CoAP adapter through the real gateway: libcoap's coap-client-notls (confirmable, NON, blockwise,
// discovery), every error response, Block1 reassembly, and the 2.04 that waits for the commit.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import fs from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { randomBytes } from 'node:crypto'
import { tempDir, waitFor, hasCommand } from '../helpers/util.js'
import { startReceiver, type Receiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { buildRequest, coapClient, option, readUint, uintOption, type CoapClient, type CoapRequest, type CoapResponse } from '../helpers/coap.js'
import { encodeBlock, parseBlock } from '../../adapters/coap/blockwise.js'
import type { Gateway } from '../../gateway/gateway.js'
import { request as coapRequest, type IncomingMessage } from 'coap'

const run = promisify(execFile)
const COAP_CLIENT = 'coap-client-notls'
const noClient = hasCommand(COAP_CLIENT) ? false : `${COAP_CLIENT} (libcoap) is not installed`
const AUTH = `auth=sensor-1:${TOKENS['sensor-1']}`
const CF_JSON = 50
const REQUEST_TAG = 292

async function setup (t: TestContext, extra: Record<string, unknown> = {}, faults = false) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, extra), { faults })
  const port = gw.coapAddress!.port
  const c = await coapClient(port)
  t.after(() => c.close())
  return { rx, gw, port, c }
}

function ok (r: CoapResponse | string): CoapResponse {
  if (typeof r === 'string') assert.fail(`no response: ${r}`)
  return r
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v))

function post (sub: string, payload: Buffer, more: Partial<CoapRequest> = {}): CoapRequest {
  return { path: `devices/sensor-1/${sub}`, query: [AUTH], payload, contentFormat: CF_JSON, ...more }
}

/** Sends a marker and waits until it was forwarded: anything stored before it has arrived too. */
async function dataUpToMarker (c: CoapClient, rx: Receiver, marker: string): Promise<unknown[]> {
  const r = ok(await c.request(post('marker', json({ marker }))))
  assert.equal(r.code, '2.04')
  await waitFor(() => rx.events.some(e => (e.data as { marker?: string } | undefined)?.marker === marker), `marker ${marker} forwarded`)
  return rx.events.map(e => e.data)
}

async function metrics (gw: Gateway): Promise<string> {
  return (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
}

function coapUrl (port: number, p: string, query = AUTH): string {
  return `coap://127.0.0.1:${port}/${p}${query === '' ? '' : `?${query}`}`
}

test('coap-client-notls: a confirmable POST is stored with the URI path as its subject', { skip: noClient }, async (t) => {
  const { rx, port, gw } = await setup(t)
  const { stdout } = await run(COAP_CLIENT, ['-m', 'post', '-t', '50', '-e', '{"temp":21.5}', coapUrl(port, 'devices/sensor-1/temp')], { timeout: 20_000 })
  assert.equal(stdout.trim(), '', 'a 2.04 without a payload prints nothing')
  await waitFor(() => rx.events.length === 1, 'the event forwarded')
  const e = rx.events[0]!
  assert.equal(e.subject, 'devices/sensor-1/temp')
  assert.equal(e.protocol, 'coap')
  assert.equal(e.deviceid, 'sensor-1')
  assert.deepEqual(e.data, { temp: 21.5 })
  assert.match(await metrics(gw), /gridgate_ingress_total\{protocol="coap",outcome="stored"\} 1/)
})

test('coap-client-notls: a NON POST is stored without a reply', { skip: noClient }, async (t) => {
  const { rx, port } = await setup(t)
  // -B 1: the client waits one second for a response that never comes.
  await run(COAP_CLIENT, ['-N', '-B', '1', '-m', 'post', '-t', '0', '-e', 'hello', coapUrl(port, 'devices/sensor-1/note')], { timeout: 20_000 })
  await waitFor(() => rx.events.length === 1, 'the event forwarded')
  assert.equal(rx.events[0]!.subject, 'devices/sensor-1/note')
  assert.equal(rx.events[0]!.data, 'hello')
})

test('coap-client-notls: a blockwise upload of 3 KB in 64-byte blocks becomes one event', { skip: noClient }, async (t) => {
  const { rx, port } = await setup(t)
  const blob = randomBytes(3000)
  const file = path.join(tempDir(t), 'blob.bin')
  fs.writeFileSync(file, blob)
  await run(COAP_CLIENT, ['-m', 'post', '-b', '64', '-t', '42', '-f', file, coapUrl(port, 'devices/sensor-1/blob')], { timeout: 30_000 })
  await waitFor(() => rx.events.length === 1, 'the upload forwarded')
  const e = rx.events[0]!
  assert.equal(e.subject, 'devices/sensor-1/blob')
  assert.equal(e.datacontenttype, 'application/octet-stream')
  assert.ok(Buffer.from(String(e.data_base64), 'base64').equals(blob), 'the receiver got the whole 3 KB in order')
})

test('coap-client-notls: GET /.well-known/core lists the events resource and its Content-Formats', { skip: noClient }, async (t) => {
  const { port } = await setup(t)
  const { stdout } = await run(COAP_CLIENT, ['-m', 'get', coapUrl(port, '.well-known/core', '')], { timeout: 20_000 })
  assert.match(stdout, /^<\/devices>;rt="gridgate\.events";/)
  const ct = /ct="([^"]+)"/.exec(stdout)?.[1]?.split(' ')
  assert.ok(ct?.includes('0') === true && ct.includes('42') && ct.includes('50'), stdout)
})

test('coap-client-notls: a wrong secret is 4.01 and stores nothing', { skip: noClient }, async (t) => {
  const { rx, port, c } = await setup(t)
  const { stdout, stderr } = await run(COAP_CLIENT, ['-m', 'post', '-t', '50', '-e', '{"n":1}', coapUrl(port, 'devices/sensor-1/x', 'auth=sensor-1:wrong-secret')], { timeout: 20_000 })
  // libcoap prints an error response's code and diagnostic payload on stderr.
  assert.match(stdout + stderr, /4\.01 GG_ERR_AUTH_FAILED/)
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'after' }])
})

test('a missing or wrong credential is 4.01 with its GG_ERR code, counted and stores nothing', async (t) => {
  const { rx, c, gw } = await setup(t)
  const missing = ok(await c.request(post('x', json({ n: 1 }), { query: [] })))
  assert.equal(missing.code, '4.01')
  assert.equal(missing.payload.toString(), 'GG_ERR_AUTH_REQUIRED')
  const wrong = ok(await c.request(post('x', json({ n: 2 }), { query: ['auth=sensor-1:not-the-secret'] })))
  assert.equal(wrong.code, '4.01')
  assert.equal(wrong.payload.toString(), 'GG_ERR_AUTH_FAILED')
  const noColon = ok(await c.request(post('x', json({ n: 3 }), { query: ['auth=sensor-1'] })))
  assert.equal(noColon.code, '4.01')
  assert.match(await metrics(gw), /gridgate_auth_failures_total\{protocol="coap"\} 3/)
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'after' }])
})

test('outside the namespace, including its own command topics, is 4.03', async (t) => {
  const { rx, c } = await setup(t)
  const other = ok(await c.request(post('x', json({ n: 1 }), { path: 'devices/sensor-2/x' })))
  assert.equal(other.code, '4.03')
  assert.equal(other.payload.toString(), 'GG_ERR_FORBIDDEN_TOPIC')
  assert.equal(ok(await c.request(post('commands/reboot', json({ n: 2 })))).code, '4.03')
  assert.equal(ok(await c.request(post('+', json({ n: 3 })))).code, '4.03', 'a wildcard is no topic')
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'after' }])
})

test('a payload that does not parse as its Content-Format is 4.00; an unknown Content-Format is 4.15', async (t) => {
  const { rx, c } = await setup(t)
  const bad = ok(await c.request(post('x', Buffer.from('{"unterminated": '))))
  assert.equal(bad.code, '4.00')
  assert.equal(bad.payload.toString(), 'GG_ERR_PAYLOAD_INVALID')
  // 9999 is no registered Content-Format; 41 (application/xml) is one gridgate has no decoder for.
  assert.equal(ok(await c.request(post('x', Buffer.from('x'), { contentFormat: 9999 }))).code, '4.15')
  assert.equal(ok(await c.request(post('x', Buffer.from('<x/>'), { contentFormat: 41 }))).code, '4.15')
  // Without a Content-Format the payload is sniffed and kept.
  assert.equal(ok(await c.request(post('raw', Buffer.from([1, 2, 3]), { contentFormat: undefined }))).code, '2.04')
  const seen = await dataUpToMarker(c, rx, 'after')
  assert.equal(seen.length, 2)
  assert.equal(rx.events[0]!.subject, 'devices/sensor-1/raw')
  assert.equal(rx.events[0]!.data_base64, Buffer.from([1, 2, 3]).toString('base64'))
})

test('a payload over coap.maxPayloadSize is 4.13 with Size1', async (t) => {
  const { rx, c } = await setup(t, { coap: { host: '127.0.0.1', port: 0, maxPayloadSize: '1KiB' } })
  const r = ok(await c.request(post('x', Buffer.alloc(1500, 0x31), { contentFormat: 0 })))
  assert.equal(r.code, '4.13')
  assert.equal(readUint(option(r, 'Size1')), 1024)
  assert.equal(ok(await c.request(post('x', Buffer.alloc(1024, 0x31), { contentFormat: 42 }))).code, '2.04', 'exactly the limit is fine')
  const seen = await dataUpToMarker(c, rx, 'after')
  assert.equal(seen.length, 2)
})

test('other methods on an event path are 4.05; an unknown critical option is 4.02', async (t) => {
  const { c } = await setup(t)
  for (const method of ['GET', 'DELETE'] as const) {
    assert.equal(ok(await c.request(post('x', Buffer.alloc(0), { method }))).code, '4.05', method)
  }
  assert.equal(ok(await c.request(post('x', json({ n: 1 }), { options: [{ name: '65001', value: Buffer.from('x') }] }))).code, '4.02')
  const put = ok(await c.request(post('x', json({ n: 1 }), { method: 'PUT' })))
  assert.equal(put.code, '2.04')
})

test('a quick commit is piggybacked in the ACK', async (t) => {
  const { c } = await setup(t)
  // A commit takes milliseconds; a few tries keep a loaded machine from making this flaky.
  const vias: string[] = []
  for (let i = 0; i < 5 && !vias.includes('piggybacked'); i++) {
    const r = ok(await c.request(post('quick', json({ i }))))
    assert.equal(r.code, '2.04')
    vias.push(r.via)
  }
  assert.ok(vias.includes('piggybacked'), vias.join(','))
})

test('while the commit is held: an empty ACK, no 2.04; a retransmission is stored once; 2.04 only after the commit', async (t) => {
  const { rx, c, gw } = await setup(t, {}, true)
  gw.store.fault('holdBeforeCommit', 1)
  const sent = buildRequest(post('held', json({ n: 'held' }), { messageId: 0x1234 }))
  c.send(sent.buf)
  const emptyAck = await c.next(p => p.ack && p.messageId === 0x1234)
  assert.ok(typeof emptyAck !== 'string', `an empty ACK arrived (${String(emptyAck)})`)
  assert.equal(emptyAck.code, '0.00')
  await waitFor(() => gw.store.faultValue('holding') === 1, 'the writer is holding the commit')
  // The device retransmits the same datagram while the commit is still held.
  c.send(sent.buf)
  const again = await c.next(p => p.ack && p.messageId === 0x1234)
  assert.ok(typeof again !== 'string' && again.code === '0.00', 'the retransmission gets the empty ACK again')
  const early = await c.next(p => p.token.equals(sent.token) && !p.ack, undefined, 300)
  assert.equal(early, 'timeout', 'no response while the commit is held')
  gw.store.fault('holdBeforeCommit', 0)
  const separate = await c.next(p => p.token.equals(sent.token) && !p.ack)
  assert.ok(typeof separate !== 'string', 'the separate response arrived')
  assert.equal(separate.code, '2.04')
  assert.equal(separate.confirmable, true)
  // A retransmission after the outcome gets the outcome, still without a second event.
  c.send(sent.buf)
  const replay = await c.next(p => p.ack && p.messageId === 0x1234)
  assert.ok(typeof replay !== 'string' && replay.code === '2.04')
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ n: 'held' }, { marker: 'after' }])
})

test('when the store refuses the commit: 5.03 with Max-Age, nothing stored; the retry is stored', async (t) => {
  const { rx, c, gw } = await setup(t, {}, true)
  gw.store.fault('failCommits', 1)
  const sent = buildRequest(post('x', json({ n: 'retried' })))
  c.send(sent.buf)
  const r = ok(await c.response(sent, true))
  assert.equal(r.code, '5.03')
  assert.ok((readUint(option(r, 'Max-Age')) ?? 0) > 0, 'Max-Age tells the device when to retry')
  assert.match(r.payload.toString(), /^GG_ERR_STORE_/)
  assert.deepEqual(await dataUpToMarker(c, rx, 'between'), [{ marker: 'between' }], 'nothing stored')
  // The same datagram again (the device never saw the 5.03): processed anew and stored this time.
  c.send(sent.buf)
  assert.equal(ok(await c.response(sent, true)).code, '2.04')
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'between' }, { n: 'retried' }, { marker: 'after' }])
})

/** One Block1 request of an upload, with a fresh token per block as libcoap sends them. */
function block (sub: string, num: number, more: boolean, payload: Buffer, more2: Partial<CoapRequest> = {}): CoapRequest {
  return post(sub, payload, { contentFormat: 42, ...more2, options: [{ name: 'Block1', value: encodeBlock({ num, more, szx: 2 }) }, ...(more2.options ?? [])] })
}

test('Block1: intermediate blocks get 2.31, a retransmitted block is not appended twice, uploads with different Request-Tags stay apart', async (t) => {
  const { rx, c } = await setup(t)
  const a = randomBytes(64 * 3 + 10)
  const b = randomBytes(64 + 1)
  const tag = (v: string) => [{ name: String(REQUEST_TAG), value: Buffer.from(v) }]
  const r0 = ok(await c.request(block('up', 0, true, a.subarray(0, 64), { options: tag('A') })))
  assert.equal(r0.code, '2.31')
  assert.deepEqual(parseBlock(option(r0, 'Block1')!), { num: 0, more: true, szx: 2 })
  // A second upload to the same path interleaves with its own Request-Tag.
  assert.equal(ok(await c.request(block('up', 0, true, b.subarray(0, 64), { options: tag('B') }))).code, '2.31')
  const sent = buildRequest(block('up', 1, true, a.subarray(64, 128), { options: tag('A') }))
  c.send(sent.buf)
  assert.equal(ok(await c.response(sent, true)).code, '2.31')
  c.send(sent.buf) // the same datagram again: answered from the exchange, not appended
  assert.equal(ok(await c.response(sent, true)).code, '2.31')
  assert.equal(ok(await c.request(block('up', 2, true, a.subarray(128, 192), { options: tag('A') }))).code, '2.31')
  assert.equal(ok(await c.request(block('up', 1, false, b.subarray(64), { options: tag('B') }))).code, '2.04')
  const last = ok(await c.request(block('up', 3, false, a.subarray(192), { options: tag('A') })))
  assert.equal(last.code, '2.04')
  assert.deepEqual(parseBlock(option(last, 'Block1')!), { num: 3, more: false, szx: 2 })
  await dataUpToMarker(c, rx, 'after')
  assert.deepEqual(rx.events.map(e => Buffer.from(String(e.data_base64 ?? ''), 'base64').length), [b.length, a.length, 0])
  assert.ok(Buffer.from(String(rx.events[1]!.data_base64), 'base64').equals(a))
  assert.ok(Buffer.from(String(rx.events[0]!.data_base64), 'base64').equals(b))
})

test('Block1: a block out of order is 4.08; an upload over maxPayloadSize is 4.13 with Size1; nothing stored', async (t) => {
  const { rx, c } = await setup(t, { coap: { host: '127.0.0.1', port: 0, maxPayloadSize: '128B' } })
  const p = randomBytes(64)
  assert.equal(ok(await c.request(block('gap', 2, true, p))).code, '4.08', 'no block 0')
  assert.equal(ok(await c.request(block('gap', 0, true, p))).code, '2.31')
  assert.equal(ok(await c.request(block('gap', 2, true, p))).code, '4.08', 'block 1 skipped')
  assert.equal(ok(await c.request(block('gap', 1, false, p))).code, '4.08', 'the upload was dropped')
  assert.equal(ok(await c.request(block('big', 0, true, p))).code, '2.31')
  assert.equal(ok(await c.request(block('big', 1, true, p))).code, '2.31')
  const big = ok(await c.request(block('big', 2, false, p)))
  assert.equal(big.code, '4.13')
  assert.equal(readUint(option(big, 'Size1')), 128)
  const announced = ok(await c.request(block('big', 0, true, p, { options: [{ name: 'Size1', value: uintOption(4096) }] })))
  assert.equal(announced.code, '4.13', 'a Size1 over the limit is refused at the first block')
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'after' }])
})

test('Block1: concurrent uploads per endpoint are capped (5.03) and incomplete uploads expire', async (t) => {
  const { c } = await setup(t, { coap: { host: '127.0.0.1', port: 0, maxBlockwisePerEndpoint: 2, blockwiseTimeout: '300ms' } })
  const p = randomBytes(64)
  assert.equal(ok(await c.request(block('one', 0, true, p))).code, '2.31')
  assert.equal(ok(await c.request(block('two', 0, true, p))).code, '2.31')
  const third = ok(await c.request(block('three', 0, true, p)))
  assert.equal(third.code, '5.03')
  assert.ok(option(third, 'Max-Age') !== undefined)
  // Each upload expires when its blocks stop arriving; then a new one is accepted.
  await waitFor(async () => ok(await c.request(block('three', 0, true, p))).code === '2.31', 'the stale uploads expired', 10_000, 100)
  assert.equal(ok(await c.request(block('one', 1, false, p))).code, '4.08', 'an expired upload does not continue')
})

test('a CoAP ping (empty CON) gets a Reset; a NON with an error gets a NON error response', async (t) => {
  const { c } = await setup(t)
  c.send(Buffer.from([0x40, 0x00, 0x12, 0x34]))
  const rst = await c.next(p => p.reset && p.messageId === 0x1234)
  assert.ok(typeof rst !== 'string', 'a Reset arrived')
  const r = ok(await c.request(post('x', json({ n: 1 }), { confirmable: false, query: [] })))
  assert.equal(r.code, '4.01')
  assert.equal(r.via, 'non')
  // A successful NON gets no reply.
  const sent = buildRequest(post('x', json({ n: 2 }), { confirmable: false }))
  c.send(sent.buf)
  assert.equal(await c.next(p => p.token.equals(sent.token), undefined, 500), 'timeout')
})

test('a stop lets a commit under way finish and sends its 2.04 before the socket closes', async (t) => {
  const { c, gw } = await setup(t, {}, true)
  gw.store.fault('holdBeforeCommit', 1)
  const sent = buildRequest(post('draining', json({ n: 1 })))
  c.send(sent.buf)
  const answer = c.response(sent, true)
  await waitFor(() => gw.store.faultValue('holding') === 1, 'the writer is holding the commit')
  const stopped = gw.stop()
  gw.store.fault('holdBeforeCommit', 0)
  const r = ok(await answer)
  assert.equal(r.code, '2.04')
  await stopped
})

test('anonymous access, when on, publishes as device anonymous; a busy UDP port is GG_ERR_PORT_IN_USE', async (t) => {
  const { rx, c, gw } = await setup(t, { auth: { allowAnonymous: true } })
  assert.equal(ok(await c.request(post('x', json({ n: 1 }), { path: 'devices/anonymous/x', query: [] }))).code, '2.04')
  assert.equal(ok(await c.request(post('x', json({ n: 2 }), { query: [] }))).code, '4.03', 'anonymous stays in its own namespace')
  await waitFor(() => rx.events.length === 1, 'the anonymous event forwarded')
  assert.equal(rx.events[0]!.deviceid, 'anonymous')
  const busy = gw.coapAddress!.port
  await assert.rejects(
    startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, { coap: { host: '127.0.0.1', port: busy } })),
    (err: Error & { code?: string }) => err.code === 'GG_ERR_PORT_IN_USE',
  )
})

/** One request with the node `coap` client; resolves with its response. */
function nodeCoap (port: number, pathname: string, payload: Buffer, block1?: Buffer): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = coapRequest({ host: '127.0.0.1', port, pathname, query: AUTH, method: 'POST', agent: false })
    if (block1 !== undefined) req.setOption('Block1', block1)
    req.on('response', resolve)
    req.on('error', reject)
    req.end(payload)
  })
}

test('node coap client: a POST and a Block1 upload that keeps one token for every block', async (t) => {
  const { rx, port } = await setup(t)
  const small = await nodeCoap(port, '/devices/sensor-1/plain', json({ n: 1 }))
  assert.equal(small.code, '2.04')
  const big = Buffer.alloc(1000, 0x41)
  const blocks = await nodeCoap(port, '/devices/sensor-1/segmented', big, Buffer.of(0x02)) // SZX 2: 64-byte blocks
  assert.equal(blocks.code, '2.04')
  await waitFor(() => rx.events.length === 2, 'both events forwarded')
  assert.deepEqual(rx.events[0]!.data, { n: 1 })
  assert.equal(rx.events[1]!.subject, 'devices/sensor-1/segmented')
  assert.ok(Buffer.from(String(rx.events[1]!.data_base64), 'base64').equals(big))
})

test('/.well-known/core answers GET only', async (t) => {
  const { c } = await setup(t)
  const r = ok(await c.request({ method: 'GET', path: '.well-known/core' }))
  assert.equal(r.code, '2.05')
  assert.equal(readUint(option(r, 'Content-Format')), 40, 'application/link-format')
  assert.match(r.payload.toString(), /<\/devices>;rt="gridgate\.events"/)
  assert.equal(ok(await c.request({ method: 'POST', path: '.well-known/core', payload: Buffer.from('x') })).code, '4.05')
})

test('garbage datagrams never crash the listener; a valid request afterwards is stored', async (t) => {
  const { rx, c } = await setup(t)
  const valid = buildRequest(post('fuzz', json({ n: 1 }))).buf
  for (let i = 0; i < 500; i++) {
    const junk = i % 2 === 0 ? randomBytes(1 + (i % 64)) : Buffer.from(valid.subarray(0, 1 + (i % valid.length)))
    if (i % 4 === 1) junk[0] = 0x40 | (junk[0]! & 0x0f) // version 1, CON: gets a Reset when it does not parse
    c.send(junk)
  }
  assert.deepEqual(await dataUpToMarker(c, rx, 'after'), [{ marker: 'after' }])
})
