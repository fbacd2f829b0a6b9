// The SQLite worker thread. One writer owns the write connection (group commit: every request is
// one transaction, and the main thread sends the next one only after this one's reply); readers
// open read-only connections for backlog pages and admin queries.
import { parentPort, workerData } from 'node:worker_threads'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import {
  SCHEMA_VERSION, FaultSlot,
  type WorkerInit, type Envelope, type Reply, type Request, type AppendItem, type AppendResult,
  type AckItem, type DeadLetterItem, type InitResult, type UplinkInit, type UplinkState, type StoredRow,
  type StatsResult,
} from './protocol.js'

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

/** Largest number of rows one commit deletes, so a large cursor jump cannot make one huge transaction. */
const DELETE_CHUNK = 20_000
/**
 * Expired dedup keys deleted per commit beyond twice the keys it adds, so pruning keeps pace with
 * any ingest rate while no single commit does a large delete.
 */
const DEDUP_PRUNE_SLACK = 256
/**
 * The clock floor is written at most this often (ms): it only has to keep a clock-less box from
 * starting far in the past, and writing it with every commit would add a page to every commit (flash wear).
 */
const FLOOR_PERSIST_INTERVAL = 10_000

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
CREATE INDEX dedup_at ON dedup (at_ms);
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

function sqliteCode (err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined
}

function isCorruption (err: unknown): boolean {
  const code = sqliteCode(err)
  return code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB' || (code?.startsWith('SQLITE_CORRUPT_') ?? false)
}

function configure (db: Database.Database, readonly: boolean): void {
  if (!readonly) db.pragma('journal_mode = WAL')
  // better-sqlite3 is built with SQLITE_DEFAULT_WAL_SYNCHRONOUS=1: a connection that opens a file
  // already in WAL mode starts at NORMAL. Set it explicitly every time (DESIGN.md "Store").
  db.pragma(`synchronous = ${init.sync === 'full' ? 'FULL' : 'NORMAL'}`)
  // 4 MiB page cache per connection (the default is ~2 MiB with 4 KiB pages; set it so it is known).
  db.pragma('cache_size = -4096')
  db.pragma('busy_timeout = 5000')
  db.pragma('foreign_keys = OFF')
}

