// Messages between the main thread and the SQLite worker threads. The main thread never touches
// SQLite (DESIGN.md, promise 6): every read and write is one of these requests.

export const SCHEMA_VERSION = 1

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
} as const
export const FAULT_SLOTS = 4

export interface WorkerInit {
  role: 'writer' | 'reader'
  path: string
  sync: 'full' | 'normal'
  dedupWindowMs: number
  faults: SharedArrayBuffer | null
}

export interface UplinkInit {
  name: string
}

export interface AppendItem {
  ingestMs: number
  routes: number
  body: Uint8Array
  eventId: string
  /** Dedup key (bytes); recorded with the event for store.dedupWindow. */
  dedupKey?: Uint8Array
  /** Look the key up first and answer with the original outcome if it is there. */
  dedupCheck?: boolean
}

export type AppendResult =
  | { seq: number, duplicate: false }
  | { seq: number, duplicate: true, eventId: string }

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

export type Request =
  | { op: 'init', uplinks: UplinkInit[], nowMs: number }
  | { op: 'commit', appends: AppendItem[], acks: AckItem[], deadLetters: DeadLetterItem[], floorMs: number, nowMs: number }
  | { op: 'readPage', slot: number, after: number, upTo: number, limit: number, maxBytes: number }
  | { op: 'stats' }
  | { op: 'close', clean: boolean, floorMs: number }

/** Kept incrementally by the writer (counted once at start), so asking is O(1). */
export interface StatsResult { events: number, deadLetters: number, pageCount: number, pageSize: number, freelist: number, walBytes: number }

export type Envelope = { id: number, req: Request }
export type Reply = { id: number, ok: true, result: unknown } | { id: number, ok: false, error: { message: string, code?: string } }
