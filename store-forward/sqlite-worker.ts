// The SQLite worker thread. One writer owns the write connection (group commit: every request is
// one transaction, and the main thread sends the next one only after this one's reply); readers
// open read-only connections for backlog pages and admin queries.
import { parentPort, workerData } from 'node:worker_threads'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import {
  payloadFingerprint, sameFingerprint,
  SCHEMA_VERSION, FaultSlot, unpackAppends,
  type WorkerInit, type Envelope, type Reply, type Request, type AppendItem,
  type AckItem, type DeadLetterItem, type InitResult, type UplinkInit, type UplinkState, type StoredRow,
  type StatsResult, type PackedRenderedPage, REFUSED_FULL, packRows, type WriterState, type CommitResult, type MaintainResult,
  type ClockStep, type DropReason, type DeadLetterRow, type QuotaInit, type RetainedRow, type RetainedLoadResult,
} from './protocol.js'
import { routingFields } from './event-fields.js'
import { renderJsonBatchDirect } from '../gateway/event-wire.js'
import { compileFilter } from './route.js'
import { BufferPool } from './buffer-pool.js'
import { addDeviceRow, listDeviceRows, removeDeviceRow, setDeviceEnabled } from './devices-table.js'

// nativeBinding: set by a single-executable build (see WorkerRuntime in worker-client.ts).
const init = workerData as WorkerInit & { nativeBinding?: string }
const port = parentPort
if (port === null) throw new Error('sqlite-worker must run as a worker thread')

/** Options that point better-sqlite3 at an addon loaded by path, or nothing for its own lookup. */
const bindingOptions = ((): Database.Options => {
  if (init.nativeBinding === undefined) return {}
  const addon = { exports: {} }
  process.dlopen(addon, init.nativeBinding)
  // better-sqlite3 accepts the loaded addon object too; its types only declare the path form.
  return { nativeBinding: addon.exports as string }
})()

const faults = init.faults === null ? null : new Int32Array(init.faults)

/**
 * Largest number of rows one commit deletes: deletes share transactions with live appends, so a big
 * cursor jump (a drained backlog) must not make the next acks wait for one huge delete.
 */
const DELETE_CHUNK = 4_096
/** The same bound for a commit that carries devices' events: their acknowledgements wait for its fsync. */
const DELETE_CHUNK_LIVE = 1_024
/**
 * Dedup keys a commit looks at for expired ones beyond twice the keys it adds: the sweep passes
 * every key faster than new keys arrive, while no single commit reads or deletes many.
 */
const DEDUP_SWEEP_SLACK = 256
/** Below every dedup key (a zero-length blob sorts first). */
const NO_KEY = Buffer.alloc(0)
/**
 * The clock floor is written at most this often (ms): it only has to keep a clock-less box from
 * starting far in the past, and writing it with every commit would add a page to every commit (flash wear).
 */
const FLOOR_PERSIST_INTERVAL = 10_000
/** Rows looked at per step when policy removes the oldest events (quota, TTL, lag). */
const DROP_SCAN = 2_000
/** Bytes an event row costs beyond its body (row header, key, b-tree cell, dedup entry), for quota estimates. */
const ROW_OVERHEAD = 64
/**
 * After this long without a commit the writer hands its page cache back (PRAGMA shrink_memory; the
 * quiet gateway's malloc_trim then returns it to the system). Ingesting a backlog fills the 4 MiB
 * cache: the writer's malloc arena held 7.0 MiB afterwards, 3.3 once the cache was handed back. The
 * first commit after reads the pages it needs again, from the OS page cache.
 */
const CACHE_IDLE_MS = 5_000
/** The reserve file, deleted when the disk fills so that deletes and checkpoints can run. */
export const RESERVE_FILE = 'gridgate.reserve'

/** The ingest time below which an event's TTL-effective time is below `cutoff`, given the clock steps. */
export function rawCutoff (cutoff: number, steps: readonly ClockStep[]): number {
  // effective(x) = x + sum of deltaMs over steps with beforeMs >= x; monotone in x.
  const sorted = [...steps].sort((a, b) => a.beforeMs - b.beforeMs)
  let shift = sorted.reduce((n, s) => n + s.deltaMs, 0)
  let lo = -Infinity
  for (const st of sorted) {
    // x in (lo, st.beforeMs]: effective = x + shift.
    const r = cutoff - shift
    if (r <= st.beforeMs + 1) return Math.max(r, lo === -Infinity ? r : lo + 1)
    lo = st.beforeMs
    shift -= st.deltaMs
  }
  return Math.max(cutoff, lo === -Infinity ? cutoff : lo + 1)
}

const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ingest_ms INTEGER NOT NULL,
  routes INTEGER NOT NULL,
  size INTEGER NOT NULL,
  body BLOB NOT NULL
);
CREATE TABLE uplinks (
  name TEXT PRIMARY KEY,
  slot INTEGER NOT NULL UNIQUE,
  cursor INTEGER NOT NULL,
  created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE dedup (
  key BLOB PRIMARY KEY,
  seq INTEGER NOT NULL,
  event_id TEXT NOT NULL,
  at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  uplink TEXT NOT NULL,
  seq INTEGER NOT NULL,
  ingest_ms INTEGER NOT NULL,
  reason TEXT NOT NULL,
  status INTEGER,
  at_ms INTEGER NOT NULL,
  body BLOB NOT NULL
);
CREATE INDEX dead_letters_uplink ON dead_letters (uplink, id);
`

/**
 * Migrations, applied in order in one transaction each: MIGRATIONS[n] takes a store from version
 * n + 1 to n + 2 (version 1 is SCHEMA above).
 */
const MIGRATIONS: readonly string[] = [
  // 1 → 2: broker state that is not events (retained messages) and the device registry.
  `
CREATE TABLE retained (
  topic TEXT PRIMARY KEY,
  payload BLOB NOT NULL,
  qos INTEGER NOT NULL,
  properties TEXT,
  updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL,
  publish TEXT NOT NULL,
  subscribe TEXT NOT NULL,
  enabled INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
`,
  // 2 → 3: a dedup key is the sender's message number (MQTT packet id, CoAP MID) without the payload,
  // so a reused number replaces its entry and the table stays as small as the senders' id spaces; the
  // payload's fingerprint is kept beside it to tell a retransmission from a new message.
  `
ALTER TABLE dedup ADD COLUMN fp BLOB;
`,
  // 3 → 4: no index on the dedup keys' age. Keeping it cost every event an index entry written and
  // later deleted; expired keys are now found by sweeping the keys in order (Writer.sweepDedup).
  `
DROP INDEX IF EXISTS dedup_at;
`,
]

function sqliteCode (err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined
}

function isCorruption (err: unknown): boolean {
  const code = sqliteCode(err)
  return code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB' || (code?.startsWith('SQLITE_CORRUPT_') ?? false)
}

/**
 * Page size of a new store (an existing one keeps its own). A commit writes every page it touched, in
 * full, to the WAL and again to the database at the checkpoint: with events from many devices each
 * commit touches one dedup-index leaf per event, so 4 KiB pages meant ~7 KiB written per 200-byte event.
 */
const PAGE_SIZE = 1024
/** How long a connection waits for a lock another one holds (ms). */
const BUSY_TIMEOUT_MS = 5000
/** A PASSIVE checkpoint that took this long (ms) is followed by another before the writer's catch-up. */
const PASSIVE_AGAIN_MS = 2
const MAX_PASSIVE_PASSES = 3

type Checkpointed = NonNullable<MaintainResult['checkpoint']>

/**
 * One wal_checkpoint on db. SQLITE_BUSY (another connection holds a lock or an old snapshot the mode
 * needs) is reported as busy with log -1, not thrown: the next round tries again.
 */
function walCheckpoint (db: Database.Database, mode: Checkpointed['mode']): Checkpointed {
  try {
    const r = (db.pragma(`wal_checkpoint(${mode})`) as Array<{ busy: number, log: number, checkpointed: number }>)[0]!
    return { mode, ...r }
  } catch (err) {
    if (sqliteCode(err) === 'SQLITE_BUSY') return { mode, busy: 1, log: -1, checkpointed: -1 }
    throw err
  }
}

/** Tries of a TRUNCATE that found the reader's routine checkpoint running, TRUNCATE_RETRY_MS apart. */
const TRUNCATE_TRIES = 10
const TRUNCATE_RETRY_MS = 2
const pause = new Int32Array(new SharedArrayBuffer(4))

/**
 * A TRUNCATE checkpoint (the WAL passed walMaxBytes). Only one checkpoint runs at a time: one that
 * meets the reader's routine checkpoint gets SQLITE_BUSY at once, and the WAL would stay past the
 * bound until the next commit. It tries again for up to about 20 ms (the reader's copy takes a few).
 */
function truncateWal (db: Database.Database): Checkpointed {
  let r = walCheckpoint(db, 'TRUNCATE')
  for (let i = 1; i < TRUNCATE_TRIES && r.log === -1; i++) {
    Atomics.wait(pause, 0, 0, TRUNCATE_RETRY_MS)
    r = walCheckpoint(db, 'TRUNCATE')
  }
  return r
}

function configure (db: Database.Database, readonly: boolean): void {
  if (!readonly) db.pragma('journal_mode = WAL')
  // better-sqlite3 is built with SQLITE_DEFAULT_WAL_SYNCHRONOUS=1: a connection that opens a file
  // already in WAL mode starts at NORMAL. Set it explicitly every time (DESIGN.md "Store").
  db.pragma(`synchronous = ${init.sync === 'full' ? 'FULL' : 'NORMAL'}`)
  // 4 MiB page cache per connection (the default is ~2 MiB with 4 KiB pages; set it so it is known).
  db.pragma('cache_size = -4096')
  db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`)
  db.pragma('foreign_keys = OFF')
}

