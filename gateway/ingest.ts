// The one path every device message takes: decode → identify → map → stamp → append.
// Everything before store.appendWith() is synchronous, so within one device connection the order of
// arrival is the order of the log (DESIGN.md promise 3).
import crypto from 'node:crypto'
import type { Clock, IdGenerator } from './clock.js'
import type { DecoderRegistry, DecodeResult } from './decoders/index.js'
import { APPLICATION_PROTOBUF, decodeLenient } from './decoders/index.js'
import { encodeEvent, type GridEvent } from './event.js'
import { GridgateError } from './errors.js'
import type { Metrics, Protocol } from './metrics.js'
import { deviceTime, type RuleMatch, type Rules } from './rules.js'
import { StoreFullError, type Store } from '../store-forward/store.js'
import type { AppendItem, AppendResult } from '../store-forward/protocol.js'

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
  /**
   * The payload, when the key is a number the sender may reuse for another message: the store's
   * writer thread keeps its fingerprint beside the key (SHA-256 would be a few percent of this
   * thread's time per message); a retry still in flight is compared with it byte for byte.
   */
  dedupPayload?: Uint8Array | undefined
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

/** Answers one message: an error (nothing stored), or the stored event. */
export type IngestCallback = (err: Error | null, result?: IngestResult) => void

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

const SCOPE_BYTES = 8
const STRING_ID_BYTES = 16

function sha256 (data: Uint8Array): Buffer {
  return crypto.hash('sha256', data, 'buffer')
}

/**
 * Who may retransmit (protocol and sender: MQTT client id, CoAP endpoint, device), as the 8 bytes a
 * dedup key starts with. Keys of one sender then sit side by side in the store's dedup index, and with
 * increasing message numbers a commit touches a few index pages instead of one page per event (random
 * keys made the index the costliest write of a commit). Parts are length-prefixed so no two collide.
 */
export function dedupScope (...parts: ReadonlyArray<string>): Uint8Array {
  const bufs = parts.map(p => Buffer.from(p))
  const joined = Buffer.alloc(bufs.reduce((n, b) => n + 4 + b.byteLength, 0))
  let at = 0
  for (const b of bufs) {
    at = joined.writeUInt32BE(b.byteLength, at)
    at += b.copy(joined, at)
  }
  return new Uint8Array(sha256(joined).subarray(0, SCOPE_BYTES))
}

/**
 * A dedup key: scope ‖ the sender's message number (4 bytes big-endian, so one sender's consecutive
 * numbers are neighbours; a string id is hashed to 16 bytes). A number that the protocol lets the sender
 * reuse (MQTT packet ids, CoAP message IDs) replaces its entry, so the dedup table stays as small as the
 * senders' id spaces; the payload's fingerprint (payloadFingerprint, computed by the store's writer)
 * tells a retransmission from a new message. The key may be a slice of Node's buffer pool (a fresh
 * ArrayBuffer per message costs a backing-store allocation): the store copies keys into the commit it
 * hands to the writer thread.
 */
export function dedupKey (scope: Uint8Array, messageId: number | string): Uint8Array {
  const idBytes = typeof messageId === 'number' ? 4 : STRING_ID_BYTES
  const key = Buffer.allocUnsafe(scope.byteLength + idBytes)
  key.set(scope, 0)
  if (typeof messageId === 'number') key.writeUInt32BE(messageId >>> 0, scope.byteLength)
  else key.set(sha256(Buffer.from(messageId)).subarray(0, STRING_ID_BYTES), scope.byteLength)
  return key
}

/** Event sources kept per device id (a device's source string is built once, not per event). */
const MAX_SOURCES = 4096

export class Ingest {
  private readonly sources = new Map<string, string>()
  /** The last event time rendered: events of the same millisecond share the string. */
  private lastTime = { ms: Number.NaN, iso: '' }

  constructor (private readonly o: IngestOptions) {}

  /** Rejects with GG_ERR_PAYLOAD_INVALID when the payload is refused; nothing is stored then. */
  ingest (msg: IngestMessage): Promise<IngestResult> {
    return new Promise((resolve, reject) => this.ingestWith(msg, (err, result) => { if (err === null) resolve(result!); else reject(err) }))
  }

