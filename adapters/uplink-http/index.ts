// HTTP uplink: POSTs a batch as application/cloudevents-batch+json (structured events) and maps the
// response to an outcome class. Retrying, bisecting and cursor moves belong to the forwarder.
// Requests go through node:http/node:https with a keep-alive Agent per endpoint (not the global
// fetch), so that a custom CA and a client certificate (mTLS) can be given per uplink. Node's own
// client keeps an idle gateway small: undici, its fetch and its WebAssembly parser are not loaded.
import http from 'node:http'
import https from 'node:https'
import { finished } from 'node:stream/promises'
import { gzip as gzipCallback } from 'node:zlib'
import { promisify } from 'node:util'
import { decodeEvent, jsonStoreId, JsonOut, JSON_BYTES_PER_EVENT, writeStoredJson } from '../../gateway/event.js'
import { inSlices, prepared, type Sink, type SinkBatch, type SendOutcome } from '../../store-forward/sink.js'
import { sinkBodyPool } from '../../store-forward/buffer-pool.js'

const gzip = promisify(gzipCallback)

export interface HttpTls {
  /** PEM text of the CA(s) that sign the server's certificate (replaces the system CAs). */
  ca?: string | Buffer
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string | Buffer
  key?: string | Buffer
}

export interface HttpSinkOptions {
  url: string
  /** Per-request deadline (ms). */
  timeoutMs: number
  headers?: Readonly<Record<string, string>>
  /** Sent as `Authorization: Bearer <token>`. */
  bearerToken?: string
  /** Compress request bodies (`Content-Encoding: gzip`). */
  gzip?: boolean
  tls?: HttpTls
}

export const BATCH_CONTENT_TYPE = 'application/cloudevents-batch+json'
/** The longest Retry-After honoured (ms); a larger value is clamped, not ignored. */
const MAX_RETRY_AFTER = 3_600_000
/** Bodies smaller than this are sent uncompressed even with gzip on: the header costs more. */
const GZIP_MIN_BYTES = 256
/** An idle keep-alive connection is closed after this long (or sooner when the server's Keep-Alive header says so). */
const KEEP_ALIVE_IDLE_MS = 30_000
/** How much of an error response's body is kept for the outcome's reason (which shows 200 characters). */
const ERROR_BODY_BYTES = 4096

/** Parses Retry-After: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). */
export function parseRetryAfter (value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined
  const trimmed = value.trim()
  let ms: number
  if (/^\d+$/.test(trimmed)) {
    ms = Number(trimmed) * 1000
  } else {
    const at = Date.parse(trimmed)
    if (Number.isNaN(at)) return undefined
    ms = at - now
  }
  return Math.min(Math.max(ms, 0), MAX_RETRY_AFTER)
}

export function classifyStatus (status: number, reason: string, retryAfterMs: number | undefined): SendOutcome {
  if (status >= 200 && status < 300) return { kind: 'delivered' }
  if (status === 408 || status === 429 || status >= 500) {
    return retryAfterMs === undefined ? { kind: 'retry', reason, status } : { kind: 'retry', reason, status, retryAfterMs }
  }
  if (status === 400 || status === 422) return { kind: 'poison', reason, status }
  if (status === 413) return { kind: 'too_large', reason, status }
  return { kind: 'rejected', reason, status }
}

/** The start of an error response's body, read to its end so that the connection can be reused. */
async function shortBody (res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  let kept = 0
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      if (kept >= ERROR_BODY_BYTES) continue
      chunks.push(chunk)
      kept += chunk.byteLength
    }
  } catch {
    // The body broke off or outlasted the deadline: the status already decided.
  }
  const text = Buffer.concat(chunks).toString('utf8')
  return text.length > 200 ? `${text.slice(0, 200)}…` : text
}

function header (headers: http.IncomingHttpHeaders, name: string): string | null {
  const v = headers[name]
  return v === undefined ? null : Array.isArray(v) ? (v[0] ?? null) : v
}

/** Sends one request; resolves with it and its response once the response's headers arrived. */
function post (target: URL, agent: http.Agent, headers: Record<string, string | number>, body: Buffer, signal: AbortSignal): Promise<{ req: http.ClientRequest, res: http.IncomingMessage }> {
  return new Promise((resolve, reject) => {
    const req = (target.protocol === 'https:' ? https : http).request(target, { method: 'POST', headers, agent, signal }, (res) => resolve({ req, res }))
    req.on('error', reject)
    req.end(body)
  })
}

/** A request body; `pooled`: written by this sink into a buffer of its pool, which takes it back once delivered. */
interface Body { bytes: Buffer, gzipped: boolean, pooled: boolean }

