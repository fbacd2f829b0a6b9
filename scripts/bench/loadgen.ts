// A lean MQTT 3.1.1 load generator: hand-encoded CONNECT/SUBSCRIBE/PUBLISH over raw `net` sockets
// (MQTT.js spends more CPU per message than the broker under test), N connections, a bounded window
// of QoS 1 publishes in flight on each, optionally a fixed total rate. Every PUBLISH's payload carries
// its send time (see stats.ts payloadTemplate) so a receiver behind the gateway can measure
// device→cloud latency; PUBACK latency is measured here. Prints one JSON object on stdout.
//
//   node dist/scripts/bench/loadgen.js --port 1883 --connections 10 --messages 50000 [--window 64]
//     [--rate 0] [--duration 0] [--size 200] [--devices 100] [--token-prefix bench-token-]
//     [--client-prefix lg] [--subscribe] [--hold 0]
//
// --messages is per connection (saturation); with --rate (total msgs/s) and --duration (s) the run
// is paced instead. --hold keeps the connections open (idle) for that many seconds, or until SIGTERM
// when negative, after CONNECT (and SUBSCRIBE with --subscribe) and prints {"event":"connected"} first.
//
// Per connection, slot s of the window owns packet id s+1 and its own preallocated PUBLISH buffer:
// a slot is reused only after its PUBACK, so a buffer is never rewritten while the socket still holds it.
import net from 'node:net'
import { parseArgs } from 'node:util'
import { Recorder, invokedDirectly, loadResult, ownCpuSeconds, payloadTemplate, wallMicros, writeStamp, type Percentiles, type TimelinePoint } from './stats.js'

export interface LoadgenOptions {
  host: string
  port: number
  connections: number
  /** Per connection; ignored when rate > 0. */
  messages: number
  window: number
  /** Total msgs/s over all connections; 0 = as fast as acks allow. */
  rate: number
  /** Seconds, with rate. */
  duration: number
  size: number
  devices: number
  tokenPrefix: string
  devicePrefix: string
  clientPrefix: string
  subscribe: boolean
  /** Seconds to keep idle connections open; < 0 = until SIGTERM; 0 = publish instead. */
  hold: number
  /** Simultaneous CONNECTs in progress (a SYN flood overflows the listen backlog). */
  connectConcurrency: number
}

export interface LoadgenResult {
  protocol: 'mqtt' | 'coap' | 'ws'
  connections: number
  window: number
  size: number
  rate: number
  sent: number
  acked: number
  /** Publishes that could not go out on time because their connection's window was full (paced mode). */
  late: number
  errors: string[]
  connectSeconds: number
  seconds: number
  msgsPerSec: number
  /** PUBLISH written → its PUBACK read. */
  ackMs: Percentiles
  /** Without the first WARMUP_SECONDS (stats.ts); null for shorter runs. */
  ackMsAfterWarmup: Percentiles | null
  timeline: TimelinePoint[]
  cpuSeconds: number
  /** CPU seconds per wall second while publishing: near 1 means this process saturated a core. */
  cpuUtilisation: number
}

const CONNACK = 2
const PUBLISH = 3
const PUBACK = 4
const SUBACK = 9
const PINGRESP = 13

function varint (n: number): number[] {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return out
}

