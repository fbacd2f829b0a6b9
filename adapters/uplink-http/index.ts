// HTTP uplink: POSTs a batch as application/cloudevents-batch+json (structured events) and maps the
// response to an outcome class. Retrying, bisecting and cursor moves belong to the forwarder.
import { renderJsonBatch } from '../../gateway/event.js'
import type { Sink, SinkBatch, SendOutcome } from '../../store-forward/sink.js'

export interface HttpSinkOptions {
  url: string
  /** Per-request deadline (ms). */
  timeoutMs: number
  headers?: Readonly<Record<string, string>>
}

export const BATCH_CONTENT_TYPE = 'application/cloudevents-batch+json'
/** The longest Retry-After honoured (ms); a larger value is clamped, not ignored. */
const MAX_RETRY_AFTER = 3_600_000

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

async function shortBody (res: Response): Promise<string> {
  try {
    const text = await res.text()
    return text.length > 200 ? `${text.slice(0, 200)}…` : text
  } catch {
    return ''
  }
}

export function createHttpSink (opts: HttpSinkOptions): Sink {
  const target = new URL(opts.url)
  const baseHeaders: Record<string, string> = { 'content-type': BATCH_CONTENT_TYPE, ...opts.headers }
  // fetch refuses URLs with credentials: send them as Basic auth (RFC 7617) instead.
  if (target.username !== '' || target.password !== '') {
    const userinfo = `${decodeURIComponent(target.username)}:${decodeURIComponent(target.password)}`
    baseHeaders.authorization = `Basic ${Buffer.from(userinfo).toString('base64')}`
    target.username = ''
    target.password = ''
  }
  return {
    kind: 'http',
    async send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome> {
      const first = batch.events[0]
      const last = batch.events[batch.events.length - 1]
      if (first === undefined || last === undefined) return { kind: 'delivered' }
      const body = renderJsonBatch(batch.events, batch.storeId)
      let res: Response
      try {
        res = await fetch(target, {
          method: 'POST',
          headers: { ...baseHeaders, 'idempotency-key': `${batch.storeId}:${first.seq}-${last.seq}` },
          body,
          redirect: 'manual',
          signal: AbortSignal.any([signal, AbortSignal.timeout(opts.timeoutMs)]),
        })
      } catch (err) {
        const e = err as Error & { cause?: { code?: string } }
        const reason = e.name === 'TimeoutError' ? `timeout after ${opts.timeoutMs} ms` : (e.cause?.code ?? e.message)
        return { kind: 'retry', reason }
      }
      const reason = res.ok ? '' : `HTTP ${res.status} ${await shortBody(res)}`.trim()
      if (res.ok) await res.arrayBuffer().catch(() => undefined)
      return classifyStatus(res.status, reason, parseRetryAfter(res.headers.get('retry-after')))
    },
    async close () {},
  }
}