export function createHttpSink (opts: HttpSinkOptions): Sink {
  const target = new URL(opts.url)
  const baseHeaders: Record<string, string> = { 'content-type': BATCH_CONTENT_TYPE }
  for (const [k, v] of Object.entries(opts.headers ?? {})) baseHeaders[k.toLowerCase()] = v
  // fetch-style clients refuse URLs with credentials: send them as Basic auth (RFC 7617) instead.
  if (target.username !== '' || target.password !== '') {
    const userinfo = `${decodeURIComponent(target.username)}:${decodeURIComponent(target.password)}`
    baseHeaders.authorization = `Basic ${Buffer.from(userinfo).toString('base64')}`
    target.username = ''
    target.password = ''
  }
  if (opts.bearerToken !== undefined) baseHeaders.authorization = `Bearer ${opts.bearerToken}`
  const tls = opts.tls ?? {}
  const agentOptions: https.AgentOptions = {
    keepAlive: true,
    // Applies to idle connections only (the agent closes them); a request's deadline is the timer below.
    timeout: KEEP_ALIVE_IDLE_MS,
    scheduling: 'lifo',
    ...(tls.ca === undefined ? {} : { ca: tls.ca }),
    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
    ...(tls.key === undefined ? {} : { key: tls.key }),
  }
  const agent = target.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions)
  const bodies = sinkBodyPool()
  const takeBody = (bytes: number): ArrayBuffer => bodies.take(bytes)

  const render = async (batch: SinkBatch): Promise<Body> => {
    let json: Buffer
    const own = batch.json === undefined
    if (batch.json !== undefined) {
      // Rendered by the store's reader thread (a page of backlog read from SQLite).
      json = Buffer.from(batch.json.buffer, batch.json.byteOffset, batch.json.byteLength)
    } else {
      // renderJsonBatch's output as bytes, written in slices so device traffic is served in between.
      const out = new JsonOut(JSON_BYTES_PER_EVENT * batch.events.length + 2, takeBody)
      const storeIdJson = jsonStoreId(batch.storeId)
      out.byte(0x5b)
      await inSlices(batch.events, (e, i) => {
        if (i > 0) out.byte(0x2c)
        // decodeEvent (protobufjs) takes every shape, so this never gives up.
        writeStoredJson(out, e.body, storeIdJson, batch.storeId, e.seq, decodeEvent)
      })
      out.byte(0x5d)
      json = out.bytes()
    }
    if (opts.gzip !== true || json.byteLength < GZIP_MIN_BYTES) return { bytes: json, gzipped: false, pooled: own }
    // zlib runs on the libuv thread pool: compressing never blocks the event loop.
    const bytes = await gzip(json)
    if (own) bodies.put([json.buffer as ArrayBuffer])
    return { bytes, gzipped: true, pooled: false }
  }

  return {
    kind: 'http',
    acceptsJson: true,
    prepare (batch: SinkBatch): void {
      void prepared(batch, render)
    },
    async send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome> {
      const first = batch.events[0]
      const last = batch.events[batch.events.length - 1]
      if (first === undefined || last === undefined) return { kind: 'delivered' }
      const body = await prepared(batch, render)
      const headers: Record<string, string | number> = { ...baseHeaders, 'idempotency-key': `${batch.storeId}:${first.seq}-${last.seq}`, 'content-length': body.bytes.byteLength }
      if (body.gzipped) headers['content-encoding'] = 'gzip'
      // The deadline is a timer this call holds, not AbortSignal.any([signal, AbortSignal.timeout()]):
      // on Node 20 the timeout signal inside a composite can be garbage-collected before it fires
      // (nodejs/node#57736), and a receiver that never answers then stalls the uplink for good.
      // It covers the response body too.
      const deadline = new AbortController()
      let timedOut = false
      const timer = setTimeout(() => { timedOut = true; deadline.abort() }, opts.timeoutMs)
      const onStop = (): void => deadline.abort(signal.reason)
      if (signal.aborted) onStop()
      else signal.addEventListener('abort', onStop, { once: true })
      try {
        const { req, res } = await post(target, agent, headers, body.bytes, deadline.signal)
        const status = res.statusCode ?? 0
        const ok = status >= 200 && status < 300
        let reason = ''
        if (ok) {
          // The status decides: a 2xx whose body breaks off (or outlasts the deadline) was accepted.
          await finished(res.resume()).catch(() => undefined)
          // A receiver may answer before it read the whole request: the body's bytes are handed back
          // for the next pages once delivered (SinkBatch.json), so they must all be written (or the
          // socket gone) by then.
          if (!req.writableFinished) await finished(req).catch(() => undefined)
          // Delivered: the batch is not sent again, and its body's buffer carries the next one.
          if (body.pooled) bodies.put([body.bytes.buffer as ArrayBuffer])
        } else {
          reason = `HTTP ${status} ${await shortBody(res)}`.trim()
        }
        return classifyStatus(status, reason, parseRetryAfter(header(res.headers, 'retry-after')))
      } catch (err) {
        const e = err as Error & { code?: unknown, cause?: { code?: unknown } }
        // A DOMException's code is a number (an abort's is 20): the reason takes the first string code.
        const code = [e.cause?.code, e.code].find((c): c is string => typeof c === 'string')
        const reason = timedOut ? `timeout after ${opts.timeoutMs} ms` : (code ?? e.message)
        return { kind: 'retry', reason }
      } finally {
        clearTimeout(timer)
        signal.removeEventListener('abort', onStop)
      }
    },
    async close () {
      // Called once the forwarder has stopped: nothing is in flight, idle sockets go at once.
      agent.destroy()
    },
  }
}
