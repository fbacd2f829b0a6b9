// The seam between the forwarder and a cloud protocol. A sink sends one batch and reports the
// outcome class (DESIGN.md "Uplinks"); it never moves a cursor and never retries on its own.
export interface SinkEvent {
  seq: number
  ingestMs: number
  /** The stored protobuf CloudEvent, without storeid/sequence (added when rendered). */
  body: Uint8Array
}

export interface SinkBatch {
  storeId: string
  events: readonly SinkEvent[]
  /**
   * The request body, rendered once per batch by the first `prepare` (the forwarder calls it ahead of
   * the send, while the previous batch is in flight) and shared by every endpoint of the uplink.
   */
  prepared?: Promise<unknown>
  /**
   * The events as an application/cloudevents-batch+json body, rendered by the store's reader thread
   * (for sinks with acceptsJson). Only for exactly these events: a batch cut from another has none.
   * Once send() resolved `delivered`, the sink reads it no more (an HTTP request has finished writing
   * its body): the forwarder then hands its buffer back to the reader thread for the next pages.
   */
  json?: Uint8Array
}

export type SendOutcome =
  /** 2xx / gRPC OK. */
  | { kind: 'delivered' }
  /**
   * Network error, timeout, 408, 429, 5xx: retry with backoff, honouring retryAfterMs. `notSent`:
   * nothing went out (every endpoint's breaker open, or waiting out a Retry-After).
   */
  | { kind: 'retry', reason: string, status?: number, retryAfterMs?: number, notSent?: true }
  /** 400/422: something in the batch is poison; bisect, dead-letter what fails alone. */
  | { kind: 'poison', reason: string, status: number }
  /** 413: halve the batch; a single event still too large is dead-lettered as too_large. */
  | { kind: 'too_large', reason: string, status: number }
  /** Any other 4xx: the uplink is misconfigured, not the events; keep them and back off. */
  | { kind: 'rejected', reason: string, status: number }

export interface Sink {
  /** Label for logs and metrics, e.g. "http". */
  readonly kind: string
  /** Takes batches pre-rendered as CloudEvents JSON (SinkBatch.json) when the store can give them. */
  readonly acceptsJson?: boolean
  send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome>
  /** Renders the batch's request body into `batch.prepared` (idempotent); optional. */
  prepare? (batch: SinkBatch): void
  /** Per-endpoint health, for sinks that spread an uplink over several endpoints. */
  endpoints? (): EndpointReport[]
  close (): Promise<void>
}

export type BreakerState = 'closed' | 'open' | 'half-open'

export interface EndpointReport {
  /** The URL or address, credentials removed. */
  endpoint: string
  breaker: BreakerState
  consecutiveFailures: number
  lastError: string | null
}

/** Memoizes a sink's rendering of a batch: the first caller renders, later callers (other endpoints) reuse it. */
export function prepared<T> (batch: SinkBatch, render: (batch: SinkBatch) => T | Promise<T>): Promise<T> {
  if (batch.prepared === undefined) {
    const p = Promise.resolve().then(() => render(batch))
    // A batch prepared ahead and then dropped (stop) must not leave an unhandled rejection behind.
    p.catch(() => {})
    batch.prepared = p
  }
  return batch.prepared as Promise<T>
}

/** Events rendered between two yields to the event loop. */
const SLICE = 64

/**
 * Calls `each` for every item, yielding to the event loop between slices: rendering a 500-event batch
 * of a backlog takes milliseconds of main-thread time, and device traffic (reads, acks) must get in
 * between rather than wait for the whole batch.
 */
export async function inSlices<T> (items: readonly T[], each: (item: T, index: number) => void): Promise<void> {
  for (let i = 0; i < items.length; i++) {
    if (i > 0 && i % SLICE === 0) await new Promise<void>(resolve => setImmediate(resolve))
    each(items[i] as T, i)
  }
}
