// Messages between the main thread and the SQLite worker threads. The main thread never touches
// SQLite (DESIGN.md, promise 6): every read and write is one of these requests.

import { hash } from 'node:crypto'

export const SCHEMA_VERSION = 4

/** A fingerprint: two 32-bit MurmurHash3 values of the payload (different seeds), then its length. */
const FINGERPRINT_BYTES = 12
const SEED_A = 0x9747b28c
const SEED_B = 0x5bd1e995
/** What stores wrote before: the first 8 bytes of the payload's SHA-256. */
const LEGACY_FINGERPRINT_BYTES = 8

/** The two results of murmur3Pair (no array per call). */
const lanes = new Uint32Array(2)

function fmix32 (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * MurmurHash3 x86_32 of `p` with two seeds in one pass over the bytes (the block mixing of a byte
 * does not depend on the seed), into `lanes`. Written out here: the npm ports measured 0.9-1 µs for
 * two 200-byte hashes (their multiply is emulated); two separate passes 0.5-0.6 µs, this 0.27-0.46.
 */
function murmur3Pair (p: Uint8Array, seedA: number, seedB: number): void {
  let a = seedA | 0
  let b = seedB | 0
  const whole = p.length & ~3
  let i = 0
  for (; i < whole; i += 4) {
    let k = p[i]! | (p[i + 1]! << 8) | (p[i + 2]! << 16) | (p[i + 3]! << 24)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    a ^= k
    a = (a << 13) | (a >>> 19)
    a = (Math.imul(a, 5) + 0xe6546b64) | 0
    b ^= k
    b = (b << 13) | (b >>> 19)
    b = (Math.imul(b, 5) + 0xe6546b64) | 0
  }
  const rest = p.length & 3
  if (rest > 0) {
    let k = p[i]!
    if (rest > 1) k ^= p[i + 1]! << 8
    if (rest > 2) k ^= p[i + 2]! << 16
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    a ^= k
    b ^= k
  }
  lanes[0] = fmix32(a ^ p.length)
  lanes[1] = fmix32(b ^ p.length)
}

/** MurmurHash3 x86_32 (Austin Appleby's reference, as in SMHasher). */
export function murmur3 (p: Uint8Array, seed: number): number {
  murmur3Pair(p, seed, seed)
  return lanes[0]!
}

/**
 * A payload's fingerprint as the dedup table keeps it beside a reusable key, to tell a retransmission
 * from a new message under a reused number: 64 bits of hash (a false match between two different
 * payloads about once in 2^64 comparisons) and the length. The writer thread computes it for appends
 * that carry the payload (AppendItem.dedupPayload), so the thread that parses device traffic does not.
 * Not SHA-256 any more: that cost the writer 0.8-1.6 µs per event, this about 0.3.
 */
export function payloadFingerprint (payload: Uint8Array): Uint8Array {
  const fp = Buffer.allocUnsafe(FINGERPRINT_BYTES)
  murmur3Pair(payload, SEED_A, SEED_B)
  fp.writeUInt32BE(lanes[0]!, 0)
  fp.writeUInt32BE(lanes[1]!, 4)
  fp.writeUInt32BE(payload.byteLength >>> 0, 8)
  return fp
}

/**
 * Whether a stored fingerprint is a retry's: byte for byte, or, for one written by an earlier version
 * (8 bytes of SHA-256) while that entry is still in the dedup window, against the retry's payload.
 * No fingerprint on either side: the keys alone decide.
 */
export function sameFingerprint (stored: Uint8Array | null, retry: Uint8Array | undefined, retryPayload: Uint8Array | undefined): boolean {
  if (stored === null || retry === undefined) return stored === null && retry === undefined
  if (stored.byteLength === LEGACY_FINGERPRINT_BYTES && retry.byteLength !== LEGACY_FINGERPRINT_BYTES && retryPayload !== undefined) {
    return Buffer.compare(stored, hash('sha256', retryPayload, 'buffer').subarray(0, LEGACY_FINGERPRINT_BYTES)) === 0
  }
  return Buffer.compare(stored, retry) === 0
}

/** Test-only fault switches, shared with the writer through a SharedArrayBuffer (Int32Array slots). */
export const FaultSlot = {
  /** 1 = the writer holds every transaction just before COMMIT until it goes back to 0. */
  holdBeforeCommit: 0,
  /** n > 0 = the next n transactions fail just before COMMIT with SQLITE_FULL and roll back. */
  failCommits: 1,
  /** 1 = the writer thread exits just before its next COMMIT. */
  killWriter: 2,
  /** Set by the writer while it is held, so a test can wait for the hold to take effect. */
  holding: 3,
  /** 1 = the database may not grow (max_page_count pinned at its size then): a real SQLITE_FULL. 0 = space returns. */
  diskFull: 4,
} as const
export const FAULT_SLOTS = 5

export interface QuotaInit {
  maxBytes: number
  walMaxBytes: number
  minFreeDisk: number
  reserveBytes: number
  whenFull: 'drop-oldest' | 'reject-new'
  /** 0 = no TTL. */
  ttlMs: number
}

/**
 * A forward step of the clock (NTP arriving after days offline): events stamped at or before
 * `beforeMs` were really stamped `deltaMs` later than their time says, for TTL purposes.
 */
export interface ClockStep { beforeMs: number, deltaMs: number }

export type DropReason = 'quota' | 'ttl' | 'lag'
export const DROP_REASONS: readonly DropReason[] = ['quota', 'ttl', 'lag']

export interface WorkerInit {
  role: 'writer' | 'reader'
  path: string
  sync: 'full' | 'normal'
  dedupWindowMs: number
  faults: SharedArrayBuffer | null
  quota?: QuotaInit
  /** The writer hands its page cache back after this long without a commit (ms). */
  cacheIdleMs?: number
}

export interface UplinkInit {
  name: string
  startFrom?: 'newest' | 'oldest'
  filter?: { types?: string[] | undefined, subjects?: string[] | undefined } | undefined
  maxLag?: { bytes?: number | undefined, ageMs?: number | undefined } | undefined
}

export interface AppendItem {
  ingestMs: number
  routes: number
  body: Uint8Array
  eventId: string
  /** Dedup key (bytes); recorded with the event for store.dedupWindow. */
  dedupKey?: Uint8Array | undefined
  /**
   * The payload's fingerprint, kept with the key: a key is the sender's reusable message number, so a
   * hit is a retransmission only when the fingerprints match, and a new message replaces the old entry.
   */
  dedupFp?: Uint8Array | undefined
  /** Instead of dedupFp: the payload, whose fingerprint (payloadFingerprint) the writer computes. */
  dedupPayload?: Uint8Array | undefined
  /** Look the key up first and answer with the original outcome if it is there. */
  dedupCheck?: boolean | undefined
}

export type AppendResult =
  | { seq: number, duplicate: false }
  | { seq: number, duplicate: true, eventId: string }

/**
 * One commit's appends as two transferable buffers and the event ids: structured-cloning an array of
 * items copies every body's whole backing ArrayBuffer (Node's 8 KiB pool slab for small ones) and
 * allocates per item on both threads; this moves one buffer of bodies, keys and fingerprints instead.
 */
export interface PackedAppends {
  /**
   * Per item: ingestMs, routes, bodyLen, keyLen (-1 = none), fpLen (-1 = none), flags (1 = dedupCheck,
   * 2 = the fp bytes are the payload itself, to be fingerprinted by the writer).
   */
  meta: Float64Array
  /** Per item: body ‖ key ‖ fp (or payload), back to back. */
  data: Uint8Array
  eventIds: string[]
}

const META_FIELDS = 6

export function packAppends (items: readonly AppendItem[]): PackedAppends {
  let size = 0
  for (const a of items) size += a.body.byteLength + (a.dedupKey?.byteLength ?? 0) + ((a.dedupFp ?? a.dedupPayload)?.byteLength ?? 0)
  const meta = new Float64Array(items.length * META_FIELDS)
  const data = new Uint8Array(size)
  const eventIds = new Array<string>(items.length)
  let at = 0
  for (let i = 0; i < items.length; i++) {
    const a = items[i]!
    const m = i * META_FIELDS
    meta[m] = a.ingestMs
    meta[m + 1] = a.routes
    meta[m + 2] = a.body.byteLength
    meta[m + 3] = a.dedupKey === undefined ? -1 : a.dedupKey.byteLength
    const fp = a.dedupFp ?? a.dedupPayload
    meta[m + 4] = fp === undefined ? -1 : fp.byteLength
    meta[m + 5] = (a.dedupCheck === true ? 1 : 0) | (a.dedupFp === undefined && a.dedupPayload !== undefined ? 2 : 0)
    data.set(a.body, at)
    at += a.body.byteLength
    if (a.dedupKey !== undefined) { data.set(a.dedupKey, at); at += a.dedupKey.byteLength }
    if (fp !== undefined) { data.set(fp, at); at += fp.byteLength }
    eventIds[i] = a.eventId
  }
  return { meta, data, eventIds }
}

/** The items again, their bytes views into the one transferred buffer (no copy). */
export function unpackAppends (p: PackedAppends): AppendItem[] {
  const out: AppendItem[] = new Array(p.eventIds.length)
  const { meta, data } = p
  let at = data.byteOffset
  const view = (len: number): Uint8Array => {
    const v = new Uint8Array(data.buffer, at, len)
    at += len
    return v
  }
  for (let i = 0; i < out.length; i++) {
    const m = i * META_FIELDS
    const item: AppendItem = { ingestMs: meta[m]!, routes: meta[m + 1]!, body: view(meta[m + 2]!), eventId: p.eventIds[i]! }
    const flags = meta[m + 5]!
    if (meta[m + 3]! >= 0) { item.dedupKey = view(meta[m + 3]!); item.dedupCheck = (flags & 1) === 1 }
    if (meta[m + 4]! >= 0) {
      if ((flags & 2) === 2) item.dedupPayload = view(meta[m + 4]!)
      else item.dedupFp = view(meta[m + 4]!)
    }
    out[i] = item
  }
  return out
}

/** Per-uplink counters as the writer keeps them, sent with every reply that may change them. */
export interface UplinkCounts { slot: number, cursor: number, events: number, bytes: number }

export interface WriterState {
  uplinks: UplinkCounts[]
  /** Events removed by policy in this request, per uplink slot and reason. */
  drops: Array<{ slot: number, reason: DropReason, events: number }>
  /** Dead letters removed by policy (quota or TTL), per uplink name. */
  deadLetterDrops: Array<{ uplink: string, reason: DropReason, count: number }>
  /** True while new events are refused (reject-new) or admitted only by dropping (drop-oldest). */
  full: boolean
  /** Pages in use (bytes) and WAL file bytes: what store.maxBytes bounds. */
  usedBytes: number
  walBytes: number
  deadLetters: number
  /** Dead letters per uplink name. */
  deadLettersByUplink: Record<string, number>
  events: number
  /** Rows the writer's connection has changed since it opened (SQLite total_changes()): new WAL frames when it moves. */
  changes: number
}

/**
 * The writer's answer to a commit. `seqs` has one entry per append, in order: its sequence, the
 * original's for a duplicate, or REFUSED_FULL when the store is full (reject-new). The duplicates,
 * rare, are listed by index with the original's event id. A typed array crosses to the main thread as
 * one transferred buffer; an object per append cost a structured clone on both threads (about 0.3 µs
 * per append on each side).
 */
export interface CommitResult { seqs: Float64Array, duplicates: Array<[index: number, eventId: string]>, state: WriterState }

/** In CommitResult.seqs: the append was refused because the store is full (sequences start at 1). */
export const REFUSED_FULL = 0

export interface MaintainResult {
  state: WriterState
  /** Ingest time of each uplink's oldest waiting event. */
  oldest: Array<{ slot: number, ingestMs: number | null }>
  checkpoint: { mode: 'PASSIVE' | 'TRUNCATE', busy: number, log: number, checkpointed: number } | null
  diskFree: number | null
  /** This round handed the writer's page cache back (PRAGMA shrink_memory): no commit for cacheIdleMs. */
  cacheReleased: boolean
}

export interface DeadLetterRow {
  id: number
  uplink: string
  seq: number
  ingestMs: number
  atMs: number
  reason: string
  status: number | null
  body: Uint8Array
}
export interface AckItem { slot: number, seq: number }

export interface DeadLetterItem {
  uplink: string
  seq: number
  ingestMs: number
  reason: string
  status: number | null
  body: Uint8Array
}

export interface UplinkState {
  name: string
  slot: number
  cursor: number
  backlogEvents: number
  backlogBytes: number
  oldestMs: number | null
  deadLetters: number
}

export interface InitResult {
  storeId: string
  synchronous: number
  journalMode: string
  floorMs: number
  lastSeq: number
  uplinks: UplinkState[]
  removedUplinks: Array<{ name: string, backlogEvents: number }>
  uncleanShutdown: boolean
  quickCheck: string | null
  movedAside: string | null
  created: boolean
}

export interface StoredRow { seq: number, ingestMs: number, body: Uint8Array }

/**
 * A page and its events rendered by the reader thread as an application/cloudevents-batch+json body
 * (UTF-8, its own transferred buffer), so forwarding a backlog costs the main thread no decoding or
 * rendering. json is null when an event has a shape only protobufjs decodes (the main thread renders).
 */
export interface RenderedPage {
  rows: StoredRow[]
  json: Uint8Array | null
  /**
   * Hands the page's buffers back to the reader thread for its next pages. Called once the page was
   * delivered and nothing reads its json or its rows' bodies any more; never while a request may still
   * be writing them. Absent for a page from the in-memory tail.
   */
  release?: () => void
}

/**
 * A page of rows as the reader thread sends it: two transferred buffers instead of a structured clone
 * of one object and one ArrayBuffer per row (the main thread would deserialize those one by one).
 */
export interface PackedRows {
  /** Per row: seq, ingestMs, body length. */
  meta: Float64Array
  /** The bodies back to back. */
  data: Uint8Array
}

/** Where packRows and the reader's JSON rendering get their buffers: a fresh one, or one handed back. */
export type Alloc = (bytes: number) => ArrayBuffer

const freshBuffer: Alloc = (bytes) => new ArrayBuffer(bytes)

export function packRows (rows: readonly StoredRow[], alloc: Alloc = freshBuffer): PackedRows {
  let size = 0
  for (const r of rows) size += r.body.byteLength
  const meta = new Float64Array(alloc(rows.length * 3 * Float64Array.BYTES_PER_ELEMENT), 0, rows.length * 3)
  const data = new Uint8Array(alloc(size), 0, size)
  let at = 0
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!
    meta[i * 3] = r.seq
    meta[i * 3 + 1] = r.ingestMs
    meta[i * 3 + 2] = r.body.byteLength
    data.set(r.body, at)
    at += r.body.byteLength
  }
  return { meta, data }
}