interface UplinkRuntime {
  name: string
  cursor: number
  /** Events and body bytes routed to this uplink above its cursor. */
  events: number
  bytes: number
  maxLag: { bytes?: number | undefined, ageMs?: number | undefined } | undefined
}

class Writer {
  db!: Database.Database
  private stmts!: ReturnType<Writer['prepare']>
  private uplinks = new Map<number, UplinkRuntime>()
  /** Cursor ranges (lo, hi] whose rows may now be deletable, worked off DELETE_CHUNK rows per commit. */
  private deleteWork: Array<{ lo: number, hi: number }> = []
  private maxPageCount = 0
  /**
   * When the last commit started (performance.now()), and whether the page cache was handed back
   * since. Opening counts as a commit: it counts the rows, which fills the cache too.
   */
  private lastCommitAt = performance.now()
  private cacheShrunk = false
  private pageSize = 4096
  private persistedFloor = 0
  /** The last dedup key the sweep for expired keys looked at; null: it starts again at the first key. */
  private dedupSweptTo: Uint8Array | null = null
  /** Row counts, counted once at open and then kept in step with every committed transaction. */
  private rows = 0
  private deadLetterRows = 0
  /** Dead letters per uplink name, kept like deadLetterRows (restored on rollback). */
  private dlByUplink = new Map<string, number>()
  /** Changes made by the transaction under way; applied only after COMMIT. */
  private delta = { rows: 0, deadLetters: 0 }
  private drops: WriterState['drops'] = []
  private deadLetterDrops: WriterState['deadLetterDrops'] = []
  /** Cursors and counters as they were before the transaction under way, restored on ROLLBACK. */
  private saved: Map<number, { cursor: number, events: number, bytes: number }> | null = null
  private full = false
  /** Set when SQLite reported SQLITE_FULL (or the disk is below minFreeDisk); cleared by maintain() once space is back. */
  private diskFull = false
  private steps: ClockStep[] = []
  private diskFaultOn = false
  private readonly quota: QuotaInit | undefined = init.quota
  private readonly reservePath = path.join(path.dirname(init.path), RESERVE_FILE)

  open (): { created: boolean, unclean: boolean, quickCheck: string | null, movedAside: string | null } {
    try {
      return { ...this.openOnce(), movedAside: null }
    } catch (err) {
      if (!isCorruption(err)) throw err
      const movedAside = moveAside(init.path)
      return { ...this.openOnce(), movedAside }
    }
  }

  private openOnce (): { created: boolean, unclean: boolean, quickCheck: string | null } {
    const existed = fs.existsSync(init.path)
    const db = new Database(init.path, bindingOptions)
    try {
      if (!existed) db.pragma(`page_size = ${PAGE_SIZE}`)
      configure(db, false)
      // The checkpointer (maintain) decides when the WAL is copied back, not every commit's size.
      db.pragma('wal_autocheckpoint = 0')
      const version = db.pragma('user_version', { simple: true }) as number
      if (version > SCHEMA_VERSION) {
        throw Object.assign(new Error(`store schema version ${version} is newer than this gridgate supports (${SCHEMA_VERSION})`), { code: 'GG_ERR_STORE_VERSION' })
      }
      let created = false
      if (version === 0) {
        // A fresh file, or one from before any schema: create everything in one transaction.
        db.transaction(() => {
          db.exec(SCHEMA)
          for (const m of MIGRATIONS) db.exec(m)
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('storeid', randomUUID())
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('clean', '1')
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('floor_ms', '0')
          db.pragma(`user_version = ${SCHEMA_VERSION}`)
        })()
        created = true
      } else {
        // An older store: each migration in its own transaction, the version moving with it.
        for (let v = version; v < SCHEMA_VERSION; v++) {
          db.transaction(() => {
            db.exec(MIGRATIONS[v - 1]!)
            db.pragma(`user_version = ${v + 1}`)
          })()
        }
      }
      const clean = (db.prepare("SELECT value FROM meta WHERE key = 'clean'").pluck().get() as string | undefined) === '1'
      const unclean = existed && !created && !clean
      let quickCheck: string | null = null
      if (unclean) {
        // Only after an unclean stop: quick_check reads the whole file.
        const rows = db.pragma('quick_check') as Array<{ quick_check: string }>
        quickCheck = rows.map(r => r.quick_check).join('; ')
        if (quickCheck !== 'ok') throw Object.assign(new Error(`quick_check: ${quickCheck}`), { code: 'SQLITE_CORRUPT' })
      }
      db.prepare("UPDATE meta SET value = '0' WHERE key = 'clean'").run()
      this.db = db
      this.maxPageCount = db.pragma('max_page_count', { simple: true }) as number
      this.pageSize = db.pragma('page_size', { simple: true }) as number
      this.stmts = this.prepare()
      this.rows = db.prepare('SELECT count(*) FROM events').pluck().get() as number
      this.deadLetterRows = db.prepare('SELECT count(*) FROM dead_letters').pluck().get() as number
      this.dlByUplink = new Map((db.prepare('SELECT uplink, count(*) AS n FROM dead_letters GROUP BY uplink').all() as Array<{ uplink: string, n: number }>).map(r => [r.uplink, r.n]))
      const steps = db.prepare("SELECT value FROM meta WHERE key = 'clock_steps'").pluck().get() as string | undefined
      this.steps = steps === undefined ? [] : JSON.parse(steps) as ClockStep[]
      this.ensureReserve()
      return { created, unclean, quickCheck }
    } catch (err) {
      db.close()
      throw err
    }
  }

