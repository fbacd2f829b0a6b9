// The one path every device message takes: decode → identify → map → stamp → append.
// Everything before store.append() is synchronous, so within one device connection the order of
// arrival is the order of the log (DESIGN.md promise 3).
import { createHash } from 'node:crypto'
import type { Clock, IdGenerator } from './clock.js'
import type { DecoderRegistry, DecodeResult } from './decoders/index.js'
import { APPLICATION_PROTOBUF, decodeLenient } from './decoders/index.js'
import { encodeEvent, type GridEvent } from './event.js'
import { GridgateError } from './errors.js'
import type { Metrics, Protocol } from './metrics.js'
import { deviceTime, type RuleMatch, type Rules } from './rules.js'
import { StoreFullError, type Store } from '../store-forward/store.js'

export const DEFAULT_EVENT_TYPE = 'gridgate.telemetry'

export interface IngestMessage {
  deviceId: string
  protocol: Protocol
  /** The event's subject (DESIGN.md "Topics"). */
  topic: string
  payload: Uint8Array
  contentType?: string | undefined
  /** False where the protocol cannot refuse one message (MQTT 3.1.1): bad payloads are kept raw. */
  canRefuse: boolean
  traceparent?: string | undefined
  dedupKey?: Uint8Array | undefined
  /** Look the key up before storing (a retransmission is possible). */
  dedupCheck?: boolean | undefined
  /**
   * When the store is full (reject-new), keep the device waiting up to this long for space before
   * refusing (MQTT 3.1.1 cannot refuse one publish: the ack is withheld, DESIGN.md "Store").
   */
  fullWaitMs?: number | undefined
  /** Checked before a retry after waiting for space: a message whose connection is gone is abandoned. */
  abandoned?: (() => boolean) | undefined
}

export interface IngestResult {
  eventId: string
  seq: number
  duplicate: boolean
}

export interface IngestOptions {
  gatewayId: string
  store: Store
  decoders: DecoderRegistry
  clock: Clock
  ids: IdGenerator
  metrics: Metrics
  /** Mapping rules (config `rules`); none when absent. */
  rules?: Rules | undefined
}

/** A 16-byte dedup key from its parts; parts are length-prefixed so no two tuples collide. */
export function dedupKey (...parts: ReadonlyArray<string | number | Uint8Array>): Uint8Array {
  const h = createHash('sha256')
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p) : typeof p === 'number' ? Buffer.from(String(p)) : p
    const len = Buffer.alloc(4)
    len.writeUInt32BE(b.byteLength)
    h.update(len)
    h.update(b)
  }
  return h.digest().subarray(0, 16)
}

export class Ingest {
  private readonly inflight = new Map<string, Promise<IngestResult>>()

  constructor (private readonly o: IngestOptions) {}

  /** Throws GG_ERR_PAYLOAD_INVALID synchronously-rejected when the payload is refused; nothing is stored then. */
  ingest (msg: IngestMessage): Promise<IngestResult> {
    const key = msg.dedupKey === undefined ? undefined : Buffer.from(msg.dedupKey).toString('base64')
    if (key !== undefined && msg.dedupCheck === true) {
      // A retry that arrives while the first commit is in progress waits for it (DESIGN.md
      // "Deduplication at ingest"); if that commit failed, the retry is stored itself.
      const first = this.inflight.get(key)
      if (first !== undefined) {
        return first.then(
          (r) => { this.o.metrics.dedupHits.inc({ protocol: msg.protocol }); return { ...r, duplicate: true } },
          () => this.ingest(msg),
        )
      }
    }
    // One reading of the clock for the event's time, its id's timestamp, its stored ingest time and
    // "now" for payload formats with relative times (SenML).
    const nowMs = this.o.clock.now()
    const rule = this.o.rules?.match(msg.topic)
    let decoded: DecodeResult
    try {
      decoded = this.decode(msg, rule, nowMs)
    } catch (err) {
      this.o.metrics.ingress.inc({ protocol: msg.protocol, outcome: 'refused' })
      return Promise.reject(err)
    }
    if (decoded.normalizeerror !== undefined) this.o.metrics.normalizeFailures.inc({ protocol: msg.protocol })
    const event = this.stamp(msg, decoded, nowMs, rule)
    const item = {
      ingestMs: nowMs,
      routes: this.o.store.route(event.type, event.subject ?? msg.topic),
      body: encodeEvent(event),
      eventId: event.id,
      ...(msg.dedupKey === undefined ? {} : { dedupKey: msg.dedupKey, dedupCheck: msg.dedupCheck === true }),
    }
    const first = this.o.store.append(item)
    const appended = msg.fullWaitMs === undefined || msg.fullWaitMs <= 0
      ? first
      : first.catch((err: unknown) => this.waitForSpace(err, item, msg, Date.now() + msg.fullWaitMs!))
    const p = appended.then((r) => {
      if (r.duplicate) {
        this.o.metrics.dedupHits.inc({ protocol: msg.protocol })
        this.o.metrics.ingress.inc({ protocol: msg.protocol, outcome: 'duplicate' })
        return { eventId: r.eventId, seq: r.seq, duplicate: true }
      }
      this.o.metrics.ingress.inc({ protocol: msg.protocol, outcome: 'stored' })
      return { eventId: event.id, seq: r.seq, duplicate: false }
    }, (err: unknown) => {
      this.o.metrics.ingress.inc({ protocol: msg.protocol, outcome: 'failed' })
      throw err
    })
    if (key !== undefined) {
      this.inflight.set(key, p)
      const forget = (): void => { if (this.inflight.get(key) === p) this.inflight.delete(key) }
      p.then(forget, forget)
    }
    return p
  }