  /**
   * ingest() with a callback, for the devices' hot path (no promise per message). `done` is called
   * exactly once; for a refused payload before this returns, else once the event is committed.
   */
  ingestWith (msg: IngestMessage, done: IngestCallback): void {
    // A retry that arrives while its original's commit is in progress needs nothing here (DESIGN.md
    // "Deduplication at ingest"): it is queued behind the original, and the writer, which commits in
    // order, finds the original's dedup entry (in the same transaction or an earlier one) and answers
    // with its sequence and event id. If the original's commit failed, the retry is stored itself.
    // One reading of the clock for the event's time, its id's timestamp, its stored ingest time and
    // "now" for payload formats with relative times (SenML).
    const nowMs = this.o.clock.now()
    const rule = this.o.rules?.match(msg.topic)
    let decoded: DecodeResult
    try {
      decoded = this.decode(msg, rule, nowMs)
    } catch (err) {
      this.o.metrics.ingress.inc({ protocol: msg.protocol, outcome: 'refused' })
      done(err as Error)
      return
    }
    if (decoded.normalizeerror !== undefined) this.o.metrics.normalizeFailures.inc({ protocol: msg.protocol })
    const event = this.stamp(msg, decoded, nowMs, rule)
    // Every field present (undefined when absent): one object shape for every append.
    const item: AppendItem = {
      ingestMs: nowMs,
      routes: this.o.store.route(event.type, event.subject ?? msg.topic),
      // The time in ms as the event's time text has it (Date truncates), so it need not be parsed back.
      body: encodeEvent(event, Math.trunc(nowMs)),
      eventId: event.id,
      dedupKey: msg.dedupKey,
      dedupCheck: msg.dedupKey === undefined ? undefined : msg.dedupCheck === true,
      dedupPayload: msg.dedupPayload,
    }
    // Only the id outlives this call: the event object dies young, the stored bytes carry the rest.
    const eventId = event.id
    this.o.store.appendWith(item, (err, r) => {
      if (err === null) {
        done(null, this.stored(msg.protocol, eventId, r!))
      } else if (msg.fullWaitMs !== undefined && msg.fullWaitMs > 0 && err instanceof StoreFullError) {
        this.waitForSpace(err, item, msg, Date.now() + msg.fullWaitMs).then(
          (again) => done(null, this.stored(msg.protocol, eventId, again)),
          (last: unknown) => this.failed(msg.protocol, last as Error, done))
      } else {
        this.failed(msg.protocol, err, done)
      }
    })
  }

  private stored (protocol: Protocol, eventId: string, r: AppendResult): IngestResult {
    if (r.duplicate) {
      this.o.metrics.dedupHits.inc({ protocol })
      this.o.metrics.ingress.inc({ protocol, outcome: 'duplicate' })
      return { eventId: r.eventId, seq: r.seq, duplicate: true }
    }
    this.o.metrics.countStored(protocol)
    return { eventId, seq: r.seq, duplicate: false }
  }

  private failed (protocol: Protocol, err: Error, done: IngestCallback): void {
    this.o.metrics.ingress.inc({ protocol, outcome: 'failed' })
    done(err)
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

  private sourceOf (deviceId: string): string {
    let source = this.sources.get(deviceId)
    if (source === undefined) {
      if (this.sources.size >= MAX_SOURCES) this.sources.clear()
      source = `/gateways/${this.o.gatewayId}/devices/${deviceId}`
      this.sources.set(deviceId, source)
    }
    return source
  }

  private timeOf (ms: number): string {
    if (ms !== this.lastTime.ms) this.lastTime = { ms, iso: new Date(ms).toISOString() }
    return this.lastTime.iso
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
      source: this.sourceOf(msg.deviceId),
      type: rule?.type !== undefined && rule.type !== '' ? rule.type : DEFAULT_EVENT_TYPE,
      subject: msg.topic,
      time: this.timeOf(nowMs),
      datacontenttype: decoded.datacontenttype,
      data: decoded.data,
      extensions,
    }
  }
}
