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
}

export type SendOutcome =
  /** 2xx / gRPC OK. */
  | { kind: 'delivered' }
  /** Network error, timeout, 408, 429, 5xx: retry with backoff, honouring retryAfterMs. */
  | { kind: 'retry', reason: string, status?: number, retryAfterMs?: number }
  /** 400/422: something in the batch is poison; bisect, dead-letter what fails alone. */
  | { kind: 'poison', reason: string, status: number }
  /** 413: halve the batch; a single event still too large is dead-lettered as too_large. */
  | { kind: 'too_large', reason: string, status: number }
  /** Any other 4xx: the uplink is misconfigured, not the events; keep them and back off. */
  | { kind: 'rejected', reason: string, status: number }

export interface Sink {
  /** Label for logs and metrics, e.g. "http". */
  readonly kind: string
  send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome>
  close (): Promise<void>
}
