// WebSocket JSON load generator: N connections to the gateway's events path, one event per text
// frame, a window of frames in flight per connection (the gateway reads at most websocket.maxInflight
// frames of a connection at once, 16 by default). A frame completes with its `{"ack":[…]}` answer.
// Each slot's frame is preallocated; its id (slot + a 10-digit sequence, unique within the dedup
// window) and send stamp are patched in place.
//
//   node dist/scripts/bench/ws-loadgen.js --port 8080 --connections 10 --messages 5000 [--window 16]
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import { Recorder, invokedDirectly, loadResult, ownCpuSeconds, payloadTemplate, wallMicros, writeStamp } from './stats.js'
import type { LoadgenResult } from './loadgen.js'

export interface WsLoadgenOptions {
  host: string
  port: number
  path: string
  connections: number
  messages: number
  window: number
  size: number
  devices: number
  devicePrefix: string
  tokenPrefix: string
}

interface Conn {
  ws: WebSocket
  bufs: Buffer[]
  sentAt: Float64Array
  free: number[]
  remaining: number
  seq: number
  idOffset: number
  stampOffset: number
}

export async function runWsLoadgen (o: WsLoadgenOptions): Promise<LoadgenResult> {
  const total = o.messages * o.connections
  const rec = new Recorder(total + 16)
  const tmpl = payloadTemplate(o.size)
  const errors: string[] = []
  let sent = 0
  let acked = 0
  let nacked = 0
  let finish: (() => void) | null = null
  const done = new Promise<void>((resolve) => { finish = resolve })

  function send (c: Conn): void {
    if (c.remaining === 0) return
    const slot = c.free.pop()
    if (slot === undefined) return
    c.remaining--
    const buf = c.bufs[slot]!
    writeStamp(buf, c.idOffset + 6, c.seq++)
    writeStamp(buf, c.stampOffset, wallMicros())
    c.sentAt[slot] = performance.now()
    sent++
    c.ws.send(buf, { binary: false })
  }

  function complete (c: Conn, slot: number, ok: boolean): void {
    const at = c.sentAt[slot]
    if (at === undefined || Number.isNaN(at)) { errors.push(`unexpected answer for slot ${slot}`); return }
    if (ok) { rec.record(performance.now() - at); acked++ } else nacked++
    c.sentAt[slot] = NaN
    c.free.push(slot)
    send(c)
    if (acked + nacked >= total && finish !== null) { finish(); finish = null }
  }

  const conns: Conn[] = await Promise.all(Array.from({ length: o.connections }, async (_, i) => {
    const device = `${o.devicePrefix}${i % o.devices}`
    const ws = new WebSocket(`ws://${o.host}:${o.port}${o.path}?auth=${encodeURIComponent(`${device}:${o.tokenPrefix}${i % o.devices}`)}`, { perMessageDeflate: false })
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)))
    })
    // The id is "<slot, 5 digits>-<sequence, 16 digits>": the answer names the slot directly.
    const head = `{"id":"`
    const bufs: Buffer[] = []
    let stampOffset = 0
    for (let s = 0; s < o.window; s++) {
      const text = `${head}${String(s).padStart(5, '0')}-${'0'.repeat(16)}","topic":"devices/${device}/telemetry","data":${tmpl.buf.toString('latin1')}}`
      bufs.push(Buffer.from(text, 'latin1'))
      stampOffset = text.length - 1 - tmpl.buf.length + tmpl.tOffset
    }
    const c: Conn = {
      ws, bufs, sentAt: new Float64Array(o.window).fill(NaN),
      free: Array.from({ length: o.window }, (_, s) => o.window - 1 - s),
      remaining: o.messages, seq: 0, idOffset: head.length, stampOffset,
    }
    ws.on('message', (data: Buffer) => {
      const a = JSON.parse(data.toString('utf8')) as { ack?: Array<{ id: string }>, nack?: Array<{ id: string | null, code: string }> }
      for (const x of a.ack ?? []) complete(c, Number(x.id.slice(0, 5)), true)
      for (const x of a.nack ?? []) {
        if (errors.length < 20) errors.push(`nack ${x.code}`)
        if (x.id !== null) complete(c, Number(x.id.slice(0, 5)), false)
      }
    })
    ws.on('close', () => { if (finish !== null) errors.push(`connection ${i} closed`) })
    ws.on('error', (err) => errors.push(err.message))
    return c
  }))

  const cpu0 = ownCpuSeconds()
  const t0 = performance.now()
  rec.startTimeline()
  for (const c of conns) for (let k = 0; k < o.window; k++) send(c)
  if (total === 0) finish!()
  await done
  const seconds = (performance.now() - t0) / 1000
  rec.stop()
  const cpu = ownCpuSeconds() - cpu0
  for (const c of conns) c.ws.terminate()
  return loadResult({ ...o, protocol: 'ws' }, { sent, acked, errors, seconds, cpuSeconds: cpu, rec })
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      path: { type: 'string', default: '/ws' },
      connections: { type: 'string', default: '10' },
      messages: { type: 'string', default: '1000' },
      window: { type: 'string', default: '16' },
      size: { type: 'string', default: '200' },
      devices: { type: 'string', default: '100' },
      'device-prefix': { type: 'string', default: 'bench-' },
      'token-prefix': { type: 'string', default: 'bench-token-' },
    },
  })
  if (values.port === undefined) throw new Error('--port is required')
  const r = await runWsLoadgen({
    host: values.host,
    port: Number(values.port),
    path: values.path,
    connections: Number(values.connections),
    messages: Number(values.messages),
    window: Number(values.window),
    size: Number(values.size),
    devices: Number(values.devices),
    devicePrefix: values['device-prefix'],
    tokenPrefix: values['token-prefix'],
  })
  process.stdout.write(`${JSON.stringify(r)}\n`)
  process.exit(0)
}

if (invokedDirectly(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`ws-loadgen: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
