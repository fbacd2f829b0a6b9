// CoAP load generator: confirmable POSTs of JSON events over UDP, N endpoints (one socket each), a
// window of requests in flight per endpoint. A request completes with its 2.04, piggybacked in the ACK
// or (after an empty ACK) sent separately as a CON, which is acknowledged here; an unanswered CON is
// retransmitted like a real device does (RFC 7252 §4.8, counted). Packets come from one
// coap-packet template per slot; only the message ID and the send stamp are patched per request.
//
//   node dist/scripts/bench/coap-loadgen.js --port 5683 --connections 20 --messages 5000 [--window 16]
//
// Message IDs count up per endpoint and must not repeat within the gateway's dedup window (2 min), so
// keep --messages (per endpoint) below 65536.
import dgram from 'node:dgram'
import { parseArgs } from 'node:util'
import { generate, parse } from 'coap-packet'
import { Recorder, invokedDirectly, loadResult, ownCpuSeconds, payloadTemplate, wallMicros, writeStamp } from './stats.js'
import type { LoadgenResult } from './loadgen.js'

export interface CoapLoadgenOptions {
  host: string
  port: number
  connections: number
  messages: number
  window: number
  size: number
  devices: number
  devicePrefix: string
  tokenPrefix: string
  /** A request whose separate response does not come this long after its empty ACK is counted lost. */
  timeoutMs: number
}

interface Endpoint {
  socket: dgram.Socket
  bufs: Buffer[]
  /** First transmission per slot (latency counts from here); NaN = free. */
  sentAt: Float64Array
  /** Last transmission per slot, for the retransmission timer. */
  txAt: Float64Array
  tries: Uint8Array
  /** The empty ACK came: the 2.04 follows separately, no more retransmissions. */
  emptyAcked: Uint8Array
  /** Per slot, bumped per request: the token's last 2 bytes, so a late answer never completes a newer request. */
  gen: Uint16Array
  free: number[]
  remaining: number
  nextMid: number
  stampOffset: number
}

// RFC 7252 §4.8: a CON is retransmitted after ACK_TIMEOUT, doubling, at most MAX_RETRANSMIT times.
const ACK_TIMEOUT_MS = 2000
const MAX_RETRANSMIT = 4
const TOKEN_OFFSET = 4

const JSON_FORMAT = Buffer.from([50])

