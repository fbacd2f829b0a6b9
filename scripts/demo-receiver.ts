// A tiny "cloud" for gridgate: an HTTP endpoint that receives the gateway's event batches.
//
// gridgate's http uplink POSTs batches of CloudEvents as `application/cloudevents-batch+json` (a
// JSON array of structured CloudEvents) and treats the answer like this:
//   2xx                 delivered: the gateway moves its cursor past the batch
//   408, 429, 5xx       try again later (with backoff; a Retry-After header is honoured)
//   400, 422            some event in the batch is bad: the gateway bisects it and dead-letters it
//   other 4xx           the uplink is misconfigured: events are kept and retried slowly
// Delivery is at-least-once: the same event can arrive twice (after a timeout, a restart...). Every
// event carries a stable `id` to deduplicate by, and a `sequence` (with `storeid`) to order by.
//
// Copy this file to start your own cloud side: replace `handle` with your own processing (write to
// a database, a queue...) and answer 2xx only once the events are safe on your side.
//
// Standalone: node dist/scripts/demo-receiver.js [--port 9000] [--host 127.0.0.1]
// then point an uplink at it: url: "http://127.0.0.1:9000/events"
import http from 'node:http'
import fs from 'node:fs'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

/** The CloudEvents attributes this receiver looks at (gridgate sends a few more). */
export interface CloudEvent {
  specversion: string
  id: string
  source: string
  type: string
  subject?: string
  time?: string
  datacontenttype?: string
  data?: unknown
  data_base64?: string
  // gridgate's extension attributes
  deviceid?: string
  protocol?: string
  gatewayid?: string
  storeid?: string
  sequence?: string
  sourcecontenttype?: string
  [extension: string]: unknown
}

export interface DemoReceiverOptions {
  /** TCP port; 0 picks a free one. */
  port: number
  host?: string
  /** Where the per-event lines go. Default: stdout. */
  print?: (line: string) => void
}

export interface DemoReceiver {
  /** The URL to put in the gateway's uplink config. */
  readonly url: string
  /** Events accepted so far (duplicates not counted). */
  readonly count: number
  /** Requests refused with 503 while `outage` was on. */
  readonly refused: number
  /** While true, every batch is answered 503 (a simulated cloud outage). */
  outage: boolean
  close (): Promise<void>
}

const BATCH_TYPE = 'application/cloudevents-batch+json'
const MAX_BODY = 16 * 1024 * 1024
/** How many recent event ids are remembered to recognise a redelivery. */
const DEDUP_IDS = 100_000

/** One short, aligned line per event. */
export function formatEvent (ev: CloudEvent): string {
  const seq = `#${ev.sequence ?? '?'.padStart(20)}`
  const subject = (ev.subject ?? '').padEnd(25)
  let data = ev.data !== undefined ? JSON.stringify(ev.data) : ev.data_base64 !== undefined ? `base64:${ev.data_base64}` : '-'
  if (data.length > 30) data = `${data.slice(0, 29)}…`
  const id = ev.id.length > 12 ? `${ev.id.slice(0, 8)}…${ev.id.slice(-4)}` : ev.id
  const from = ev.sourcecontenttype === undefined ? '' : `, was ${ev.sourcecontenttype}`
  return `cloud ← ${seq} ${subject} ${data.padEnd(30)} (${ev.deviceid ?? ev.source} via ${ev.protocol ?? '?'}${from}, id ${id})`
}

function isEvent (v: unknown): v is CloudEvent {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false
  const e = v as Record<string, unknown>
  return typeof e.id === 'string' && typeof e.source === 'string' && typeof e.type === 'string' && typeof e.specversion === 'string'
}

export async function startDemoReceiver (opts: DemoReceiverOptions): Promise<DemoReceiver> {
  const print = opts.print ?? ((line: string) => { process.stdout.write(`${line}\n`) })
  const seen = new Set<string>()
  let count = 0
  let refused = 0

  // Your processing goes here. Throwing makes the gateway retry the whole batch later.
  function handle (events: CloudEvent[]): void {
    for (const ev of events) {
      if (seen.has(ev.id)) {
        // At-least-once delivery: a redelivered event has the same id. Skip it.
        print(`${formatEvent(ev)} duplicate, skipped`)
        continue
      }
      seen.add(ev.id)
      if (seen.size > DEDUP_IDS) seen.delete(seen.values().next().value as string)
      count++
      print(formatEvent(ev))
    }
  }

  const reply = (res: http.ServerResponse, status: number, body?: { code: string, message: string }, headers: Record<string, string> = {}): void => {
    if (body === undefined) { res.writeHead(status, headers).end(); return }
    res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body))
  }

  const server = http.createServer((req, res) => {
    if (req.method !== 'POST') return reply(res, 405, { code: 'method_not_allowed', message: 'POST a batch of CloudEvents' }, { allow: 'POST' })
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
    if (type !== BATCH_TYPE && type !== 'application/json') {
      req.resume()
      return reply(res, 415, { code: 'unsupported_media_type', message: `expected ${BATCH_TYPE}, got ${type || 'no content type'}` })
    }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size <= MAX_BODY) chunks.push(c)
    })
    req.on('end', () => {
      if (size > MAX_BODY) return reply(res, 413, { code: 'too_large', message: `a batch may have at most ${MAX_BODY} bytes` })
      if (receiver.outage) {
        // Simulated outage: "try again in a second". The gateway keeps the events meanwhile.
        refused++
        return reply(res, 503, { code: 'unavailable', message: 'simulated cloud outage' }, { 'retry-after': '1' })
      }
      let batch: unknown
      try {
        batch = JSON.parse(Buffer.concat(chunks).toString('utf8'))
      } catch (err) {
        return reply(res, 400, { code: 'bad_json', message: `the body is not JSON: ${(err as Error).message}` })
      }
      if (!Array.isArray(batch)) return reply(res, 400, { code: 'bad_batch', message: 'expected a JSON array of CloudEvents' })
      const bad = batch.findIndex(e => !isEvent(e))
      if (bad !== -1) return reply(res, 400, { code: 'bad_event', message: `event ${bad} lacks specversion, id, source or type` })
      try {
        handle(batch as CloudEvent[])
      } catch (err) {
        return reply(res, 500, { code: 'internal', message: (err as Error).message })
      }
      reply(res, 204) // delivered
    })
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port, opts.host ?? '127.0.0.1', () => { server.off('error', reject); resolve() })
  })
  const { address, port } = server.address() as AddressInfo
  const host = address.includes(':') ? `[${address}]` : address
  const receiver: DemoReceiver = {
    url: `http://${host}:${port}/events`,
    get count () { return count },
    get refused () { return refused },
    outage: false,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    }),
  }
  return receiver
}

// ---- standalone ---------------------------------------------------------------------------------

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', short: 'p', default: '9000' },
      host: { type: 'string', default: '127.0.0.1' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help === true) {
    process.stdout.write('Usage: node dist/scripts/demo-receiver.js [--port 9000] [--host 127.0.0.1]\n')
    return
  }
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`--port: expected 0..65535, got ${values.port}\n`)
    process.exit(2)
  }
  const rx = await startDemoReceiver({ port, host: values.host })
  process.stdout.write(`demo receiver listening: POST CloudEvents batches to ${rx.url}\n`)
  const stop = (): void => { void rx.close().then(() => process.exit(0)) }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}

const invokedAs = process.argv[1] === undefined ? '' : fs.realpathSync(process.argv[1])
if (invokedAs === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).message}\n`)
    process.exit(1)
  })
}