/**
 * A row of a page from the reader thread. Its body is a Buffer view into the page's one transferred
 * buffer, made when first asked for: a drained page that goes out as the reader's JSON rendering
 * needs only each row's sequence, time and size, and a view per row was 40 % of what the main thread
 * allocated during a backlog drain (the allocation profile of `npm run bench -- --profile`), each
 * young-generation collection of it an event-loop pause for the devices' messages. The page notes
 * that a view was made: its buffer may then be referenced from anywhere, and is never handed back.
 */
export class PackedRow implements StoredRow {
  private view: Buffer | null = null

  constructor (readonly seq: number, readonly ingestMs: number, readonly size: number, private readonly page: UnpackedPage, private readonly at: number) {}

  get body (): Buffer {
    if (this.view === null) {
      this.page.viewed = true
      this.view = Buffer.from(this.page.data, this.at, this.size)
    }
    return this.view
  }
}

/** The buffer a page's PackedRows point into, and whether any of them made a view of it. */
export interface UnpackedPage { readonly data: ArrayBuffer, viewed: boolean }

/** A row's body size, without making a PackedRow's view. */
export function bodySize (row: StoredRow): number {
  return row instanceof PackedRow ? row.size : row.body.byteLength
}

/**
 * The rows again, each body a view into the one transferred buffer (no copy), made when first read.
 * `page` is what the rows point into: Store hands its buffer back to the reader thread once the page
 * is done with, unless a row made a view of it.
 */