class Writer {
  db!: Database.Database
  private stmts!: ReturnType<Writer['prepare']>
  private uplinks = new Map<number, { name: string, cursor: number }>()
  /** Cursor ranges (lo, hi] whose rows may now be deletable, worked off DELETE_CHUNK rows per commit. */
  private deleteWork: Array<{ lo: number, hi: number }> = []
  private maxPageCount = 0
  private persistedFloor = 0
  /** Row counts, counted once at open and then kept in step with every committed transaction. */
  private rows = 0
  private deadLetterRows = 0
  /** Changes made by the transaction under way; applied to the counts only after COMMIT. */
  private delta = { rows: 0, deadLetters: 0 }

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
      configure(db, false)
      const version = db.pragma('user_version', { simple: true }) as number
      if (version > SCHEMA_VERSION) {
        throw Object.assign(new Error(`store schema version ${version} is newer than this gridgate supports (${SCHEMA_VERSION})`), { code: 'GG_ERR_STORE_VERSION' })
      }
      let created = false
      if (version === 0) {
        // A fresh file, or one from before any schema: create everything in one transaction.
        db.transaction(() => {
          db.exec(SCHEMA)
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('storeid', randomUUID())
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('clean', '1')
          db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('floor_ms', '0')
          db.pragma(`user_version = ${SCHEMA_VERSION}`)
        })()
        created = true
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
      this.stmts = this.prepare()
      this.rows = db.prepare('SELECT count(*) FROM events').pluck().get() as number
      this.deadLetterRows = db.prepare('SELECT count(*) FROM dead_letters').pluck().get() as number
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
      dedupGet: db.prepare('SELECT seq, event_id AS eventId FROM dedup WHERE key = ? AND at_ms >= ?'),
      dedupPut: db.prepare('INSERT OR REPLACE INTO dedup (key, seq, event_id, at_ms) VALUES (?, ?, ?, ?)'),
      dedupPrune: db.prepare('DELETE FROM dedup WHERE key IN (SELECT key FROM dedup WHERE at_ms < ? ORDER BY at_ms LIMIT ?)'),
      setCursor: db.prepare('UPDATE uplinks SET cursor = ? WHERE slot = ? AND cursor < ?'),
      deleteRange: db.prepare('DELETE FROM events WHERE seq > ? AND seq <= ? AND (routes & ?) = 0'),
      deadLetter: db.prepare('INSERT INTO dead_letters (uplink, seq, ingest_ms, reason, status, at_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      setFloor: db.prepare("UPDATE meta SET value = ? WHERE key = 'floor_ms' AND CAST(value AS INTEGER) < ?"),
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
        // A new uplink starts at the newest event (DESIGN.md "Store").
        db.prepare('INSERT INTO uplinks (name, slot, cursor, created_ms) VALUES (?, ?, ?, ?)').run(u.name, slot, lastSeq, nowMs)
      }
    })()
    if (removedUplinks.length > 0) this.deletePassed()
    const rows = db.prepare('SELECT name, slot, cursor FROM uplinks ORDER BY slot').all() as Array<{ name: string, slot: number, cursor: number }>
    this.uplinks.clear()
    const uplinks: UplinkState[] = []
    for (const r of rows) {
      this.uplinks.set(r.slot, { name: r.name, cursor: r.cursor })
      const b = db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, min(ingest_ms) AS oldest FROM events WHERE seq > ? AND (routes & ?) != 0')
        .get(r.cursor, 2 ** r.slot) as { n: number, bytes: number, oldest: number | null }
      const dl = db.prepare('SELECT count(*) FROM dead_letters WHERE uplink = ?').pluck().get(r.name) as number
      uplinks.push({ name: r.name, slot: r.slot, cursor: r.cursor, backlogEvents: b.n, backlogBytes: b.bytes, oldestMs: b.oldest, deadLetters: dl })
    }
    const storeId = db.prepare("SELECT value FROM meta WHERE key = 'storeid'").pluck().get() as string
    const floorMs = Number(db.prepare("SELECT value FROM meta WHERE key = 'floor_ms'").pluck().get())
    this.persistedFloor = floorMs
    return { storeId, floorMs, lastSeq, uplinks, removedUplinks }
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

  commit (appends: AppendItem[], acks: AckItem[], deadLetters: DeadLetterItem[], floorMs: number, nowMs: number): AppendResult[] {
    const db = this.db
    const s = this.stmts
    const results: AppendResult[] = []
    this.delta = { rows: 0, deadLetters: 0 }
    db.exec('BEGIN IMMEDIATE')
    try {
      const windowStart = nowMs - init.dedupWindowMs
      for (const a of appends) {
        if (a.dedupKey !== undefined && a.dedupCheck === true) {
          const hit = s.dedupGet.get(a.dedupKey, windowStart) as { seq: number, eventId: string } | undefined
          if (hit !== undefined) {
            results.push({ seq: hit.seq, duplicate: true, eventId: hit.eventId })
            continue
          }
        }
        const seq = Number(s.insert.run(a.ingestMs, a.routes, a.body.byteLength, a.body).lastInsertRowid)
        this.delta.rows++
        if (a.dedupKey !== undefined) s.dedupPut.run(a.dedupKey, seq, a.eventId, a.ingestMs)
        results.push({ seq, duplicate: false })
      }
      for (const d of deadLetters) {
        s.deadLetter.run(d.uplink, d.seq, d.ingestMs, d.reason, d.status, nowMs, d.body)
        this.delta.deadLetters++
      }
      for (const a of acks) this.moveCursor(a.slot, a.seq)
      this.workOffDeletes()
      // An index seek on dedup_at: next to nothing when no key has expired.
      s.dedupPrune.run(windowStart, 2 * appends.length + DEDUP_PRUNE_SLACK)
      const floorDue = floorMs - this.persistedFloor >= FLOOR_PERSIST_INTERVAL
      if (floorDue) s.setFloor.run(String(floorMs), floorMs)
      this.faultsBeforeCommit()
      db.exec('COMMIT')
      if (floorDue) this.persistedFloor = floorMs
      this.rows += this.delta.rows
      this.deadLetterRows += this.delta.deadLetters
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK')
      // Cursor moves in a rolled-back transaction never happened: forget their delete work.
      this.reloadCursors()
      throw err
    }
    return results
  }

  private moveCursor (slot: number, seq: number): void {
    const u = this.uplinks.get(slot)
    if (u === undefined || seq <= u.cursor) return
    this.stmts.setCursor.run(seq, slot, seq)
    this.deleteWork.push({ lo: u.cursor, hi: seq })
    u.cursor = seq
  }

  /**
   * A row becomes deletable exactly when the last uplink it is routed to moves past it, so only the
   * range an uplink just crossed needs looking at. Within (lo, hi], the uplinks still behind a row
   * are those whose cursor is below it; split the range at their cursors so each piece has one mask.
   */
  private workOffDeletes (): void {
    let budget = DELETE_CHUNK
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

  private reloadCursors (): void {
    this.deleteWork = []
    const rows = this.db.prepare('SELECT slot, cursor FROM uplinks').all() as Array<{ slot: number, cursor: number }>
    for (const r of rows) {
      const u = this.uplinks.get(r.slot)
      if (u !== undefined) u.cursor = r.cursor
    }
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
      } finally {
        this.db.pragma(`max_page_count = ${this.maxPageCount}`)
      }
    }
  }

  stats (): StatsResult {
    const db = this.db
    let walBytes = 0
    try { walBytes = fs.statSync(`${init.path}-wal`).size } catch {}
    return {
      events: this.rows,
      deadLetters: this.deadLetterRows,
      pageCount: db.pragma('page_count', { simple: true }) as number,
      pageSize: db.pragma('page_size', { simple: true }) as number,
      freelist: db.pragma('freelist_count', { simple: true }) as number,
      walBytes,
    }
  }

  close (clean: boolean, floorMs: number): void {
    if (floorMs > 0) this.stmts.setFloor.run(String(floorMs), floorMs)
    if (clean) this.db.prepare("UPDATE meta SET value = '1' WHERE key = 'clean'").run()
    this.db.close()
  }
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

