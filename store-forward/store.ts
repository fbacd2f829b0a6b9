// The durable log as the main thread sees it: group commit to the writer worker, paged reads from a
// reader worker, per-uplink backlog counters kept incrementally (never count(*) per request).
import { EventEmitter } from 'node:events'
import path from 'node:path'
import type { Logger } from 'pino'
import { GridgateError } from '../gateway/errors.js'
import { WorkerClient } from './worker-client.js'
import {
  FAULT_SLOTS, FaultSlot, REFUSED_FULL, packAppends, unpackRows,
  type AppendItem, type AppendResult, type AckItem, type DeadLetterItem, type InitResult,
  type StoredRow, type StatsResult, type UplinkState, type UplinkInit, type QuotaInit, type ClockStep,
  type CommitResult, type WriterState, type MaintainResult, type DropReason, type DeadLetterRow,
  type RetainedRow, type RetainedLoadResult, type RenderedPage, type PackedRenderedPage, type PackedRows,
} from './protocol.js'
import type { DeviceRow, Request as WorkerRequest } from './protocol.js'
import { Router } from './route.js'
import { RecentTail, type TailLimits, type TailRow } from './tail.js'

export type { AppendItem, AppendResult, StoredRow, UplinkState, InitResult, DeadLetterItem, DropReason, DeadLetterRow, UplinkInit }
export type { RetainedRow, RetainedLoadResult }
export type { DeviceRow }

export interface StoreOptions {
  dataDir: string
  sync: 'full' | 'normal'
  dedupWindowMs: number
  /** Extra wait before a commit starts, to trade latency for fewer writes (0 = none). */
  commitDelayMs: number
  /** The configured uplinks (a bare name = no filter, startFrom newest, no maxLag). */
  uplinks: ReadonlyArray<UplinkInit | string>
  /** Quota, TTL and WAL limits; absent = unbounded (tests of other parts). */
  quota?: QuotaInit
  /** Clock steps seen since the last call (DESIGN.md: a forward step must not expire fresh events). */
  takeClockSteps?: () => ClockStep[]
  /** How often TTL, lag age, free disk and the checkpointer run (ms). */
  maintainIntervalMs?: number
  /** The reader thread stops after this long without work (ms; default READER_IDLE_MS). */
  readerIdleMs?: number
  /** The writer hands its page cache back after this long without a commit (ms; default 5 s, CACHE_IDLE_MS in sqlite-worker.ts). */
  writerCacheIdleMs?: number
  /** The in-memory tail's bounds (default TAIL_LIMITS; tests make them small). */
  tail?: TailOptions
  /** Highest wall time used so far, persisted with every commit (DESIGN.md clock floor). */
  floorMs: () => number
  now: () => number
  log: Logger
  faults: boolean
}

export const STORE_FILE = 'gridgate.db'
/** Largest number of appends in one transaction; the rest wait for the next commit. */
const MAX_APPENDS_PER_COMMIT = 10_000
/** Longest a forwarder's cursor move waits for a commit with appends to share before it commits alone. */
const ACK_COMMIT_DELAY_MS = 50
/** The reader thread stops after this long without a read or a checkpoint to do (see Store.reader). */
const READER_IDLE_MS = 10_000
/** Buffers of delivered pages waiting for the reader's next read at most (two pages in flight: six). */
const MAX_RECYCLED = 8
/** WAL frames (pages) below which the routine checkpoint leaves the rest to the next round instead of asking the writer. */
const CATCH_UP_MIN_FRAMES = 1024
/** Writer restarts allowed within RESTART_WINDOW before the store gives up. */
const MAX_RESTARTS = 5
const RESTART_WINDOW = 60_000

function commitErrorCode (sqliteCode: string | undefined): 'GG_ERR_STORE_FULL' | 'GG_ERR_STORE_UNAVAILABLE' | 'GG_ERR_STORE_COMMIT' {
  if (sqliteCode === 'SQLITE_FULL') return 'GG_ERR_STORE_FULL'
  if (sqliteCode === 'GG_ERR_STORE_UNAVAILABLE') return 'GG_ERR_STORE_UNAVAILABLE'
  return 'GG_ERR_STORE_COMMIT'
}

/** An append refused because the store is full under reject-new (not a failed commit): worth waiting for space. */
export class StoreFullError extends GridgateError {
  constructor () {
    super('GG_ERR_STORE_FULL', 'the store is full (store.whenFull: reject-new); the event was not stored')
  }
}

/** Answers one append: an error (nothing stored), or where it was stored. */
export type AppendCallback = (err: Error | null, result?: AppendResult) => void

interface Pending { item: AppendItem, done: AppendCallback }