export function unpackRows (p: PackedRows): { rows: StoredRow[], page: UnpackedPage } {
  const n = p.meta.length / 3
  const out: StoredRow[] = new Array(n)
  const page: UnpackedPage = { data: p.data.buffer as ArrayBuffer, viewed: false }
  let at = p.data.byteOffset
  for (let i = 0; i < n; i++) {
    const len = p.meta[i * 3 + 2]!
    out[i] = new PackedRow(p.meta[i * 3]!, p.meta[i * 3 + 1]!, len, page, at)
    at += len
  }
  return { rows: out, page }
}

/** readRendered's reply: the packed rows and their JSON rendering. */
export interface PackedRenderedPage { rows: PackedRows, json: Uint8Array | null }

/**
 * A retained MQTT message as the store keeps it (broker state, not an event). An empty payload in a
 * write deletes the topic's row ([MQTT-3.3.1-10]). `properties` is MQTT 5 publish properties as JSON
 * (binary values base64, see adapters/mqtt/persistence.ts), or null.
 */
export interface RetainedRow { topic: string, payload: Uint8Array, qos: number, properties: string | null, updatedMs: number }

export type Request =
  | { op: 'init', uplinks: UplinkInit[], nowMs: number }
  // `retained`: retained-message writes that share the group commit's transaction.
  | { op: 'commit', appends: PackedAppends, acks: AckItem[], deadLetters: DeadLetterItem[], floorMs: number, nowMs: number, retained?: RetainedRow[] }
  // `recycle`: buffers of pages the main thread is done with, transferred back for the next pages.
  | { op: 'readPage', slot: number, after: number, upTo: number, limit: number, maxBytes: number, recycle?: ArrayBuffer[] }
  // readPage, plus the page rendered as a CloudEvents JSON batch (RenderedPage).
  | { op: 'readRendered', slot: number, after: number, upTo: number, limit: number, maxBytes: number, storeId: string, recycle?: ArrayBuffer[] }
  | { op: 'stats' }
  // A PASSIVE WAL checkpoint on the reader's connection.
  | { op: 'checkpoint' }
  // The writer copies what was committed during the reader's checkpoint, so its next commit rewinds the WAL.
  | { op: 'catchUpWal' }
  | { op: 'maintain', nowMs: number, steps: ClockStep[] }
  | { op: 'dlqList', uplink: string | null, afterId: number, limit: number }
  | { op: 'dlqReplay', uplink: string | null, ids: number[] | null, ingestMs: number }
  | { op: 'dlqPurge', uplink: string | null, ids: number[] | null }
  | { op: 'close', clean: boolean, floorMs: number }
  // Every retained message, newest first, at most `max`; rows beyond it (mqtt.maxRetained was lowered) are deleted.
  | { op: 'retainedLoad', max: number }
  | DeviceRequest

/** Kept incrementally by the writer (counted once at start), so asking is O(1). */
export interface StatsResult { events: number, deadLetters: number, pageCount: number, pageSize: number, freelist: number, walBytes: number, usedBytes: number, maxBytes: number | null, full: boolean }

export interface RetainedLoadResult { rows: RetainedRow[], deleted: number }

export type Envelope = { id: number, req: Request }
export type Reply = { id: number, ok: true, result: unknown } | { id: number, ok: false, error: { message: string, code?: string } }

// ---- device registry (table `devices`, gateway/devices.ts) ------------------------------------------

/** A registry device as stored: the secret only as its scrypt PHC hash. */
export interface DeviceRow {
  id: string
  tokenHash: string
  publish: string[]
  subscribe: string[]
  enabled: boolean
  createdMs: number
  updatedMs: number
}

export type DeviceRequest =
  | { op: 'deviceList' }
  | { op: 'deviceAdd', device: DeviceRow }
  | { op: 'deviceSetEnabled', id: string, enabled: boolean, nowMs: number }
  | { op: 'deviceRemove', id: string }