  private prepare () {
    const db = this.db
    return {
      insert: db.prepare('INSERT INTO events (ingest_ms, routes, size, body) VALUES (?, ?, ?, ?)'),
      deleteOne: db.prepare('DELETE FROM events WHERE seq = ?'),
      insertedSeq: db.prepare('SELECT last_insert_rowid()').pluck(),
      dedupGet: db.prepare('SELECT seq, event_id AS eventId, fp FROM dedup WHERE key = ? AND at_ms >= ?'),
      dedupPut: db.prepare('INSERT OR REPLACE INTO dedup (key, seq, event_id, at_ms, fp) VALUES (?, ?, ?, ?, ?)'),
      dedupSweepEnd: db.prepare('SELECT max(key) FROM (SELECT key FROM dedup WHERE key > ? ORDER BY key LIMIT ?)').pluck(),
      dedupSweep: db.prepare('DELETE FROM dedup WHERE key > ? AND key <= ? AND at_ms < ?'),
      setCursor: db.prepare('UPDATE uplinks SET cursor = ? WHERE slot = ? AND cursor < ?'),
      deleteRange: db.prepare('DELETE FROM events WHERE seq > ? AND seq <= ? AND (routes & ?) = 0'),
      deleteUpTo: db.prepare('DELETE FROM events WHERE seq <= ?'),
      rangeCount: db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM events WHERE seq > ? AND seq <= ? AND (routes & ?) != 0'),
      oldestRows: db.prepare('SELECT seq, ingest_ms AS ingestMs, routes, size FROM events WHERE seq > ? ORDER BY seq LIMIT ?'),
      routedRows: db.prepare('SELECT seq, ingest_ms AS ingestMs, size FROM events WHERE seq > ? AND (routes & ?) != 0 ORDER BY seq LIMIT ?'),
      oldestRouted: db.prepare('SELECT ingest_ms FROM events WHERE seq > ? AND (routes & ?) != 0 ORDER BY seq LIMIT 1'),
      deadLetter: db.prepare('INSERT INTO dead_letters (uplink, seq, ingest_ms, reason, status, at_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      oldestDeadLetters: db.prepare('SELECT id, uplink, length(body) AS size FROM dead_letters ORDER BY id LIMIT ?'),
      expiredDeadLetters: db.prepare('SELECT uplink, count(*) AS n FROM dead_letters WHERE ingest_ms < ? GROUP BY uplink'),
      deleteExpiredDeadLetters: db.prepare('DELETE FROM dead_letters WHERE ingest_ms < ?'),
      setFloor: db.prepare("UPDATE meta SET value = ? WHERE key = 'floor_ms' AND CAST(value AS INTEGER) < ?"),
      setSteps: db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('clock_steps', ?)"),
      pageCount: db.prepare('PRAGMA page_count').pluck(),
      freelistCount: db.prepare('PRAGMA freelist_count').pluck(),
      totalChanges: db.prepare('SELECT total_changes()').pluck(),
    }
  }

  initUplinks (wanted: UplinkInit[], nowMs: number): Omit<InitResult, 'uncleanShutdown' | 'quickCheck' | 'movedAside' | 'created' | 'synchronous' | 'journalMode'> {
    const db = this.db
    const lastSeq = (db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'events'").pluck().get() as number | undefined) ?? 0
    const existing = db.prepare('SELECT name, slot, cursor FROM uplinks').all() as Array<{ name: string, slot: number, cursor: number }>
    const wantedNames = new Set(wanted.map(u => u.name))
    const removedUplinks: InitResult['removedUplinks'] = []
    db.transaction(() => {
      for (const u of existing) {
        if (wantedNames.has(u.name)) continue
        const backlog = db.prepare('SELECT count(*) FROM events WHERE seq > ? AND (routes & ?) != 0').pluck().get(u.cursor, 2 ** u.slot) as number
        removedUplinks.push({ name: u.name, backlogEvents: backlog })
        db.prepare('DELETE FROM uplinks WHERE name = ?').run(u.name)
        // The removed uplink's bit must no longer pin rows: clear it everywhere.
        db.prepare('UPDATE events SET routes = routes & ~? WHERE (routes & ?) != 0').run(2 ** u.slot, 2 ** u.slot)
      }
      const used = new Set((db.prepare('SELECT slot FROM uplinks').pluck().all() as number[]))
      for (const u of wanted) {
        if (existing.some(e => e.name === u.name)) continue
        let slot = 0
        while (used.has(slot)) slot++
        used.add(slot)
        if (u.startFrom === 'oldest') {
          // Everything still in the store that its filter wants is routed to it too.
          db.prepare('INSERT INTO uplinks (name, slot, cursor, created_ms) VALUES (?, ?, ?, ?)').run(u.name, slot, 0, nowMs)
          this.routeExisting(slot, u)
        } else {
          // A new uplink starts at the newest event (DESIGN.md "Store").
          db.prepare('INSERT INTO uplinks (name, slot, cursor, created_ms) VALUES (?, ?, ?, ?)').run(u.name, slot, lastSeq, nowMs)
        }
      }
    })()
    if (removedUplinks.length > 0) this.deletePassed()
    const rows = db.prepare('SELECT name, slot, cursor FROM uplinks ORDER BY slot').all() as Array<{ name: string, slot: number, cursor: number }>
    this.uplinks.clear()
    const uplinks: UplinkState[] = []
    for (const r of rows) {
      const b = db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, min(ingest_ms) AS oldest FROM events WHERE seq > ? AND (routes & ?) != 0')
        .get(r.cursor, 2 ** r.slot) as { n: number, bytes: number, oldest: number | null }
      this.uplinks.set(r.slot, { name: r.name, cursor: r.cursor, events: b.n, bytes: b.bytes, maxLag: wanted.find(w => w.name === r.name)?.maxLag })
      const dl = db.prepare('SELECT count(*) FROM dead_letters WHERE uplink = ?').pluck().get(r.name) as number
      uplinks.push({ name: r.name, slot: r.slot, cursor: r.cursor, backlogEvents: b.n, backlogBytes: b.bytes, oldestMs: b.oldest, deadLetters: dl })
    }
    const storeId = db.prepare("SELECT value FROM meta WHERE key = 'storeid'").pluck().get() as string
    const floorMs = Number(db.prepare("SELECT value FROM meta WHERE key = 'floor_ms'").pluck().get())
    this.persistedFloor = floorMs
    return { storeId, floorMs, lastSeq, uplinks, removedUplinks }
  }

  /** startFrom: oldest — sets the new uplink's bit on every stored event its filter matches. */
  private routeExisting (slot: number, u: UplinkInit): void {
    const bit = 2 ** slot
    const f = u.filter
    if (f === undefined || (f.types === undefined && f.subjects === undefined)) {
      this.db.prepare('UPDATE events SET routes = routes | ?').run(bit)
      return
    }
    const match = compileFilter(f)
    const page = this.db.prepare('SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 1000')
    const set = this.db.prepare('UPDATE events SET routes = routes | ? WHERE seq = ?')
    let after = 0
    for (;;) {
      const rows = page.all(after) as Array<{ seq: number, body: Uint8Array }>
      if (rows.length === 0) break
      for (const r of rows) {
        const e = routingFields(r.body)
        if (match(e.type, e.subject)) set.run(bit, r.seq)
      }
      after = rows[rows.length - 1]!.seq
    }
  }

  /**
   * Once, after uplinks were removed: rows whose every remaining routed uplink has passed them
   * (their last claim was the removed uplink's) are deleted.
   */
  private deletePassed (): void {
    const rows = this.db.prepare('SELECT slot, cursor FROM uplinks').all() as Array<{ slot: number, cursor: number }>
    const pending = rows.map(r => `((routes & ${2 ** r.slot}) != 0 AND seq > ${r.cursor})`)
    this.rows -= this.db.prepare(`DELETE FROM events WHERE NOT (${pending.length === 0 ? '0' : pending.join(' OR ')})`).run().changes
  }

  /** One transaction: cursor moves first (they free room), then the quota decision, inserts, dead letters. */
  commit (appends: AppendItem[], acks: AckItem[], deadLetters: DeadLetterItem[], floorMs: number, nowMs: number, retained: RetainedRow[] = []): CommitResult {
    this.lastCommitAt = performance.now()
    this.cacheShrunk = false
    const seqs = new Float64Array(appends.length)
    const duplicates: CommitResult['duplicates'] = []
    this.transaction(() => {
      const s = this.stmts
      for (const a of acks) this.moveCursor(a.slot, a.seq)
      this.workOffDeletes(appends.length > 0 ? DELETE_CHUNK_LIVE : DELETE_CHUNK)
      let incoming = 0
      for (const a of appends) incoming += a.body.byteLength + ROW_OVERHEAD
      const admit = this.makeRoom(incoming)
      const windowStart = nowMs - init.dedupWindowMs
      for (let i = 0; i < appends.length; i++) {
        const a = appends[i]!
        const fp = a.dedupFp ?? (a.dedupKey !== undefined && a.dedupPayload !== undefined ? payloadFingerprint(a.dedupPayload) : undefined)
        if (a.dedupKey !== undefined && a.dedupCheck === true) {
          const hit = s.dedupGet.get(a.dedupKey, windowStart) as { seq: number, eventId: string, fp: Uint8Array | null } | undefined
          if (hit !== undefined && sameFingerprint(hit.fp, fp, a.dedupPayload)) {
            seqs[i] = hit.seq
            duplicates.push([i, hit.eventId])
            continue
          }
        }
        if (!admit) {
          seqs[i] = REFUSED_FULL
          continue
        }
        const seq = Number(s.insert.run(a.ingestMs, a.routes, a.body.byteLength, a.body).lastInsertRowid)
        if (a.routes === 0) {
          // No uplink wants it: committed (and acknowledged) but nothing will ever forward it.
          s.deleteOne.run(seq)
        } else {
          this.delta.rows++
          for (const [slot, u] of this.uplinks) {
            if ((a.routes & 2 ** slot) !== 0) { u.events++; u.bytes += a.body.byteLength }
          }
        }
        if (a.dedupKey !== undefined) s.dedupPut.run(a.dedupKey, seq, a.eventId, a.ingestMs, fp ?? null)
        seqs[i] = seq
      }
      for (const d of deadLetters) {
        s.deadLetter.run(d.uplink, d.seq, d.ingestMs, d.reason, d.status, nowMs, d.body)
        this.dlAdjust(d.uplink, 1)
      }
      if (retained.length > 0) this.writeRetained(retained)
      this.enforceLagBytes()
      this.sweepDedup(windowStart, 2 * appends.length + DEDUP_SWEEP_SLACK)
      const floorDue = floorMs - this.persistedFloor >= FLOOR_PERSIST_INTERVAL
      if (floorDue) s.setFloor.run(String(floorMs), floorMs)
      this.faultsBeforeCommit()
      return () => { if (floorDue) this.persistedFloor = floorMs }
    })
    const wal = this.checkpointIfLarge()
    return { seqs, duplicates, state: this.state(wal) }
  }

  /**
   * Runs fn in a write transaction. On failure everything it did is undone, including the in-memory
   * cursors and counters; SQLITE_FULL marks the disk full and applies store.whenFull.
   */
  private transaction (fn: () => (() => void) | void): void {
    const db = this.db
    this.delta = { rows: 0, deadLetters: 0 }
    this.saved = new Map([...this.uplinks].map(([slot, u]) => [slot, { cursor: u.cursor, events: u.events, bytes: u.bytes }]))
    const deleteWork = this.deleteWork.map(w => ({ ...w }))
    const drops = this.drops.length
    const dlDrops = this.deadLetterDrops.length
    const dlByUplink = new Map(this.dlByUplink)
    this.applyDiskFault()
    db.exec('BEGIN IMMEDIATE')
    try {
      const after = fn()
      db.exec('COMMIT')
      this.rows += this.delta.rows
      this.deadLetterRows += this.delta.deadLetters
      if (typeof after === 'function') after()
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK')
      for (const [slot, v] of this.saved) {
        const u = this.uplinks.get(slot)
        if (u !== undefined) { u.cursor = v.cursor; u.events = v.events; u.bytes = v.bytes }
      }
      this.deleteWork = deleteWork
      this.drops.length = drops
      this.deadLetterDrops.length = dlDrops
      this.dlByUplink = dlByUplink
      if (isDiskFull(err)) this.onDiskFull()
      throw err
    } finally {
      this.saved = null
    }
  }

  /**
   * Deletes the expired keys among the next `limit` dedup keys after the last one looked at, in key
   * order, starting again at the first key after the last. Expired keys never match anyway (lookups
   * check the time); this keeps the table from holding keys of senders that went away. Every key is
   * looked at once per pass, and a pass takes table size / limit commits.
   */
  private sweepDedup (cutoff: number, limit: number): void {
    const s = this.stmts
    const from = this.dedupSweptTo ?? NO_KEY
    const to = s.dedupSweepEnd.get(from, limit) as Uint8Array | null
    if (to === null) {
      this.dedupSweptTo = null
      return
    }
    s.dedupSweep.run(from, to, cutoff)
    this.dedupSweptTo = to
  }

  /** The disk (or max_page_count) is full: free the reserve so deletes and checkpoints still run. */
  private onDiskFull (): void {
    this.diskFull = true
    this.full = true
    try { fs.rmSync(this.reservePath, { force: true }) } catch {}
    if (this.quota?.whenFull === 'drop-oldest') {
      // Make room for the devices' retries now; the failed batch itself was not acknowledged.
      try {
        this.transaction(() => { this.dropOldest(Math.max(this.quota!.maxBytes / 100, 64 * 1024)) })
      } catch {}
    }
  }

  private ensureReserve (): void {
    const want = this.quota?.reserveBytes ?? 0
    if (want <= 0) return
    try {
      if (fs.statSync(this.reservePath).size >= want) return
    } catch {}
    try {
      // Written, not truncated to size: a sparse file would reserve nothing.
      const fd = fs.openSync(this.reservePath, 'w')
      try {
        const chunk = Buffer.alloc(Math.min(want, 1024 * 1024))
        for (let done = 0; done < want; done += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, want - done))
        fs.fsyncSync(fd)
      } finally {
        fs.closeSync(fd)
      }
    } catch {
      try { fs.rmSync(this.reservePath, { force: true }) } catch {}
    }
  }

  private applyDiskFault (): void {
    if (faults === null) return
    const on = Atomics.load(faults, FaultSlot.diskFull) === 1
    if (on === this.diskFaultOn) return
    this.diskFaultOn = on
    if (on) this.db.pragma(`max_page_count = ${this.db.pragma('page_count', { simple: true }) as number}`)
    else this.db.pragma(`max_page_count = ${this.maxPageCount}`)
  }

  /** Pages in use (not on the free list), in bytes. */
  private usedPages (): number {
    // Once per commit: prepared once (db.pragma() prepares a statement on every call).
    const pages = this.stmts.pageCount.get() as number
    const free = this.stmts.freelistCount.get() as number
    return (pages - free) * this.pageSize
  }

  private walBytes (): number {
    try { return fs.statSync(`${init.path}-wal`).size } catch { return 0 }
  }

  /**
   * Whether `incoming` bytes of new events may be stored. The data may use maxBytes minus the WAL's
   * share (walMaxBytes, kept by the checkpointer), so pages in use plus WAL stay under maxBytes.
   * drop-oldest makes room by removing the oldest events; reject-new refuses.
   */
  private makeRoom (incoming: number): boolean {
    const q = this.quota
    if (q === undefined) return true
    const budget = q.maxBytes - q.walMaxBytes
    const over = this.usedPages() + incoming - budget
    if (over <= 0 && !this.diskFull) {
      this.full = false
      return true
    }
    this.full = true
    if (q.whenFull === 'reject-new') return false
    // Free a little more than needed (1% of the quota) so the next commits do not each drop a few rows.
    // On a full disk, free at least what comes in, so the file need not grow.
    const freed = this.dropOldest(Math.max(over, incoming) + q.maxBytes / 100)
    return freed > 0 || over <= 0
  }

  /**
   * Removes the oldest events, in sequence order, while `more` says so (given the row and the bytes
   * freed so far); counts what each uplink had not yet received as drops with `reason`, and moves the
   * cursors of the uplinks that were behind past them. Returns the bytes freed.
   */
  private removeOldest (reason: DropReason, more: (row: { ingestMs: number }, freed: number) => boolean): number {
    let freed = 0
    let upTo = 0
    const perSlot = new Map<number, number>()
    scan: for (;;) {
      const rows = this.stmts.oldestRows.all(upTo, DROP_SCAN) as Array<{ seq: number, ingestMs: number, routes: number, size: number }>
      for (const r of rows) {
        if (!more(r, freed)) break scan
        freed += r.size + ROW_OVERHEAD
        upTo = r.seq
        for (const [slot, u] of this.uplinks) {
          if ((r.routes & 2 ** slot) !== 0 && r.seq > u.cursor) {
            perSlot.set(slot, (perSlot.get(slot) ?? 0) + 1)
            u.events--
            u.bytes -= r.size
          }
        }
      }
      if (rows.length < DROP_SCAN) break
    }
    if (upTo > 0) {
      this.delta.rows -= this.stmts.deleteUpTo.run(upTo).changes
      for (const [slot, u] of this.uplinks) {
        if (u.cursor < upTo) { this.stmts.setCursor.run(upTo, slot, upTo); u.cursor = upTo }
      }
      for (const [slot, n] of perSlot) this.drops.push({ slot, reason, events: n })
    }
    return freed
  }

  /** Removes the oldest events (then dead letters) totalling at least `need` bytes; counts drops per uplink. */
  private dropOldest (need: number): number {
    let freed = this.removeOldest('quota', (_row, sofar) => sofar < need)
    // Dead letters count toward the quota too: the oldest go once no event is left to drop.
    while (freed < need) {
      const rows = this.stmts.oldestDeadLetters.all(DROP_SCAN) as Array<{ id: number, uplink: string, size: number }>
      if (rows.length === 0) break
      const counts = new Map<string, number>()
      let lastId = 0
      for (const r of rows) {
        freed += r.size + ROW_OVERHEAD
        lastId = r.id
        counts.set(r.uplink, (counts.get(r.uplink) ?? 0) + 1)
        if (freed >= need) break
      }
      this.db.prepare('DELETE FROM dead_letters WHERE id <= ?').run(lastId)
      for (const [uplink, count] of counts) {
        this.dlAdjust(uplink, -count)
        this.deadLetterDrops.push({ uplink, reason: 'quota', count })
      }
    }
    return freed
  }

  /** maxLag.bytes: an uplink whose backlog passed it skips its oldest events (reason `lag`). */
  private enforceLagBytes (): void {
    for (const [slot, u] of this.uplinks) {
      const limit = u.maxLag?.bytes
      if (limit === undefined || u.bytes <= limit) continue
      // Skip down to 90% of the limit, so this is not repeated for every commit.
      const need = u.bytes - Math.floor(limit * 0.9)
      let skipped = 0
      let to = u.cursor
      while (skipped < need) {
        const rows = this.stmts.routedRows.all(to, 2 ** slot, DROP_SCAN) as Array<{ seq: number, size: number }>
        if (rows.length === 0) break
        for (const r of rows) {
          skipped += r.size
          to = r.seq
          if (skipped >= need) break
        }
      }
      this.skip(slot, to, 'lag')
    }
  }

  private dlAdjust (uplink: string, n: number): void {
    this.delta.deadLetters += n
    this.dlByUplink.set(uplink, (this.dlByUplink.get(uplink) ?? 0) + n)
  }

  /** Moves an uplink's cursor to `to` because policy removed what lies below it; counted as drops. */
  private skip (slot: number, to: number, reason: DropReason): void {
    const u = this.uplinks.get(slot)
    if (u === undefined || to <= u.cursor) return
    const before = u.events
    this.moveCursor(slot, to)
    if (before - u.events > 0) this.drops.push({ slot, reason, events: before - u.events })
  }

  private moveCursor (slot: number, seq: number): void {
    const u = this.uplinks.get(slot)
    if (u === undefined || seq <= u.cursor) return
    // Exact: rows of this uplink above its cursor are never deleted, so they are all still here.
    const passed = this.stmts.rangeCount.get(u.cursor, seq, 2 ** slot) as { n: number, bytes: number }
    u.events -= passed.n
    u.bytes -= passed.bytes
    this.stmts.setCursor.run(seq, slot, seq)
    this.deleteWork.push({ lo: u.cursor, hi: seq })
    u.cursor = seq
  }

  /**
   * A row becomes deletable exactly when the last uplink it is routed to moves past it, so only the
   * range an uplink just crossed needs looking at. Within (lo, hi], the uplinks still behind a row
   * are those whose cursor is below it; split the range at their cursors so each piece has one mask.
   */
  private workOffDeletes (budget = DELETE_CHUNK): void {
    while (budget > 0 && this.deleteWork.length > 0) {
      const w = this.deleteWork[0]!
      const hi = Math.min(w.hi, w.lo + budget)
      const cuts = [...this.uplinks.values()].map(u => u.cursor).filter(c => c > w.lo && c < hi).sort((a, b) => a - b)
      let lo = w.lo
      for (const cut of [...cuts, hi]) {
        let behind = 0
        for (const [slot, u] of this.uplinks) if (u.cursor < cut) behind |= 2 ** slot
        this.delta.rows -= this.stmts.deleteRange.run(lo, cut, behind).changes
        lo = cut
      }
      budget -= hi - w.lo
      if (hi >= w.hi) this.deleteWork.shift()
      else w.lo = hi
    }
  }

  /**
   * Regular upkeep (about once a second): TTL, maxLag.age, the disk's free space and the reserve
   * file, clock steps, and a checkpoint (PASSIVE; TRUNCATE past walMaxBytes).
   */
  maintain (nowMs: number, steps: ClockStep[]): MaintainResult {
    const q = this.quota
    let diskFree: number | null = null
    try {
      const st = fs.statfsSync(path.dirname(init.path))
      diskFree = st.bavail * st.bsize
    } catch {}
    if (q !== undefined && diskFree !== null) {
      const reserveMissing = q.reserveBytes > 0 && !fs.existsSync(this.reservePath)
      if (diskFree < q.minFreeDisk) {
        if (!this.diskFull) this.full = true
        this.diskFull = true
      } else if (this.diskFull && !this.diskFaultOn) {
        // Space is back: re-create the reserve first, then admit again.
        if (reserveMissing && diskFree >= q.minFreeDisk + q.reserveBytes) this.ensureReserve()
        if (!(q.reserveBytes > 0 && !fs.existsSync(this.reservePath)) || diskFree >= q.minFreeDisk + q.reserveBytes) this.diskFull = false
      } else if (reserveMissing && diskFree >= q.minFreeDisk + q.reserveBytes) {
        this.ensureReserve()
      }
    }
    if (this.diskFaultOn && faults !== null && Atomics.load(faults, FaultSlot.diskFull) === 0) this.diskFull = false
    const newSteps = steps.filter(s => s.deltaMs > 0)
    try {
      this.transaction(() => {
        if (newSteps.length > 0) {
          this.steps.push(...newSteps)
          this.stmts.setSteps.run(JSON.stringify(this.steps))
        }
        if (q !== undefined && q.ttlMs > 0) this.expire(rawCutoff(nowMs - q.ttlMs, this.steps))
        for (const [slot, u] of this.uplinks) {
          const age = u.maxLag?.ageMs
          if (age === undefined) continue
          const cutoff = rawCutoff(nowMs - age, this.steps)
          let to = u.cursor
          for (;;) {
            const rows = this.stmts.routedRows.all(to, 2 ** slot, DROP_SCAN) as Array<{ seq: number, ingestMs: number }>
            const old = rows.filter(r => r.ingestMs < cutoff)
            if (old.length > 0) to = old[old.length - 1]!.seq
            if (old.length < rows.length || rows.length === 0) break
          }
          this.skip(slot, to, 'lag')
        }
        this.workOffDeletes()
        if (q !== undefined && !this.diskFull && this.usedPages() <= q.maxBytes - q.walMaxBytes) this.full = false
      })
    } catch (err) {
      if (!isDiskFull(err)) throw err
    }
    // The routine PASSIVE checkpoint runs on the reader's connection (Store.maintain), so copying the
    // WAL back never holds up a commit; here only a WAL past walMaxBytes is truncated.
    const checkpoint = this.walBytes() > (q?.walMaxBytes ?? Infinity) ? truncateWal(this.db) : null
    const oldest = [...this.uplinks].map(([slot, u]) => ({
      slot,
      ingestMs: u.events === 0 ? null : (this.stmts.oldestRouted.pluck().get(u.cursor, 2 ** slot) as number | undefined) ?? null,
    }))
    // Last, after this round's own reads.
    const cacheReleased = !this.cacheShrunk && performance.now() - this.lastCommitAt >= (init.cacheIdleMs ?? CACHE_IDLE_MS)
    if (cacheReleased) {
      this.db.pragma('shrink_memory')
      this.cacheShrunk = true
    }
    return { state: this.state(), oldest, checkpoint, diskFree, cacheReleased }
  }

  /** TTL: events and dead letters stamped before `before` (clock steps already applied) are removed. */
  private expire (before: number): void {
    this.removeOldest('ttl', (row) => row.ingestMs < before)
    const expired = this.stmts.expiredDeadLetters.all(before) as Array<{ uplink: string, n: number }>
    if (expired.length > 0) {
      this.stmts.deleteExpiredDeadLetters.run(before)
      for (const e of expired) {
        this.dlAdjust(e.uplink, -e.n)
        this.deadLetterDrops.push({ uplink: e.uplink, reason: 'ttl', count: e.n })
      }
    }
    // Steps older than every stored time stamp no longer matter.
    const minIngest = Math.min(
      (this.db.prepare('SELECT ingest_ms FROM events ORDER BY seq LIMIT 1').pluck().get() as number | undefined) ?? Infinity,
      (this.db.prepare('SELECT min(ingest_ms) FROM dead_letters').pluck().get() as number | null) ?? Infinity,
    )
    const kept = this.steps.filter(s => s.beforeMs >= minIngest)
    if (kept.length !== this.steps.length) {
      this.steps = kept
      this.stmts.setSteps.run(JSON.stringify(kept))
    }
  }

  /**
   * The end of the routine checkpoint (Store.checkpoint): copies the frames committed while the
   * reader's PASSIVE checkpoint ran, between two commits. Under steady ingest a commit always lands
   * during the reader's copy, so the WAL is never wholly copied when the next commit starts and SQLite
   * never rewinds it: the file grew to walMaxBytes, and the writer's TRUNCATE then held commits for
   * 40-150 ms every few seconds (5,000 events/s on this machine). Copied here, with no transaction
   * open, the WAL is whole in the database and the next commit starts it from its beginning (same file,
   * same size: no metadata to journal at the next fsync), unless a read that began before this copy is
   * still on it; then the round after tries again.
   *
   * A RESTART checkpoint on the reader's connection did this before. It held the writer's lock, and
   * the writer's busy handler slept in steps of 1, 2, 5, 10 and 15 ms to wait it out: during a drain a
   * 12 ms RESTART cost a live commit 18.5 ms, a 26 ms one 34 ms. Here nothing waits on a lock.
   */
  catchUpWal (): Checkpointed {
    return walCheckpoint(this.db, 'PASSIVE')
  }

  /** TRUNCATE past walMaxBytes; returns the WAL's size afterwards (one stat when nothing is due). */
  private checkpointIfLarge (): number {
    const limit = this.quota?.walMaxBytes
    const wal = this.walBytes()
    if (limit === undefined || wal <= limit) return wal
    truncateWal(this.db)
    return this.walBytes()
  }

  private state (walBytes = this.walBytes()): WriterState {
    const drops = this.drops
    const deadLetterDrops = this.deadLetterDrops
    this.drops = []
    this.deadLetterDrops = []
    return {
      uplinks: [...this.uplinks].map(([slot, u]) => ({ slot, cursor: u.cursor, events: u.events, bytes: u.bytes })),
      drops,
      deadLetterDrops,
      full: this.full,
      usedBytes: this.usedPages(),
      walBytes,
      deadLetters: this.deadLetterRows,
      deadLettersByUplink: Object.fromEntries(this.dlByUplink),
      events: this.rows,
      changes: this.stmts.totalChanges.get() as number,
    }
  }

  dlqList (uplink: string | null, afterId: number, limit: number): DeadLetterRow[] {
    return this.db.prepare(`SELECT id, uplink, seq, ingest_ms AS ingestMs, at_ms AS atMs, reason, status, body FROM dead_letters
      WHERE id > ? ${uplink === null ? '' : 'AND uplink = ?'} ORDER BY id LIMIT ?`)
      .all(...(uplink === null ? [afterId, limit] : [afterId, uplink, limit])) as DeadLetterRow[]
  }

  private dlqWhere (uplink: string | null, ids: number[] | null): { sql: string, args: unknown[] } {
    const parts: string[] = []
    const args: unknown[] = []
    if (uplink !== null) { parts.push('uplink = ?'); args.push(uplink) }
    if (ids !== null) { parts.push(`id IN (${ids.map(() => '?').join(',') || 'NULL'})`); args.push(...ids) }
    return { sql: parts.length === 0 ? '' : `WHERE ${parts.join(' AND ')}`, args }
  }

  /**
   * Re-appends dead letters as new events with their original body (and so their original `id`),
   * routed to their own uplink only, with new sequences; they leave the dead letters in the same
   * transaction. Dead letters of an uplink no longer configured stay where they are.
   */
  dlqReplay (uplink: string | null, ids: number[] | null, ingestMs: number): { replayed: number, skipped: number, lastSeq: number, state: WriterState } {
    let lastSeq = 0
    let replayed = 0
    let skipped = 0
    this.transaction(() => {
      const w = this.dlqWhere(uplink, ids)
      const rows = this.db.prepare(`SELECT id, uplink, body FROM dead_letters ${w.sql} ORDER BY id`).all(...w.args) as Array<{ id: number, uplink: string, body: Uint8Array }>
      const del = this.db.prepare('DELETE FROM dead_letters WHERE id = ?')
      for (const r of rows) {
        const slot = [...this.uplinks].find(([, u]) => u.name === r.uplink)?.[0]
        if (slot === undefined) { skipped++; continue }
        this.stmts.insert.run(ingestMs, 2 ** slot, r.body.byteLength, r.body)
        const u = this.uplinks.get(slot)!
        u.events++
        u.bytes += r.body.byteLength
        lastSeq = Number(this.stmts.insertedSeq.get())
        del.run(r.id)
        this.delta.rows++
        this.dlAdjust(r.uplink, -1)
        replayed++
      }
    })
    return { replayed, skipped, lastSeq, state: this.state() }
  }

  dlqPurge (uplink: string | null, ids: number[] | null): { purged: number, state: WriterState } {
    let purged = 0
    this.transaction(() => {
      const w = this.dlqWhere(uplink, ids)
      const counts = this.db.prepare(`SELECT uplink, count(*) AS n FROM dead_letters ${w.sql} GROUP BY uplink`).all(...w.args) as Array<{ uplink: string, n: number }>
      purged = this.db.prepare(`DELETE FROM dead_letters ${w.sql}`).run(...w.args).changes
      for (const c of counts) this.dlAdjust(c.uplink, -c.n)
    })
    return { purged, state: this.state() }
  }

  private faultsBeforeCommit (): void {
    if (faults === null) return
    if (Atomics.load(faults, FaultSlot.killWriter) === 1) {
      Atomics.store(faults, FaultSlot.killWriter, 0)
      process.exit(70)
    }
    if (Atomics.load(faults, FaultSlot.holdBeforeCommit) === 1) {
      Atomics.store(faults, FaultSlot.holding, 1)
      while (Atomics.load(faults, FaultSlot.holdBeforeCommit) === 1) Atomics.wait(faults, FaultSlot.holdBeforeCommit, 1, 100)
      Atomics.store(faults, FaultSlot.holding, 0)
    }
    if (Atomics.load(faults, FaultSlot.failCommits) > 0) {
      Atomics.sub(faults, FaultSlot.failCommits, 1)
      // Make the failure real: with max_page_count at the current size the next page the
      // transaction needs raises SQLITE_FULL from SQLite itself.
      const pages = this.db.pragma('page_count', { simple: true }) as number
      this.db.pragma(`max_page_count = ${pages}`)
      try {
        this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(`fault-${Date.now()}`, 'x'.repeat(64 * 1024))
        throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })
      } catch (err) {
        // A one-off failed commit, not a full disk: the store's state must not change.
        throw Object.assign(err as Error, { injected: true })
      } finally {
        this.db.pragma(`max_page_count = ${this.diskFaultOn ? pages : this.maxPageCount}`)
      }
    }
  }

  // Retained MQTT messages: broker state, not events (no sequence, no routes, no uplink counters).
  private retainedStatements: { put: Database.Statement, del: Database.Statement } | null = null

  private get retainedStmts (): { put: Database.Statement, del: Database.Statement } {
    this.retainedStatements ??= {
      put: this.db.prepare('INSERT OR REPLACE INTO retained (topic, payload, qos, properties, updated_ms) VALUES (?, ?, ?, ?, ?)'),
      del: this.db.prepare('DELETE FROM retained WHERE topic = ?'),
    }
    return this.retainedStatements
  }

  /** Inside the commit's transaction: an empty payload deletes the topic ([MQTT-3.3.1-10]). */
  private writeRetained (rows: RetainedRow[]): void {
    const s = this.retainedStmts
    for (const r of rows) {
      if (r.payload.byteLength === 0) s.del.run(r.topic)
      else s.put.run(r.topic, r.payload, r.qos, r.properties, r.updatedMs)
    }
  }

  /** Every retained message, at most `max` (the newest); older ones beyond it are deleted. */
  retainedLoad (max: number): RetainedLoadResult {
    let deleted = 0
    const total = this.db.prepare('SELECT count(*) FROM retained').pluck().get() as number
    if (total > max) {
      this.transaction(() => {
        deleted = this.db.prepare('DELETE FROM retained WHERE topic IN (SELECT topic FROM retained ORDER BY updated_ms DESC, topic LIMIT -1 OFFSET ?)').run(max).changes
      })
    }
    const rows = this.db.prepare('SELECT topic, payload, qos, properties, updated_ms AS updatedMs FROM retained ORDER BY updated_ms DESC, topic LIMIT ?').all(max) as RetainedRow[]
    return { rows, deleted }
  }

  stats (): StatsResult {
    const db = this.db
    return {
      events: this.rows,
      deadLetters: this.deadLetterRows,
      pageCount: db.pragma('page_count', { simple: true }) as number,
      pageSize: this.pageSize,
      freelist: db.pragma('freelist_count', { simple: true }) as number,
      walBytes: this.walBytes(),
      usedBytes: this.usedPages(),
      maxBytes: this.quota?.maxBytes ?? null,
      full: this.full,
    }
  }

  close (clean: boolean, floorMs: number): void {
    if (floorMs > 0) this.stmts.setFloor.run(String(floorMs), floorMs)
    if (clean) this.db.prepare("UPDATE meta SET value = '1' WHERE key = 'clean'").run()
    // A clean stop leaves no WAL behind.
    try { this.db.pragma('wal_checkpoint(TRUNCATE)') } catch {}
    this.db.close()
  }
}