function str (s: string): Buffer {
  const b = Buffer.from(s, 'utf8')
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

export function encodeConnect (clientId: string, username: string | null, password: string | null, keepalive = 0): Buffer {
  let flags = 0x02 // clean session
  if (username !== null) flags |= 0x80
  if (password !== null) flags |= 0x40
  const ka = Buffer.alloc(2)
  ka.writeUInt16BE(keepalive)
  const body = Buffer.concat([
    str('MQTT'), Buffer.from([4, flags]), ka, str(clientId),
    ...(username === null ? [] : [str(username)]),
    ...(password === null ? [] : [str(password)]),
  ])
  return Buffer.concat([Buffer.from([0x10, ...varint(body.length)]), body])
}

export function encodeSubscribe (packetId: number, filter: string, qos: 0 | 1): Buffer {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(packetId)
  const body = Buffer.concat([id, str(filter), Buffer.from([qos])])
  return Buffer.concat([Buffer.from([0x82, ...varint(body.length)]), body])
}

/** A QoS 1 PUBLISH with its packet id and payload offsets, to patch in place. */
export function encodePublish (topic: string, packetId: number, payload: Buffer): { buf: Buffer, idOffset: number, payloadOffset: number } {
  const t = str(topic)
  const remaining = t.length + 2 + payload.length
  const head = Buffer.from([0x32, ...varint(remaining)])
  const buf = Buffer.alloc(head.length + remaining)
  head.copy(buf, 0)
  t.copy(buf, head.length)
  const idOffset = head.length + t.length
  buf.writeUInt16BE(packetId, idOffset)
  payload.copy(buf, idOffset + 2)
  return { buf, idOffset, payloadOffset: idOffset + 2 }
}

interface Conn {
  index: number
  socket: net.Socket
  bufs: Buffer[]
  /** performance.now() at send per slot; NaN = free. */
  sentAt: Float64Array
  free: number[]
  /** Messages still to send on this connection (saturation mode). */
  remaining: number
  pending: Buffer | null
  stampOffset: number
}

export async function runLoadgen (o: LoadgenOptions, onConnected?: () => void): Promise<LoadgenResult> {
  const errors: string[] = []
  const paced = o.rate > 0
  const total = paced ? Math.ceil(o.rate * o.duration) : o.messages * o.connections
  const rec = new Recorder(o.hold !== 0 ? 1024 : total + 16)
  const tmpl = payloadTemplate(o.size)
  let sent = 0
  let acked = 0
  let late = 0
  let finish: (() => void) | null = null
  const allDone = new Promise<void>((resolve) => { finish = resolve })
  const checkDone = (): void => {
    if (finish === null) return
    if (paced ? (sent + late >= total && acked >= sent) : acked >= total) { finish(); finish = null }
  }

  const conns: Conn[] = []
  const deviceOf = (i: number): string => `${o.devicePrefix}${i % o.devices}`

  function send (c: Conn): boolean {
    const slot = c.free.pop()
    if (slot === undefined) return false
    const buf = c.bufs[slot]!
    writeStamp(buf, c.stampOffset, wallMicros())
    c.sentAt[slot] = performance.now()
    sent++
    c.socket.write(buf)
    return true
  }

  function onPacket (c: Conn, type: number, data: Buffer, start: number, len: number): void {
    if (type === PUBACK) {
      const slot = data.readUInt16BE(start) - 1
      const at = c.sentAt[slot]
      if (at === undefined || Number.isNaN(at)) { errors.push(`unexpected PUBACK ${slot + 1} on connection ${c.index}`); return }
      rec.record(performance.now() - at)
      c.sentAt[slot] = NaN
      c.free.push(slot)
      acked++
      if (!paced && c.remaining > 0) {
        c.remaining--
        send(c)
      }
      checkDone()
    } else if (type === CONNACK) {
      const rc = data[start + 1]
      if (rc !== 0) errors.push(`CONNACK return code ${rc} on connection ${c.index}`)
    } else if (type === SUBACK) {
      if (data[start + 2] === 0x80) errors.push(`SUBACK refused on connection ${c.index}`)
    } else if (type !== PUBLISH && type !== PINGRESP) {
      errors.push(`unexpected packet type ${type} on connection ${c.index}`)
    }
    void len
  }

  /** Splits a chunk into packets; only a packet cut by the chunk boundary is copied. */
  function onData (c: Conn, chunk: Buffer, waiters: Map<number, () => void>): void {
    let data = chunk
    if (c.pending !== null) { data = Buffer.concat([c.pending, chunk]); c.pending = null }
    let i = 0
    c.socket.cork()
    while (i < data.length) {
      if (i + 2 > data.length) break
      const type = data[i]! >> 4
      let len = 0
      let mul = 1
      let j = i + 1
      let complete = false
      for (; j < data.length && j < i + 5; j++) {
        const b = data[j]!
        len += (b & 0x7f) * mul
        mul *= 128
        if ((b & 0x80) === 0) { complete = true; j++; break }
      }
      if (!complete || j + len > data.length) break
      onPacket(c, type, data, j, len)
      const w = waiters.get(type)
      if (w !== undefined) { waiters.delete(type); w() }
      i = j + len
    }
    process.nextTick(() => c.socket.uncork())
    if (i < data.length) c.pending = Buffer.from(data.subarray(i))
  }

  const connectStarted = performance.now()
  async function open (index: number): Promise<Conn> {
    const device = deviceOf(index)
    const socket = net.connect({ host: o.host, port: o.port, noDelay: true })
    const topic = `devices/${device}/telemetry`
    const bufs: Buffer[] = []
    let stampOffset = 0
    for (let s = 0; s < o.window; s++) {
      const p = encodePublish(topic, s + 1, tmpl.buf)
      bufs.push(p.buf)
      stampOffset = p.payloadOffset + tmpl.tOffset
    }
    const c: Conn = {
      index, socket, bufs, sentAt: new Float64Array(o.window).fill(NaN),
      free: Array.from({ length: o.window }, (_, s) => o.window - 1 - s),
      remaining: o.messages, pending: null, stampOffset,
    }
    const waiters = new Map<number, () => void>()
    const expect = (type: number): Promise<void> => new Promise((resolve) => waiters.set(type, resolve))
    socket.on('data', (chunk: Buffer) => onData(c, chunk, waiters))
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    socket.on('error', (err) => errors.push(`connection ${index}: ${err.message}`))
    socket.on('close', () => { if (finish !== null && o.hold === 0) errors.push(`connection ${index} closed by the broker`) })
    const connack = expect(CONNACK)
    socket.write(encodeConnect(`${o.clientPrefix}${index}`, device, `${o.tokenPrefix}${index % o.devices}`))
    await connack
    if (o.subscribe) {
      const suback = expect(SUBACK)
      socket.write(encodeSubscribe(1, `devices/${device}/commands/#`, 1))
      await suback
    }
    return c
  }

  let next = 0
  await Promise.all(Array.from({ length: Math.min(o.connectConcurrency, o.connections) }, async () => {
    while (next < o.connections) {
      const i = next++
      conns[i] = await open(i)
    }
  }))
  const connectSeconds = (performance.now() - connectStarted) / 1000

  if (o.hold !== 0) {
    onConnected?.()
    await new Promise<void>((resolve) => {
      if (o.hold > 0) setTimeout(resolve, o.hold * 1000)
      process.once('SIGTERM', resolve)
    })
    for (const c of conns) c.socket.destroy()
    return loadResult({ ...o, protocol: 'mqtt' }, { sent, acked, late, errors, seconds: 0, cpuSeconds: 0, rec })
  }

  const cpu0 = ownCpuSeconds()
  const t0 = performance.now()
  rec.startTimeline()
  let ticker: NodeJS.Timeout | null = null
  if (!paced) {
    for (const c of conns) {
      c.socket.cork()
      const first = Math.min(o.window, c.remaining)
      for (let k = 0; k < first; k++) { c.remaining--; send(c) }
      c.socket.uncork()
    }
  } else {
    // Paced: every millisecond, send what is due, round-robin over the connections.
    let rr = 0
    ticker = setInterval(() => {
      const due = Math.min(total, Math.floor((performance.now() - t0) / 1000 * o.rate)) - sent - late
      for (let k = 0; k < due; k++) {
        let ok = false
        for (let tries = 0; tries < conns.length && !ok; tries++) {
          const c = conns[rr]!
          rr = (rr + 1) % conns.length
          ok = send(c)
        }
        if (!ok) late++
      }
      if (sent + late >= total) { clearInterval(ticker!); ticker = null; checkDone() }
    }, 1)
  }
  if (total === 0) finish!()
  await allDone
  if (ticker !== null) clearInterval(ticker)
  const seconds = (performance.now() - t0) / 1000
  rec.stop()
  const cpu = ownCpuSeconds() - cpu0
  for (const c of conns) c.socket.end()
  return loadResult({ ...o, protocol: 'mqtt' }, { sent, acked, late, errors, connectSeconds, seconds, cpuSeconds: cpu, rec })
}

export function parseLoadgenArgs (argv: string[]): LoadgenOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      connections: { type: 'string', default: '10' },
      messages: { type: 'string', default: '1000' },
      window: { type: 'string', default: '64' },
      rate: { type: 'string', default: '0' },
      duration: { type: 'string', default: '0' },
      size: { type: 'string', default: '200' },
      devices: { type: 'string', default: '100' },
      'device-prefix': { type: 'string', default: 'bench-' },
      'token-prefix': { type: 'string', default: 'bench-token-' },
      'client-prefix': { type: 'string', default: 'lg' },
      subscribe: { type: 'boolean', default: false },
      hold: { type: 'string', default: '0' },
      'connect-concurrency': { type: 'string', default: '200' },
    },
  })
  const int = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name}: expected an integer ≥ ${min}, got ${v}`)
    return n
  }
  if (values.port === undefined) throw new Error('--port is required')
  const window = int('window', values.window, 1)
  if (window > 65535) throw new Error('--window: at most 65535 (packet ids)')
  return {
    host: values.host,
    port: int('port', values.port, 1),
    connections: int('connections', values.connections, 1),
    messages: int('messages', values.messages, 0),
    window,
    rate: Number(values.rate),
    duration: Number(values.duration),
    size: int('size', values.size, 32),
    devices: int('devices', values.devices, 1),
    devicePrefix: values['device-prefix'],
    tokenPrefix: values['token-prefix'],
    clientPrefix: values['client-prefix'],
    subscribe: values.subscribe,
    hold: Number(values.hold),
    connectConcurrency: int('connect-concurrency', values['connect-concurrency'], 1),
  }
}

async function main (): Promise<void> {
  const o = parseLoadgenArgs(process.argv.slice(2))
  const r = await runLoadgen(o, () => process.stdout.write(`${JSON.stringify({ event: 'connected', connections: o.connections })}\n`))
  process.stdout.write(`${JSON.stringify(r)}\n`)
  process.exit(0)
}

if (invokedDirectly(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`loadgen: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
