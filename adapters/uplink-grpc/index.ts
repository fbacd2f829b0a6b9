// gRPC uplink: one unary gridgate.v1.EventIngest/Publish per batch (a CloudEventBatch of protobuf
// CloudEvents with storeid and sequence), with a deadline, optional TLS/mTLS, bearer metadata and
// gzip. Status codes map to the forwarder's outcome classes (DESIGN.md "Uplinks"); retrying,
// bisecting and cursor moves belong to the forwarder, so grpc-js' own retries are off.
import * as grpc from '@grpc/grpc-js'
import { protoBatchEventSize, writeProtoBatchEvent } from '../../gateway/event.js'
import { sinkBodyPool } from '../../store-forward/buffer-pool.js'
import { bodySize } from '../../store-forward/protocol.js'
import { inSlices, prepared, type SendOutcome, type Sink, type SinkBatch } from '../../store-forward/sink.js'
import { PUBLISH_PATH } from './schema.js'

export { PUBLISH_PATH }

export interface GrpcTls {
  /** PEM text of the CA(s) that sign the server's certificate (default: the system CAs). */
  ca?: string | Buffer
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string | Buffer
  key?: string | Buffer
}

export interface GrpcSinkOptions {
  /** `host:port` (or any grpc-js target, e.g. `dns:///host:port`). */
  address: string
  /** Per-call deadline (ms). */
  timeoutMs: number
  /** Sent as metadata `authorization: Bearer <token>`. */
  bearerToken?: string
  /** Extra metadata on every call. */
  headers?: Readonly<Record<string, string>>
  /** Compress requests with gzip (grpc-encoding). */
  gzip?: boolean
  /** TLS on when given (an empty object means the system CAs). */
  tls?: GrpcTls
  /** Longest wait between the channel's reconnection attempts (ms). */
  reconnectMaxMs?: number
}

/** gRPC status codes that mean "try again later" (DESIGN.md), plus the transport's own failures. */
const RETRY = new Set<grpc.status>([
  grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED, grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.CANCELLED,
])
/** The longest pushback honoured (ms), as for HTTP's Retry-After. */
const MAX_PUSHBACK = 3_600_000

export function classifyGrpc (code: grpc.status, details: string, pushbackMs?: number): SendOutcome {
  const reason = `gRPC ${grpc.status[code] ?? code}${details === '' ? '' : `: ${details.length > 200 ? `${details.slice(0, 200)}…` : details}`}`
  if (code === grpc.status.OK) return { kind: 'delivered' }
  // grpc-js answers RESOURCE_EXHAUSTED for a message over the receiver's size limit: resending the
  // same batch would fail forever, so halve it like HTTP 413.
  if (code === grpc.status.RESOURCE_EXHAUSTED && /larger than max/i.test(details)) return { kind: 'too_large', reason, status: code }
  if (RETRY.has(code)) return pushbackMs === undefined ? { kind: 'retry', reason, status: code } : { kind: 'retry', reason, status: code, retryAfterMs: pushbackMs }
  if (code === grpc.status.INVALID_ARGUMENT) return { kind: 'poison', reason, status: code }
  return { kind: 'rejected', reason, status: code }
}

/** gRFC A6 server pushback: trailer grpc-retry-pushback-ms, a non-negative integer. */
function pushback (md: grpc.Metadata | undefined): number | undefined {
  const v = md?.get('grpc-retry-pushback-ms')[0]
  if (typeof v !== 'string' || !/^\d+$/.test(v)) return undefined
  return Math.min(Number(v), MAX_PUSHBACK)
}

export function createGrpcSink (opts: GrpcSinkOptions): Sink {
  const tls = opts.tls
  const credentials = tls === undefined
    ? grpc.credentials.createInsecure()
    : grpc.credentials.createSsl(
      tls.ca === undefined ? null : Buffer.from(tls.ca),
      tls.key === undefined ? null : Buffer.from(tls.key),
      tls.cert === undefined ? null : Buffer.from(tls.cert))
  const reconnectMax = opts.reconnectMaxMs ?? 10_000
  // No keepalive pings: servers commonly refuse pings more often than every 5 min (GOAWAY
  // too_many_pings); the per-call deadline already bounds a dead connection.
  const client = new grpc.Client(opts.address, credentials, {
    'grpc.max_send_message_length': -1,
    'grpc.max_receive_message_length': 1024 * 1024,
    'grpc.enable_retries': 0,
    'grpc.initial_reconnect_backoff_ms': Math.min(200, reconnectMax),
    'grpc.max_reconnect_backoff_ms': reconnectMax,
    ...(opts.gzip === true ? { 'grpc.default_compression_algorithm': grpc.compressionAlgorithms.gzip } : {}),
  })
  const base = new grpc.Metadata()
  for (const [k, v] of Object.entries(opts.headers ?? {})) base.set(k.toLowerCase(), v)
  if (opts.bearerToken !== undefined) base.set('authorization', `Bearer ${opts.bearerToken}`)
  // encodeProtoBatch's output, written in slices so device traffic is served in between, into one
  // buffer of the sink's pool: a delivered batch's buffer carries the next one (as the HTTP sink's).
  const bodies = sinkBodyPool()
  const render = async (batch: SinkBatch): Promise<Buffer> => {
    let size = 0
    for (const e of batch.events) size += protoBatchEventSize(bodySize(e), batch.storeId)
    const out = Buffer.from(bodies.take(size), 0, size)
    let at = 0
    await inSlices(batch.events, (e) => { at = writeProtoBatchEvent(out, at, e.body, batch.storeId, e.seq) })
    return out
  }
  const identity = (b: Buffer): Buffer => b

  return {
    kind: 'grpc',
    prepare (batch: SinkBatch): void {
      void prepared(batch, render)
    },
    async send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome> {
      if (batch.events.length === 0) return { kind: 'delivered' }
      const body = await prepared(batch, render)
      if (signal.aborted) return { kind: 'retry', reason: 'stopped before the batch was sent' }
      return new Promise<SendOutcome>((resolve) => {
        const onAbort = (): void => call.cancel()
        const call = client.makeUnaryRequest(PUBLISH_PATH, identity, identity, body, base.clone(),
          { deadline: Date.now() + opts.timeoutMs },
          (err) => {
            signal.removeEventListener('abort', onAbort)
            if (err === null || err === undefined) {
              // Answered, so the request was written whole; it is not sent again.
              bodies.put([body.buffer as ArrayBuffer])
              resolve({ kind: 'delivered' })
              return
            }
            const e = err
            const details = e.code === grpc.status.DEADLINE_EXCEEDED ? `timeout after ${opts.timeoutMs} ms` : e.details
            resolve(classifyGrpc(e.code, details, pushback(e.metadata)))
          })
        signal.addEventListener('abort', onAbort, { once: true })
      })
    },
    async close () {
      client.close()
    },
  }
}