  /** Retries an append refused for a full store each time the store reports space, until the deadline. */
  private async waitForSpace (err: unknown, item: Parameters<Store['append']>[0], msg: IngestMessage, deadline: number): Promise<Awaited<ReturnType<Store['append']>>> {
    let last = err
    while (last instanceof StoreFullError) {
      const left = deadline - Date.now()
      if (left <= 0) break
      await new Promise<void>((resolve) => {
        const done = (): void => { clearTimeout(timer); this.o.store.off('space', done); resolve() }
        const timer = setTimeout(done, left)
        this.o.store.once('space', done)
      })
      if (msg.abandoned?.() === true) throw new GridgateError('GG_ERR_STORE_FULL', 'the device went away while the store was full; the event was not stored')
      if (Date.now() >= deadline && this.o.store.full) break
      try {
        return await this.o.store.append(item)
      } catch (e) {
        last = e
      }
    }
    throw last
  }

  private decode (msg: IngestMessage, rule: RuleMatch | undefined, nowMs: number): DecodeResult {
    if (rule === undefined) {
      return msg.canRefuse
        ? this.o.decoders.decode(msg.payload, msg.contentType, { nowMs })
        : decodeLenient(this.o.decoders, msg.payload, msg.contentType, { nowMs })
    }
    // The rule's content type applies only to messages that declare none; a rule naming a protobuf
    // message implies application/protobuf for them.
    const declared = msg.contentType !== undefined && msg.contentType.trim() !== '' ? msg.contentType : undefined
    const contentType = declared ?? rule.contentType ?? (rule.protobuf === undefined ? undefined : APPLICATION_PROTOBUF)
    const ctx = { nowMs, protobuf: rule.protobuf }
    return msg.canRefuse
      ? this.o.decoders.decode(msg.payload, contentType, ctx)
      : decodeLenient(this.o.decoders, msg.payload, contentType, ctx)
  }

  private stamp (msg: IngestMessage, decoded: DecodeResult, nowMs: number, rule: RuleMatch | undefined): GridEvent {
    const extensions: Record<string, string> = {
      deviceid: msg.deviceId,
      protocol: msg.protocol,
      gatewayid: this.o.gatewayId,
    }
    if (decoded.sourcecontenttype !== undefined) extensions.sourcecontenttype = decoded.sourcecontenttype
    if (decoded.normalizeerror !== undefined) extensions.normalizeerror = decoded.normalizeerror
    if (msg.traceparent !== undefined) extensions.traceparent = msg.traceparent
    if (rule?.deviceTime !== undefined && decoded.data.kind === 'json') {
      const t = deviceTime(decoded.data, rule.deviceTime)
      if (t !== undefined) extensions.devicetime = t
    }
    return {
      id: this.o.ids.next(nowMs),
      source: `/gateways/${this.o.gatewayId}/devices/${msg.deviceId}`,
      type: rule?.type !== undefined && rule.type !== '' ? rule.type : DEFAULT_EVENT_TYPE,
      subject: msg.topic,
      time: new Date(nowMs).toISOString(),
      datacontenttype: decoded.datacontenttype,
      data: decoded.data,
      extensions,
    }
  }
}