/**
 * Calls an append's callback. A callback that throws is a bug in its caller: it surfaces as an
 * uncaught exception, as a throwing promise continuation would, without stopping the other answers.
 */
function answer (p: Pending, err: Error | null, result?: AppendResult): void {
  try {
    p.done(err, result)
  } catch (thrown) {
    queueMicrotask(() => { throw thrown })
  }
}

/**
 * What the in-memory tail of newest events holds at most (store-forward/tail.ts), and how far behind
 * its oldest row a forwarder may read and still count as coming (Store.noForwarderNearTail).
 */
const TAIL_LIMITS: TailOptions = { rows: 8192, bytes: 4 * 1024 * 1024, reach: 1024 }

export interface TailOptions extends TailLimits {
  /** Rows below the tail's oldest within which a forwarder counts as about to read from it. */
  reach: number
}

export interface UplinkCounters {
  name: string
  slot: number
  backlogEvents: number
  backlogBytes: number
  deadLetters: number
  cursor: number
  /** Ingest time of the oldest waiting event, as of the last maintenance round. */
  oldestMs: number | null
  /** Events removed by policy since start, by reason. */
  dropped: Record<DropReason, number>
  /** Dead letters removed by policy since start. */
  deadLettersDropped: number
}

export interface StoreEvents {
  appended: [lastSeq: number]
  ready: [ready: boolean]
  fatal: [err: Error]
  /** Policy moved an uplink's cursor (drop-oldest, TTL, maxLag): its forwarder skips to it. */
  skipped: [slot: number, cursor: number]
  dropped: [uplink: string, reason: DropReason, events: number]
  /** The store admits new events again after having been full. */
  space: []
  full: []
  /**
   * A write transaction committed, with how long it took from the hand-over to the writer thread (ms)
   * (gridgate_store_commits_total, gridgate_store_commit_seconds).
   */
  committed: [ms: number]
  /** A write transaction rolled back (gridgate_store_commit_failures_total). */
  commitFailed: [code: string]
}

export class Store extends EventEmitter<StoreEvents> {
  readonly file: string
  info!: InitResult
  readonly uplinks = new Map<string, UplinkCounters>()
  private writer!: WorkerClient
  /**
   * The reader thread (pages from SQLite, JSON rendering of a backlog, routine checkpoints), started
   * when first needed and stopped after READER_IDLE_MS without work: an idle gateway does without the
   * thread and its SQLite connection (about 10 MB).
   */
  private reader: WorkerClient | null = null
  private readerStarting: Promise<WorkerClient> | null = null
  private readerRequests = 0
  private readerUsedAt = 0
  /** The writer's total_changes() when a routine checkpoint last left nothing in the WAL to copy. */
  private checkpointedChanges = -1
  /** Buffers of pages done with, for the reader thread's next read (recycle()). */
  private recycled: ArrayBuffer[] = []
  private queue: Pending[] = []
  private acks: AckItem[] = []
  private deadLetters: DeadLetterItem[] = []
  private ackWaiters: Array<{ resolve: () => void, reject: (e: Error) => void }> = []
  /** Retained-message writes waiting for the next commit (they share its transaction). */
  private retainedQueue: Array<{ row: RetainedRow, resolve: () => void, reject: (e: Error) => void }> = []
  private committing = false
  /** A commit is due: after store.commitDelay, or at the end of this turn of the event loop. */
  private flushQueued = false
  private ackTimer: NodeJS.Timeout | null = null
  /** Cursor moves waiting alone may start a commit (ACK_COMMIT_DELAY_MS passed, or the store closes). */
  private acksDue = false
  private restarts: number[] = []
  private closing = false
  private _ready = false
  readonly faults: SharedArrayBuffer | null
  lastSeq = 0
  commits = 0
  /** True while new events are refused (reject-new) or admitted only by dropping the oldest. */
  full = false
  usedBytes = 0
  walBytes = 0
  lastCheckpoint: MaintainResult['checkpoint'] = null
  diskFree: number | null = null
  private maintainTimer: NodeJS.Timeout | null = null
  private maintaining = false
  /** Highest sequence each uplink's forwarder acknowledged (by slot), to tell policy skips from deliveries. */
  private readonly ackedTo = new Map<number, number>()
  private router!: Router
  private tail!: RecentTail
  /** Each uplink's latest read position: the tail keeps nothing every forwarder has read past. */
  private readonly readFrom = new Map<number, number>()
  private get tailOptions (): TailOptions { return this.opts.tail ?? TAIL_LIMITS }
  /** Pages served from the in-memory tail / read from SQLite (forwarders keeping up / catching up). */
  tailReads = 0
  /** Times the writer handed its page cache back after a quiet spell. */
  cacheReleases = 0
  storeReads = 0