class Reader {
  private db: Database.Database
  private page: Database.Statement

  constructor () {
    this.db = new Database(init.path, { ...bindingOptions, readonly: true, fileMustExist: true })
    configure(this.db, true)
    // Short paged queries, never an iterator held across awaits: a long reader starves checkpoints.
    this.page = this.db.prepare('SELECT seq, ingest_ms AS ingestMs, body FROM events WHERE seq > ? AND seq <= ? AND (routes & ?) != 0 ORDER BY seq LIMIT ?')
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
      const results = writer.commit(req.appends, req.acks, req.deadLetters, req.floorMs, req.nowMs)
      return results
    }
    case 'readPage':
      if (reader === null) throw new Error('readPage before init on a reader')
      return reader.readPage(req.slot, req.after, req.upTo, req.limit, req.maxBytes)
    case 'stats':
      if (writer === null) throw new Error('stats on a reader')
      return writer.stats()
    case 'close':
      writer?.close(req.clean, req.floorMs)
      reader?.close()
      return null
  }
}

port.on('message', (env: Envelope) => {
  let reply: Reply
  try {
    reply = { id: env.id, ok: true, result: handle(env.req) }
  } catch (err) {
    const e = err as Error & { code?: unknown }
    reply = { id: env.id, ok: false, error: { message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) } }
  }
  port.postMessage(reply)
})