function isDiskFull (err: unknown): boolean {
  const code = sqliteCode(err)
  // The injected commit failure is not a full disk: it must not change the store's state.
  if ((err as { injected?: boolean }).injected === true) return false
  return code === 'SQLITE_FULL' || code === 'SQLITE_IOERR_WRITE' || (err as NodeJS.ErrnoException).code === 'ENOSPC'
}

/** Moves a corrupt database, with its -wal and -shm, into corrupt-<time>/ next to it. */
function moveAside (file: string): string {
  const dir = path.join(path.dirname(file), `corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`)
  fs.mkdirSync(dir, { recursive: true })
  for (const suffix of ['', '-wal', '-shm']) {
    if (fs.existsSync(file + suffix)) fs.renameSync(file + suffix, path.join(dir, path.basename(file) + suffix))
  }
  return dir
}

/**
 * How much lower than the process the reader thread runs (nice steps, Linux). Its work is bulk: backlog
 * pages read and rendered for the uplinks, and the routine checkpoint's copy. The main thread (devices'
 * messages) and the writer (their commits) keep the process's priority and get a CPU first when both
 * want one: draining a 1M-event backlog on this 2-core machine left every thread waiting for a CPU about
 * as long as it ran, and live PUBACKs took 14-17 ms (median) during the drain at the same priority and
 * 8 ms with the reader lowered, while the drain kept its pace (scripts/drain-measure.ts). Ten steps
 * still give the reader about a tenth of a CPU that live traffic saturates, so a backlog always drains.
 */