  private readonly uplinkInits: UplinkInit[]

  constructor (private readonly opts: StoreOptions) {
    super()
    this.uplinkInits = opts.uplinks.map(u => typeof u === 'string' ? { name: u } : u)
    this.file = path.join(opts.dataDir, STORE_FILE)
    this.faults = opts.faults ? new SharedArrayBuffer(FAULT_SLOTS * 4) : null
  }

  get ready (): boolean { return this._ready }

  /** The routes mask of an event (DESIGN.md: routing is decided at ingest, by each uplink's filter). */
  route (type: string, subject: string): number {
    return this.router.mask(type, subject)
  }

  /** Every configured uplink's bit: the routes of an event that every uplink wants. */
  get routesAll (): number {
    let m = 0
    for (const u of this.uplinks.values()) m += 2 ** u.slot
    return m
  }

  async open (): Promise<InitResult> {
    this.info = await this.startWriter()
    for (const u of this.info.uplinks) {
      this.uplinks.set(u.name, {
        name: u.name, slot: u.slot, backlogEvents: u.backlogEvents, backlogBytes: u.backlogBytes, deadLetters: u.deadLetters,
        cursor: u.cursor, oldestMs: u.oldestMs, dropped: { quota: 0, ttl: 0, lag: 0 }, deadLettersDropped: 0,
      })
    }
    this.router = new Router([...this.uplinks.values()].map(u => ({ slot: u.slot, filter: this.uplinkInits.find(x => x.name === u.name)?.filter })))
    this.lastSeq = this.info.lastSeq
    this.tail = new RecentTail(this.tailOptions, this.lastSeq)
    this.setReady(true)
    const every = this.opts.maintainIntervalMs ?? 1000
    this.maintainTimer = setInterval(() => { void this.maintain() }, every)
    this.maintainTimer.unref()
    return this.info
  }

  /** One maintenance round in the writer (TTL, lag age, free disk, reserve, checkpoint). */
  async maintain (): Promise<void> {
    if (this.maintaining || !this._ready || this.closing) return
    this.maintaining = true
    try {
      const r = await this.writer.request<MaintainResult>({ op: 'maintain', nowMs: this.opts.now(), steps: this.opts.takeClockSteps?.() ?? [] })
      for (const o of r.oldest) {
        const u = this.uplinkBySlot(o.slot)
        if (u !== undefined) u.oldestMs = o.ingestMs
      }
      this.diskFree = r.diskFree
      if (r.cacheReleased) this.cacheReleases++
      // Applied as the writer's answer arrives: while the checkpoint below runs (starting the reader
      // thread first, maybe), later writer answers (a commit, a dead-letter purge) bring newer state
      // that this one must not overwrite.
      this.applyState(r.state)
      // A truncation by the writer (WAL past walMaxBytes), else the routine one on the reader.
      this.lastCheckpoint = r.checkpoint ?? await this.checkpoint(r.state.changes)
      this.stopIdleReader()
      // Cursor moves and dead letters may be waiting for a commit that nothing else triggers.
      this.schedule()
    } catch (err) {
      if (!this.closing && this.writer.alive) this.opts.log.warn({ err: (err as Error).message }, 'store maintenance failed; retrying next round')
    } finally {
      this.maintaining = false
    }
  }

  /**
   * The routine checkpoint: a PASSIVE copy on the reader, beside the writer, then the writer copies
   * the frames committed meanwhile (Writer.catchUpWal) so that its next commit rewinds the WAL. None
   * while the writer has changed nothing since one that copied the whole WAL (`changes`: the writer's
   * total_changes() before this round).
   */
  private async checkpoint (changes: number): Promise<MaintainResult['checkpoint']> {
    if (changes === this.checkpointedChanges) return this.lastCheckpoint
    let c = await this.readerRequest<NonNullable<MaintainResult['checkpoint']>>({ op: 'checkpoint' })
    if (c.busy === 0 && c.log >= CATCH_UP_MIN_FRAMES) c = await this.writer.request<NonNullable<MaintainResult['checkpoint']>>({ op: 'catchUpWal' })
    if (c.busy === 0 && c.log >= 0 && c.checkpointed === c.log) this.checkpointedChanges = changes
    return c
  }