export async function runCoapLoadgen (o: CoapLoadgenOptions): Promise<LoadgenResult & { retransmissions: number }> {
  if (o.messages > 65_000) throw new Error('--messages: at most 65000 per endpoint (message IDs must not repeat within the dedup window)')
  const total = o.messages * o.connections
  const rec = new Recorder(total + 16)
  const tmpl = payloadTemplate(o.size)
  const errors: string[] = []
  let sent = 0
  let acked = 0
  let lost = 0
  let failed = 0
  let retransmissions = 0
  let finish: (() => void) | null = null
  const done = new Promise<void>((resolve) => { finish = resolve })

  function send (e: Endpoint): void {
    const slot = e.free.pop()
    if (slot === undefined || e.remaining === 0) { if (slot !== undefined) e.free.push(slot); return }
    e.remaining--
    const buf = e.bufs[slot]!
    buf.writeUInt16BE(e.nextMid, 2)
    e.nextMid = (e.nextMid + 1) & 0xffff
    e.gen[slot] = (e.gen[slot]! + 1) & 0xffff
    buf.writeUInt16BE(e.gen[slot]!, TOKEN_OFFSET + 2)
    writeStamp(buf, e.stampOffset, wallMicros())
    e.sentAt[slot] = e.txAt[slot] = performance.now()
    e.tries[slot] = 0
    e.emptyAcked[slot] = 0
    sent++
    e.socket.send(buf, o.port, o.host)
  }

  function complete (e: Endpoint, slot: number, gen: number, ok: boolean): void {
    const at = e.sentAt[slot]
    if (at === undefined || Number.isNaN(at) || e.gen[slot] !== gen) return
    if (ok) { rec.record(performance.now() - at); acked++ } else failed++
    e.sentAt[slot] = NaN
    e.free.push(slot)
    send(e)
    if (acked + failed + lost >= total && finish !== null) { finish(); finish = null }
  }

  const endpoints: Endpoint[] = []
  for (let i = 0; i < o.connections; i++) {
    const device = `${o.devicePrefix}${i % o.devices}`
    const socket = dgram.createSocket('udp4')
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
    const bufs: Buffer[] = []
    let stampOffset = 0
    for (let s = 0; s < o.window; s++) {
      const token = Buffer.alloc(4)
      token.writeUInt16BE(s)
      const buf = generate({
        confirmable: true,
        code: '0.02',
        messageId: 0,
        token,
        options: [
          { name: 'Uri-Path', value: Buffer.from('devices') },
          { name: 'Uri-Path', value: Buffer.from(device) },
          { name: 'Uri-Path', value: Buffer.from('telemetry') },
          { name: 'Content-Format', value: JSON_FORMAT },
          { name: 'Uri-Query', value: Buffer.from(`auth=${device}:${o.tokenPrefix}${i % o.devices}`) },
        ],
        payload: tmpl.buf,
      })
      bufs.push(buf)
      stampOffset = buf.length - tmpl.buf.length + tmpl.tOffset
    }
    const e: Endpoint = {
      socket, bufs, sentAt: new Float64Array(o.window).fill(NaN), txAt: new Float64Array(o.window),
      tries: new Uint8Array(o.window), emptyAcked: new Uint8Array(o.window), gen: new Uint16Array(o.window),
      free: Array.from({ length: o.window }, (_, s) => o.window - 1 - s),
      remaining: o.messages, nextMid: (i * 7919) & 0xffff, stampOffset,
    }
    socket.on('message', (msg) => {
      let p
      try { p = parse(msg) } catch { errors.push('unparseable response'); return }
      if (p.confirmable) {
        // A separate response: acknowledge it, or the gateway retransmits it.
        socket.send(generate({ ack: true, code: '0.00', messageId: p.messageId, token: Buffer.alloc(0) }), o.port, o.host)
      }
      if (p.code === '0.00') {
        // The empty ACK before a separate response: find its request by message ID.
        if (p.ack) {
          for (let s = 0; s < o.window; s++) if (e.bufs[s]!.readUInt16BE(2) === p.messageId && !Number.isNaN(e.sentAt[s]!)) e.emptyAcked[s] = 1
        }
        return
      }
      if (p.token.length !== 4) { errors.push(`response with a ${p.token.length}-byte token`); return }
      const ok = p.code.startsWith('2.')
      if (!ok && errors.length < 20) errors.push(`${p.code} ${p.payload.toString('utf8').slice(0, 80)}`)
      complete(e, p.token.readUInt16BE(0), p.token.readUInt16BE(2), ok)
    })
    socket.on('error', (err) => errors.push(err.message))
    endpoints.push(e)
  }

  const cpu0 = ownCpuSeconds()
  const t0 = performance.now()
  rec.startTimeline()
  // Retransmit unanswered CONs (same message ID: the gateway answers a duplicate with the original
  // outcome); give up after MAX_RETRANSMIT, or timeoutMs after an empty ACK.
  const sweeper = setInterval(() => {
    const now = performance.now()
    for (const e of endpoints) {
      for (let s = 0; s < o.window; s++) {
        const at = e.sentAt[s]!
        if (Number.isNaN(at)) continue
        const giveUp = e.emptyAcked[s] === 1 ? now - at > o.timeoutMs : e.tries[s]! >= MAX_RETRANSMIT && now - e.txAt[s]! > ACK_TIMEOUT_MS * 2 ** e.tries[s]!
        if (giveUp) {
          e.sentAt[s] = NaN
          lost++
          e.free.push(s)
          send(e)
        } else if (e.emptyAcked[s] === 0 && now - e.txAt[s]! > ACK_TIMEOUT_MS * 2 ** e.tries[s]!) {
          e.tries[s]!++
          e.txAt[s] = now
          retransmissions++
          e.socket.send(e.bufs[s]!, o.port, o.host)
        }
      }
    }
    if (acked + failed + lost >= total && finish !== null) { finish(); finish = null }
  }, 100)
  for (const e of endpoints) for (let k = 0; k < o.window; k++) send(e)
  if (total === 0) finish!()
  await done
  clearInterval(sweeper)
  const seconds = (performance.now() - t0) / 1000
  rec.stop()
  const cpu = ownCpuSeconds() - cpu0
  for (const e of endpoints) e.socket.close()
  if (lost > 0) errors.unshift(`${lost} requests got no answer (after ${MAX_RETRANSMIT} retransmissions or ${o.timeoutMs} ms after an empty ACK)`)
  return { ...loadResult({ ...o, protocol: 'coap' }, { sent, acked, errors, seconds, cpuSeconds: cpu, rec }), retransmissions }
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      connections: { type: 'string', default: '20' },
      messages: { type: 'string', default: '1000' },
      window: { type: 'string', default: '16' },
      size: { type: 'string', default: '200' },
      devices: { type: 'string', default: '100' },
      'device-prefix': { type: 'string', default: 'bench-' },
      'token-prefix': { type: 'string', default: 'bench-token-' },
      timeout: { type: 'string', default: '60000' },
    },
  })
  if (values.port === undefined) throw new Error('--port is required')
  const r = await runCoapLoadgen({
    host: values.host,
    port: Number(values.port),
    connections: Number(values.connections),
    messages: Number(values.messages),
    window: Number(values.window),
    size: Number(values.size),
    devices: Number(values.devices),
    devicePrefix: values['device-prefix'],
    tokenPrefix: values['token-prefix'],
    timeoutMs: Number(values.timeout),
  })
  process.stdout.write(`${JSON.stringify(r)}\n`)
  process.exit(0)
}

if (invokedDirectly(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`coap-loadgen: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