const READER_NICE_STEPS = 10

/**
 * Lowers the calling thread's priority. On Linux the nice value belongs to the thread, and
 * setpriority(PRIO_PROCESS, 0) sets the caller's alone; elsewhere it would be the whole process's, so
 * nothing is done there. Lowering needs no privilege; where it fails anyway the reader runs as it is.
 */
function lowerThreadPriority (steps: number): void {
  if (process.platform !== 'linux') return
  try {
    os.setPriority(0, Math.min(19, os.getPriority(0) + steps))
  } catch {}
}

class Reader {
  private db: Database.Database
  private page: Database.Statement

  constructor () {
    // Read-write only so that it can checkpoint (a read-only connection cannot); it writes nothing else.
    this.db = new Database(init.path, { ...bindingOptions, fileMustExist: true })
    configure(this.db, true)
    // Short paged queries, never an iterator held across awaits: a long reader starves checkpoints.
    this.page = this.db.prepare('SELECT seq, ingest_ms AS ingestMs, body FROM events WHERE seq > ? AND seq <= ? AND (routes & ?) != 0 ORDER BY seq LIMIT ?')
  }

  /**
   * Copies committed WAL frames back into the database file. On this connection, not the writer's:
   * in WAL mode a PASSIVE checkpoint runs beside the writer, and at 5,000 events/s a second's worth of
   * WAL (tens of MiB) took the writer's commits 10-70 ms to wait out. What commits landed meanwhile
   * the writer copies itself (Writer.catchUpWal), so that its next commit can rewind the WAL.
   */
  checkpoint (): Checkpointed {
    let passive: Checkpointed
    let passes = 0
    let took: number
    do {
      const started = performance.now()
      passive = walCheckpoint(this.db, 'PASSIVE')
      took = performance.now() - started
      passes++
      // A long copy leaves as long a stretch of new frames: copy those beside the writer too, so the
      // writer's catch-up has only a moment's worth left.
    } while (passive.busy === 0 && took >= PASSIVE_AGAIN_MS && passes < MAX_PASSIVE_PASSES)
    return passive
  }