  /** Mirrors the writer's counters (the writer is the authority) and reports drops and skips. */
  private applyState (st: WriterState): void {
    for (const c of st.uplinks) {
      const u = this.uplinkBySlot(c.slot)
      if (u === undefined) continue
      // A cursor beyond what this uplink's forwarder acknowledged was moved by policy (drop-oldest, TTL, lag).
      const skipped = c.cursor > u.cursor && c.cursor > (this.ackedTo.get(c.slot) ?? 0)
      u.backlogEvents = c.events
      u.backlogBytes = c.bytes
      u.cursor = Math.max(u.cursor, c.cursor)
      if (skipped) this.emit('skipped', c.slot, c.cursor)
    }
    for (const d of st.drops) {
      const u = this.uplinkBySlot(d.slot)
      if (u === undefined) continue
      u.dropped[d.reason] += d.events
      this.emit('dropped', u.name, d.reason, d.events)
    }
    for (const d of st.deadLetterDrops) {
      const u = this.uplinks.get(d.uplink)
      if (u !== undefined) u.deadLettersDropped += d.count
    }
    for (const u of this.uplinks.values()) u.deadLetters = st.deadLettersByUplink[u.name] ?? 0
    this.usedBytes = st.usedBytes
    this.walBytes = st.walBytes
    if (st.full !== this.full) {
      this.full = st.full
      this.emit(st.full ? 'full' : 'space')
    }
  }

  private async startReader (): Promise<WorkerClient> {
    const reader = new WorkerClient({ role: 'reader', path: this.file, sync: this.opts.sync, dedupWindowMs: this.opts.dedupWindowMs, faults: null })
    try {
      await reader.request({ op: 'init', uplinks: [], nowMs: this.opts.now() })
    } catch (err) {
      await reader.terminate()
      throw err
    }
    this.reader = reader
    return reader
  }

  /** The running reader thread, started now if there is none (again, with a warning, if it died). */
  private readerClient (): Promise<WorkerClient> {
    if (this.reader?.alive === true) return Promise.resolve(this.reader)
    if (this.closing) return Promise.reject(new GridgateError('GG_ERR_STORE_UNAVAILABLE', 'the store is closing'))
    if (this.readerStarting === null) {
      // A reader stopped for idleness is null; one that is there but not alive exited by itself.
      if (this.reader !== null) this.opts.log.warn({ code: 'GG_ERR_STORE_UNAVAILABLE' }, 'store reader thread exited; restarting it')
      this.reader = null
      this.readerStarting = this.startReader().finally(() => { this.readerStarting = null })
    }
    return this.readerStarting
  }

  private async readerRequest<T> (req: WorkerRequest, transfer?: ArrayBuffer[]): Promise<T> {
    const reader = await this.readerClient()
    this.readerRequests++
    try {
      return await reader.request<T>(req, transfer)
    } finally {
      this.readerRequests--
      this.readerUsedAt = Date.now()
    }
  }

  /** Ends the reader thread when it has had nothing to do for READER_IDLE_MS. */
  private stopIdleReader (): void {
    const reader = this.reader
    if (reader === null || this.readerRequests > 0 || this.readerStarting !== null || Date.now() - this.readerUsedAt < (this.opts.readerIdleMs ?? READER_IDLE_MS)) return
    this.reader = null
    this.recycled = []
    void reader.request({ op: 'close', clean: true, floorMs: 0 }).catch(() => {}).then(async () => await reader.terminate())
  }

  private async startWriter (): Promise<InitResult> {
    const writer = new WorkerClient({
      role: 'writer',
      path: this.file,
      sync: this.opts.sync,
      dedupWindowMs: this.opts.dedupWindowMs,
      faults: this.faults,
      ...(this.opts.quota === undefined ? {} : { quota: this.opts.quota }),
      ...(this.opts.writerCacheIdleMs === undefined ? {} : { cacheIdleMs: this.opts.writerCacheIdleMs }),
    })
    this.writer = writer
    try {
      const info = await writer.request<InitResult>({ op: 'init', uplinks: this.uplinkInits, nowMs: this.opts.now() })
      writer.on('exit', (code) => this.onWriterExit(code))
      return info
    } catch (err) {
      await writer.terminate()
      const code = (err as { code?: string }).code
      if (code === 'GG_ERR_STORE_VERSION') throw new GridgateError('GG_ERR_STORE_VERSION', (err as Error).message)
      throw new GridgateError('GG_ERR_DATA_DIR', `cannot open the store ${this.file}: ${(err as Error).message}`, { cause: err })
    }
  }

  private setReady (ready: boolean): void {
    if (this._ready === ready) return
    this._ready = ready
    this.emit('ready', ready)
  }

