// The newest committed events, kept in memory after their commit so that forwarders that keep up with
// live traffic read them from here instead of from SQLite: no reader-thread round trip and no copy of
// every body across threads. Only the stored bytes are kept (sinks render from them): the event object
// ingest built dies young, before the garbage collector would copy it to the old generation.
// A forwarder that has fallen further behind than the tail reaches reads from the store as before.
//
// The tail answers only for a range it holds completely: every routed row with a sequence in
// (floor, top] is in it. Anything that appends without going through the group commit (dead-letter
// replay) resets it, and so does anything that could make it lie.
import type { StoredRow } from './protocol.js'

export interface TailRow extends StoredRow {
  routes: number
}

export interface TailLimits {
  /** Rows held at most. */
  rows: number
  /** Body bytes held at most. */
  bytes: number
}

/** Compaction of the row array happens once this many rows at its front are dead. */
const COMPACT_AT = 1024

export class RecentTail {
  private rows: TailRow[] = []
  private head = 0
  private bytes = 0
  /** Every routed row with floor < seq <= top is held. */
  private floor: number
  private top: number

  constructor (private readonly limits: TailLimits, lastSeq: number) {
    this.floor = lastSeq
    this.top = lastSeq
  }

  get size (): number { return this.rows.length - this.head }
  get heldBytes (): number { return this.bytes }
  /** Every routed row above this sequence (up to the newest) is held; a reader from below it gets null. */
  get from (): number { return this.floor }

  /** Forgets everything; from now on the tail covers what is committed after `lastSeq`. */
  reset (lastSeq: number): void {
    this.rows = []
    this.head = 0
    this.bytes = 0
    this.floor = lastSeq
    this.top = lastSeq
  }

  /**
   * One commit's new rows, in sequence order, which made `lastSeq` (before: `previousTop`) the newest
   * sequence. A commit that does not continue where the tail ends resets it rather than leave a gap.
   */
  append (previousTop: number, lastSeq: number, rows: readonly TailRow[]): void {
    if (previousTop !== this.top) {
      this.reset(lastSeq)
      return
    }
    for (const r of rows) {
      if (r.routes === 0) continue
      this.rows.push(r)
      this.bytes += r.body.byteLength
    }
    this.top = lastSeq
    this.dropWhile(() => this.size > this.limits.rows || this.bytes > this.limits.bytes)
  }

  /**
   * Forgets rows at or below `seq`: every forwarder has read past them. Rows kept only until they are
   * read die young, which spares the garbage collector promoting a second of traffic to the old
   * generation (measured: at 5,000 events/s that turned into a mark-compact every second or two).
   */
  trimTo (seq: number): void {
    if (seq <= this.floor) return
    this.dropWhile(oldest => oldest.seq <= seq)
    this.floor = Math.max(this.floor, Math.min(seq, this.top))
  }

  /** Drops the oldest rows while `more` holds (the floor follows them), then compacts the array. */
  private dropWhile (more: (oldest: TailRow) => boolean): void {
    while (this.size > 0 && more(this.rows[this.head]!)) {
      const old = this.rows[this.head]!
      this.rows[this.head] = undefined as unknown as TailRow
      this.head++
      this.bytes -= old.body.byteLength
      this.floor = old.seq
    }
    if (this.size === 0) {
      this.rows = []
      this.head = 0
    } else if (this.head >= COMPACT_AT && this.head * 2 >= this.rows.length) {
      this.rows = this.rows.slice(this.head)
      this.head = 0
    }
  }

  /**
   * Rows routed to `slot` with after < seq <= upTo, at most `limit` and about `maxBytes` (the first row
   * always), exactly as the store's reader would answer; null when the tail does not hold that range.
   */
  read (slot: number, after: number, upTo: number, limit: number, maxBytes: number): TailRow[] | null {
    if (after < this.floor || upTo > this.top) return null
    const bit = 2 ** slot
    // Masks reach 2^52 (53 uplinks): beyond 31 bits `&` would truncate them.
    const routed = slot < 31 ? (routes: number) => (routes & bit) !== 0 : (routes: number) => Math.floor(routes / bit) % 2 === 1
    const out: TailRow[] = []
    let bytes = 0
    // Binary search for the first row after `after`.
    let lo = this.head
    let hi = this.rows.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.rows[mid]!.seq <= after) lo = mid + 1
      else hi = mid
    }
    for (let i = lo; i < this.rows.length && out.length < limit; i++) {
      const r = this.rows[i]!
      if (r.seq > upTo) break
      if (!routed(r.routes)) continue
      bytes += r.body.byteLength
      if (bytes > maxBytes && out.length > 0) break
      out.push(r)
    }
    return out
  }
}