  readPage (slot: number, after: number, upTo: number, limit: number, maxBytes: number): StoredRow[] {
    const rows = this.page.all(after, upTo, 2 ** slot, limit) as StoredRow[]
    let bytes = 0
    for (let i = 0; i < rows.length; i++) {
      bytes += rows[i]!.body.byteLength
      if (bytes > maxBytes && i > 0) return rows.slice(0, i)
    }
    return rows
  }

  close (): void { this.db.close() }
}

const writer = init.role === 'writer' ? new Writer() : null
let reader: Reader | null = null
let opened: ReturnType<Writer['open']> | null = null

function handle (req: Request): unknown {
  switch (req.op) {
    case 'init': {
      if (writer === null) {
        lowerThreadPriority(READER_NICE_STEPS)
        reader = new Reader()
        return null
      }
      opened ??= writer.open()
      const synchronous = writer.db.pragma('synchronous', { simple: true }) as number
      const journalMode = writer.db.pragma('journal_mode', { simple: true }) as string
      const result: InitResult = {
        ...writer.initUplinks(req.uplinks, req.nowMs),
        synchronous,
        journalMode,
        uncleanShutdown: opened.unclean,
        quickCheck: opened.quickCheck,
        movedAside: opened.movedAside,
        created: opened.created,
      }
      return result
    }
    case 'commit': {
      if (writer === null) throw new Error('commit on a reader')
      const result = writer.commit(unpackAppends(req.appends), req.acks, req.deadLetters, req.floorMs, req.nowMs, req.retained)
      transferNext = [result.seqs.buffer as ArrayBuffer]
      return result
    }
    case 'maintain':
      if (writer === null) throw new Error('maintain on a reader')
      return writer.maintain(req.nowMs, req.steps)
    case 'catchUpWal':
      if (writer === null) throw new Error('catchUpWal on a reader')
      return writer.catchUpWal()
    case 'dlqList':
      if (writer === null) throw new Error('dlqList on a reader')
      return writer.dlqList(req.uplink, req.afterId, req.limit)
    case 'dlqReplay':
      if (writer === null) throw new Error('dlqReplay on a reader')
      return writer.dlqReplay(req.uplink, req.ids, req.ingestMs)
    case 'dlqPurge':
      if (writer === null) throw new Error('dlqPurge on a reader')
      return writer.dlqPurge(req.uplink, req.ids)
    case 'readPage': {
      if (reader === null) throw new Error('readPage before init on a reader')
      if (req.recycle !== undefined) pages.put(req.recycle)
      const rows = packRows(reader.readPage(req.slot, req.after, req.upTo, req.limit, req.maxBytes), takePageBuffer)
      transferNext = [rows.meta.buffer as ArrayBuffer, rows.data.buffer as ArrayBuffer]
      return rows
    }
    case 'checkpoint':
      if (reader === null) throw new Error('checkpoint before init on a reader')
      return reader.checkpoint()
    case 'readRendered': {
      if (reader === null) throw new Error('readRendered before init on a reader')
      if (req.recycle !== undefined) pages.put(req.recycle)
      const stored = reader.readPage(req.slot, req.after, req.upTo, req.limit, req.maxBytes)
      // The JSON's buffer is its own (from the pool, never Node's), so it is handed over as it is.
      const json = stored.length === 0 ? null : renderJsonBatchDirect(stored, req.storeId, takePageBuffer)
      const page: PackedRenderedPage = { rows: packRows(stored, takePageBuffer), json }
      transferNext = [page.rows.meta.buffer as ArrayBuffer, page.rows.data.buffer as ArrayBuffer]
      if (page.json !== null) transferNext.push(page.json.buffer as ArrayBuffer)
      return page
    }
    case 'stats':
      if (writer === null) throw new Error('stats on a reader')
      return writer.stats()
    case 'retainedLoad':
      if (writer === null) throw new Error('retainedLoad on a reader')
      return writer.retainedLoad(req.max)
    // The device registry (store-forward/devices-table.ts).
    case 'deviceList':
      if (writer === null) throw new Error('deviceList on a reader')
      return listDeviceRows(writer.db)
    case 'deviceAdd':
      if (writer === null) throw new Error('deviceAdd on a reader')
      return addDeviceRow(writer.db, req.device)
    case 'deviceSetEnabled':
      if (writer === null) throw new Error('deviceSetEnabled on a reader')
      return setDeviceEnabled(writer.db, req.id, req.enabled, req.nowMs)
    case 'deviceRemove':
      if (writer === null) throw new Error('deviceRemove on a reader')
      return removeDeviceRow(writer.db, req.id)
    case 'close':
      writer?.close(req.clean, req.floorMs)
      reader?.close()
      return null
  }
}

/** A reader's buffers for pages, handed back by the main thread (store-forward/buffer-pool.ts). */
const pages = new BufferPool()
const takePageBuffer = (bytes: number): ArrayBuffer => pages.take(bytes)

/** Buffers the reply being built hands over instead of copying (set by handle(), taken by the reply). */
let transferNext: ArrayBuffer[] = []


port.on('message', (env: Envelope) => {
  let reply: Reply
  transferNext = []
  try {
    reply = { id: env.id, ok: true, result: handle(env.req) }
  } catch (err) {
    const e = err as Error & { code?: unknown }
    reply = { id: env.id, ok: false, error: { message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) } }
  }
  port.postMessage(reply, reply.ok ? transferNext : [])
})