  private onWriterExit (code: number): void {
    if (this.closing) return
    this.setReady(false)
    this.opts.log.error({ code: 'GG_ERR_STORE_UNAVAILABLE', exitCode: code }, 'store writer exited; pending acks failed, restarting it')
    const now = Date.now()
    this.restarts = this.restarts.filter(t => now - t < RESTART_WINDOW)
    this.restarts.push(now)
    // Everything waiting for this writer fails: nothing was acknowledged, devices retry.
    this.failQueued(new GridgateError('GG_ERR_STORE_UNAVAILABLE', 'the store writer stopped before this event was committed'))
    if (this.restarts.length > MAX_RESTARTS) {
      this.emit('fatal', new GridgateError('GG_ERR_STORE_UNAVAILABLE', `the store writer exited ${this.restarts.length} times within a minute`))
      return
    }
    this.startWriter().then((info) => {
      this.info = info
      this.committing = false
      this.opts.log.info({ storeId: info.storeId }, 'store writer restarted')
      this.setReady(true)
      this.flush()
    }, (err: Error) => this.emit('fatal', err))
  }

  private failQueued (err: Error): void {
    const q = this.queue
    this.queue = []
    for (const p of q) answer(p, err)
  }

  /** Resolves once the event is committed (or recognised as a duplicate within the dedup window). */
  append (item: AppendItem): Promise<AppendResult> {
    return new Promise((resolve, reject) => this.appendWith(item, (err, result) => { if (err === null) resolve(result!); else reject(err) }))
  }

  /**
   * append() with a callback, for the devices' hot path (no promise per message). `done` is called
   * exactly once and never before this returns.
   */
  appendWith (item: AppendItem, done: AppendCallback): void {
    if (!this._ready) {
      const err = new GridgateError('GG_ERR_STORE_UNAVAILABLE')
      queueMicrotask(() => done(err))
      return
    }
    this.queue.push({ item, done })
    this.schedule()
  }

  /**
   * Moves an uplink's cursor; durable with the next commit, whose reply brings the writer's exact
   * backlog counters (events/bytes are only a prompt estimate until then).
   */
  ack (slot: number, seq: number, events: number, bytes: number): Promise<void> {
    const u = this.uplinkBySlot(slot)
    if (u !== undefined && seq > u.cursor) {
      u.backlogEvents = Math.max(0, u.backlogEvents - events)
      u.backlogBytes = Math.max(0, u.backlogBytes - bytes)
    }
    this.ackedTo.set(slot, Math.max(this.ackedTo.get(slot) ?? 0, seq))
    this.acks.push({ slot, seq })
    // A cursor move alone does not start a commit: it rides the next one that appends (a lost move
    // only means a resend), or commits after ACK_COMMIT_DELAY_MS when no device traffic comes.
    return new Promise((resolve, reject) => {
      this.ackWaiters.push({ resolve, reject })
      if (this.ackTimer === null) {
        this.ackTimer = setTimeout(() => { this.ackTimer = null; this.acksDue = true; this.schedule() }, ACK_COMMIT_DELAY_MS)
      }
    })
  }

  deadLetter (item: DeadLetterItem): Promise<void> {
    this.deadLetters.push(item)
    return this.waitCommit()
  }

  private waitCommit (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.ackWaiters.push({ resolve, reject })
      this.schedule()
    })
  }

  private uplinkBySlot (slot: number): UplinkCounters | undefined {
    for (const u of this.uplinks.values()) if (u.slot === slot) return u
    return undefined
  }

  private schedule (): void {
    if (this.committing || this.flushQueued) return
    this.flushQueued = true
    if (this.opts.commitDelayMs > 0) {
      setTimeout(this.flushDue, this.opts.commitDelayMs)
    } else {
      // At the end of this turn of the event loop, not now: the messages read from every socket in
      // this turn share one commit. Started at once, the first would commit alone while the rest
      // waited for it (scenario 2: 35,500 commits of 4.2 events against 31,000 of 4.9, and 10 %
      // less of the gateway's CPU per message).
      setImmediate(this.flushDue)
    }
  }

  private readonly flushDue = (): void => {
    this.flushQueued = false
    this.flush()
  }

  /** Group commit: a commit starts as soon as the previous one ended and work is waiting. */
  private flush (): void {
    if (this.committing || !this.writer.alive || !this._ready) return
    if (this.queue.length === 0 && this.deadLetters.length === 0 && this.retainedQueue.length === 0 && (this.acks.length === 0 || !this.acksDue)) {
      // Cursor moves alone wait for the next commit of devices' messages, or ACK_COMMIT_DELAY_MS: a
      // commit of nothing but cursors costs the writer an fsync while devices' messages queue behind it
      // (measured at saturation: over a quarter of all commits, right after each full-window batch).
      if (this.acks.length > 0) return
      // Nothing left to commit: whoever waits for "the next commit" (close) is done waiting.
      const waiters = this.ackWaiters
      this.ackWaiters = []
      for (const w of waiters) w.resolve()
      return
    }
    const batch = this.queue.length > MAX_APPENDS_PER_COMMIT ? this.queue.splice(0, MAX_APPENDS_PER_COMMIT) : this.queue
    if (batch === this.queue) this.queue = []
    const acks = this.acks
    this.acksDue = false
    const deadLetters = this.deadLetters
    const waiters = this.ackWaiters
    const retained = this.retainedQueue
    this.acks = []
    this.deadLetters = []
    this.ackWaiters = []
    this.retainedQueue = []
    this.committing = true
    const writer = this.writer
    const appends = packAppends(batch.map(p => p.item))
    const sentAt = performance.now()
    writer.request<CommitResult>({
      op: 'commit',
      appends,
      acks,
      deadLetters,
      floorMs: this.opts.floorMs(),
      nowMs: this.opts.now(),
      ...(retained.length === 0 ? {} : { retained: retained.map(r => r.row) }),
    }, [appends.meta.buffer as ArrayBuffer, appends.data.buffer as ArrayBuffer]).then(({ seqs, duplicates, state }) => {
      for (const r of retained) r.resolve()
      this.commits++
      // From the hand-over to the writer thread until its answer: the transaction and its fsync.
      this.emit('committed', performance.now() - sentAt)
      let last = this.lastSeq
      const fresh: TailRow[] = []
      // Each append's answer: refused (the store is full), a duplicate (its original's sequence), or
      // a new row, which alone goes to the tail.
      const answers = new Array<Error | AppendResult>(batch.length)
      for (let i = 0, dup = 0; i < batch.length; i++) {
        const seq = seqs[i]!
        if (seq === REFUSED_FULL) {
          answers[i] = new StoreFullError()
        } else if (dup < duplicates.length && duplicates[dup]![0] === i) {
          answers[i] = { seq, duplicate: true, eventId: duplicates[dup++]![1] }
        } else {
          const p = batch[i]!
          answers[i] = { seq, duplicate: false }
          last = Math.max(last, seq)
          fresh.push({ seq, ingestMs: p.item.ingestMs, body: p.item.body, routes: p.item.routes })
        }
      }
      this.applyState(state)
      for (const w of waiters) w.resolve()
      this.committing = false
      if (last > this.lastSeq) {
        this.tail.append(this.lastSeq, last, fresh)
        this.lastSeq = last
        if (this.noForwarderNearTail()) this.tail.reset(last)
        this.emit('appended', last)
      }
      // The next commit is handed to the writer before the answers run: acknowledging a batch's
      // devices takes the main thread a while, and the writer need not wait for it.
      this.flush()
      for (let i = 0; i < batch.length; i++) {
        const a = answers[i]!
        if (a instanceof Error) answer(batch[i]!, a)
        else answer(batch[i]!, null, a)
      }
    }, (err: Error & { code?: string }) => {
      const wrapped = err instanceof GridgateError ? err : new GridgateError(commitErrorCode(err.code), err.message, { cause: err })
      this.emit('commitFailed', wrapped.code)
      for (const p of batch) answer(p, wrapped)
      // A retained write is answered like an append: its publish is not acknowledged, the device resends.
      for (const r of retained) r.reject(wrapped)
      // Cursor moves and dead letters are not the devices' data: keep them for the next commit.
      if (writer.alive) {
        this.acks.unshift(...acks)
        this.acksDue = true
        this.deadLetters.unshift(...deadLetters)
        this.ackWaiters.unshift(...waiters)
        this.opts.log.warn({ code: wrapped.code, err: err.message }, 'store commit failed; its events were not acknowledged')
      } else {
        for (const w of waiters) w.reject(wrapped)
      }
      this.committing = false
      if (writer.alive) setImmediate(() => this.flush())
    })
  }

  /**
   * Rows routed to the uplink in (after, lastSeq], in order. Bounded by the last sequence whose
   * commit this thread has seen, so a row is never delivered (and uncounted) before it was counted.
   */
  async readPage (slot: number, after: number, limit: number, maxBytes: number): Promise<StoredRow[]> {
    const recent = this.readTail(slot, after, limit, maxBytes)
    if (recent !== null) return recent
    this.storeReads++
    return this.readStoredPage(slot, after, limit, maxBytes)
  }

  /**
   * readPage for a sink that sends CloudEvents JSON batches: a page from SQLite comes rendered by the
   * reader thread (json), one from the in-memory tail does not (the sink renders its bodies).
   */
  async readRenderedPage (slot: number, after: number, limit: number, maxBytes: number): Promise<RenderedPage> {
    const recent = this.readTail(slot, after, limit, maxBytes)
    if (recent !== null) return { rows: recent, json: null }
    this.storeReads++
    const recycle = this.takeRecycled()
    const page = await this.readerRequest<PackedRenderedPage>({ op: 'readRendered', slot, after, upTo: this.lastSeq, limit, maxBytes, storeId: this.info.storeId, recycle }, recycle)
    const { rows, page: unpacked } = unpackRows(page.rows)
    // The rows hold what they need from meta: it goes back with the next read.
    this.recycle(page.rows.meta.buffer as ArrayBuffer)
    const json = page.json
    let released = false
    return {
      rows,
      json,
      release: () => {
        if (released) return
        released = true
        if (json !== null) this.recycle(json.buffer as ArrayBuffer)
        if (!unpacked.viewed) this.recycle(unpacked.data)
      },
    }
  }

  /**
   * A buffer of a page this thread is done with, handed back to the reader thread with its next read
   * (store-forward/buffer-pool.ts). Beyond MAX_RECYCLED waiting, or detached already, it is left alone.
   */
  private recycle (b: ArrayBuffer): void {
    if (b.byteLength === 0 || this.recycled.length >= MAX_RECYCLED || this.recycled.includes(b)) return
    this.recycled.push(b)
  }

  private takeRecycled (): ArrayBuffer[] {
    const out = this.recycled.filter(b => b.byteLength > 0)
    this.recycled = []
    return out
  }

  private readTail (slot: number, after: number, limit: number, maxBytes: number): StoredRow[] | null {
    // A forwarder never reads below its position again (a retried batch keeps its own rows).
    this.readFrom.set(slot, Math.max(this.readFrom.get(slot) ?? 0, after))
    let floor = Infinity
    for (const u of this.uplinks.values()) floor = Math.min(floor, this.readFrom.get(u.slot) ?? 0)
    if (floor !== Infinity) this.tail.trimTo(floor)
    const recent = this.tail.read(slot, after, this.lastSeq, limit, maxBytes)
    if (recent !== null) {
      this.tailReads++
      // Every forwarder reads from the tail: the reader's next page may be far off, and the buffers
      // would be held until then.
      if (this.recycled.length > 0 && floor !== Infinity && floor >= this.tail.from) this.recycled = []
    }
    return recent
  }

  /**
   * Whether every uplink's forwarder reads from further below the tail's oldest row than `reach` (its
   * uplink is down, or it drains a backlog), so none will be served from the tail soon. Then the tail
   * holds nothing beyond the newest commit: kept, it would be 4 MiB of the newest bodies held through
   * an outage for the last moments of the drain, which can read them from SQLite like the rest. A
   * forwarder within reach keeps it: its position is where its last read started, one page behind
   * where it reads next, and it is about to come back. One that has not read yet counts as within.
   */
  private noForwarderNearTail (): boolean {
    if (this.tail.size === 0 || this.uplinks.size === 0) return false
    const below = this.tail.from - this.tailOptions.reach
    for (const u of this.uplinks.values()) {
      const at = this.readFrom.get(u.slot)
      if (at === undefined || at >= below) return false
    }
    return true
  }

  /** What the in-memory tail holds (rows, body bytes). */
  get tailHeld (): { rows: number, bytes: number } { return { rows: this.tail.size, bytes: this.tail.heldBytes } }

  /** readPage from SQLite itself (the reader thread), never from the in-memory tail. */
  async readStoredPage (slot: number, after: number, limit: number, maxBytes: number): Promise<StoredRow[]> {
    const recycle = this.takeRecycled()
    const packed = await this.readerRequest<PackedRows>({ op: 'readPage', slot, after, upTo: this.lastSeq, limit, maxBytes, recycle }, recycle)
    const { rows } = unpackRows(packed)
    this.recycle(packed.meta.buffer as ArrayBuffer)
    return rows
  }

  /**
   * Writes (or, with an empty payload, deletes) a retained MQTT message; resolves once committed. It
   * rides the next group commit, so it costs no transaction of its own under load.
   */
  writeRetained (row: RetainedRow): Promise<void> {
    if (!this._ready) return Promise.reject(new GridgateError('GG_ERR_STORE_UNAVAILABLE'))
    return new Promise((resolve, reject) => {
      this.retainedQueue.push({ row, resolve, reject })
      this.schedule()
    })
  }

  /** Every retained message (at most `max`, the newest; the store deletes older ones beyond it). */
  loadRetained (max: number): Promise<RetainedLoadResult> {
    return this.writer.request<RetainedLoadResult>({ op: 'retainedLoad', max })
  }

  stats (): Promise<StatsResult> {
    return this.writer.request<StatsResult>({ op: 'stats' })
  }

  /** Dead letters in id order, optionally of one uplink. */
  listDeadLetters (uplink: string | null, afterId = 0, limit = 100): Promise<DeadLetterRow[]> {
    return this.writer.request<DeadLetterRow[]>({ op: 'dlqList', uplink, afterId, limit })
  }

  /** Re-appends dead letters (original body and id, new sequence) for their own uplink only. */
  async replayDeadLetters (uplink: string | null, ids: number[] | null = null): Promise<{ replayed: number, skipped: number }> {
    const r = await this.writer.request<{ replayed: number, skipped: number, lastSeq: number, state: WriterState }>({ op: 'dlqReplay', uplink, ids, ingestMs: this.opts.now() })
    this.applyState(r.state)
    if (r.lastSeq > this.lastSeq) {
      // Replayed rows did not pass through the group commit: the tail no longer holds every new row.
      this.tail.reset(r.lastSeq)
      this.lastSeq = r.lastSeq
      this.emit('appended', r.lastSeq)
    }
    return { replayed: r.replayed, skipped: r.skipped }
  }

  async purgeDeadLetters (uplink: string | null, ids: number[] | null = null): Promise<{ purged: number }> {
    const r = await this.writer.request<{ purged: number, state: WriterState }>({ op: 'dlqPurge', uplink, ids })
    this.applyState(r.state)
    return { purged: r.purged }
  }

  // ---- device registry (table `devices`; gateway/devices.ts) ----------------------------------------

  /** Every registry device, by id. Worker errors keep their GG_ERR_DEVICE_* code. */
  listDevices (): Promise<DeviceRow[]> {
    return this.deviceRequest(this.writer.request<DeviceRow[]>({ op: 'deviceList' }))
  }

  /** Adds a device (refused with GG_ERR_DEVICE_EXISTS when the id is taken); durable when it resolves. */
  addDevice (device: DeviceRow): Promise<DeviceRow> {
    return this.deviceRequest(this.writer.request<DeviceRow>({ op: 'deviceAdd', device }))
  }

  /** Enables or disables a device (GG_ERR_DEVICE_NOT_FOUND for an unknown id). */
  setDeviceEnabled (id: string, enabled: boolean): Promise<DeviceRow> {
    return this.deviceRequest(this.writer.request<DeviceRow>({ op: 'deviceSetEnabled', id, enabled, nowMs: this.opts.now() }))
  }

  /** Removes a device (GG_ERR_DEVICE_NOT_FOUND for an unknown id). */
  removeDevice (id: string): Promise<void> {
    return this.deviceRequest(this.writer.request<void>({ op: 'deviceRemove', id }))
  }

  private async deviceRequest<T> (p: Promise<T>): Promise<T> {
    try {
      return await p
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code === 'GG_ERR_DEVICE_EXISTS' || code === 'GG_ERR_DEVICE_NOT_FOUND') throw new GridgateError(code, (err as Error).message)
      if (code === 'GG_ERR_STORE_UNAVAILABLE') throw new GridgateError(code, (err as Error).message)
      throw err
    }
  }

  /** Whether the reader thread is running (it starts when first needed and stops when idle). */
  get readerRunning (): boolean {
    return this.reader?.alive === true
  }

  /** Test-only: ends the reader thread, as a crash in it would. */
  async killReader (): Promise<void> {
    await (await this.readerClient()).terminate()
  }

  /** Test-only fault switches (DESIGN.md "Engineering rules"); null unless faults were enabled. */
  fault (slot: keyof typeof FaultSlot, value: number): void {
    if (this.faults === null) throw new GridgateError('GG_ERR_FAULTS_FORBIDDEN')
    const arr = new Int32Array(this.faults)
    Atomics.store(arr, FaultSlot[slot], value)
    Atomics.notify(arr, FaultSlot[slot])
  }

  faultValue (slot: keyof typeof FaultSlot): number {
    if (this.faults === null) return 0
    return Atomics.load(new Int32Array(this.faults), FaultSlot[slot])
  }

  /** Waits for queued work to commit, then closes both connections (marking the stop clean). */
  async close (): Promise<void> {
    if (this.closing) return
    this.acksDue = true
    while (this.committing || this.queue.length > 0 || this.acks.length > 0 || this.retainedQueue.length > 0) {
      if (!this.writer.alive) break
      await new Promise<void>((resolve) => {
        this.ackWaiters.push({ resolve, reject: () => resolve() })
        this.schedule()
      })
    }
    this.closing = true
    if (this.maintainTimer !== null) clearInterval(this.maintainTimer)
    if (this.ackTimer !== null) clearTimeout(this.ackTimer)
    this.setReady(false)
    try {
      if (this.writer.alive) await this.writer.request({ op: 'close', clean: true, floorMs: this.opts.floorMs() })
    } finally {
      await this.writer.terminate()
      await this.readerStarting?.catch(() => {})
      const reader = this.reader
      this.reader = null
      if (reader !== null) {
        await reader.request({ op: 'close', clean: true, floorMs: 0 }).catch(() => {})
        await reader.terminate()
      }
    }
  }
}
