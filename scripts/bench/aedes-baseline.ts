// Reference brokers for scenario 1, run with the same load generator as gridgate and mosquitto, so
// every run shows how much of gridgate's cost per message is the broker library and the durable
// commit, and how much is gridgate's own pipeline:
//
//   plain   aedes as it comes: no authentication, no hooks, in-memory persistence; a QoS 1 PUBLISH
//           is acknowledged as soon as aedes has handled it.
//   sqlite  the same aedes, and every PUBLISH's raw payload committed to SQLite (WAL,
//           synchronous=FULL, one row per message) by a writer thread with group commit (one
//           transaction in flight, the next one takes everything that arrived meanwhile) before its
//           PUBACK: the durability rule of gridgate without normalising, deduplication, routing
//           or forwarding.
//
//   node dist/scripts/bench/aedes-baseline.js --mode plain|sqlite [--data-dir DIR]
//
// Prints {"event":"listening","port":N} once it accepts connections, and on SIGTERM its result
// ({"mode", "committed", "commits"}) as its last line.
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { fileURLToPath } from 'node:url'
import { Aedes } from 'aedes'
import Database from 'better-sqlite3'

export interface BaselineResult { mode: 'plain' | 'sqlite', committed: number, commits: number }

interface WriterData { file: string }

/** The writer thread: one transaction per batch of payloads, answered with the batch's size. */
function writerThread (): void {
  const { file } = workerData as WriterData
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL')
  // As gridgate's store sets it (store-forward/sqlite-worker.ts configure()).
  db.pragma('cache_size = -4096')
  db.exec('CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ingest_ms INTEGER NOT NULL, body BLOB NOT NULL)')
  const insert = db.prepare('INSERT INTO events (ingest_ms, body) VALUES (?, ?)')
  const commit = db.transaction((bodies: Uint8Array[]) => {
    const now = Date.now()
    for (const b of bodies) insert.run(now, b)
  })
  parentPort!.on('message', (bodies: Uint8Array[]) => {
    commit(bodies)
    parentPort!.postMessage(bodies.length)
  })
}

/** Group commit on the main thread's side: one batch at the writer, the next one gathering. */
class GroupCommit {
  private queue: Uint8Array[] = []
  private waiting: Array<(err?: Error | null) => void> = []
  private busy = false
  committed = 0
  commits = 0

  constructor (private readonly writer: Worker) {}

  append (payload: Uint8Array, done: (err?: Error | null) => void): void {
    this.queue.push(payload)
    this.waiting.push(done)
    this.flush()
  }

  private flush (): void {
    if (this.busy || this.queue.length === 0) return
    const bodies = this.queue
    const waiting = this.waiting
    this.queue = []
    this.waiting = []
    this.busy = true
    this.writer.once('message', () => {
      this.busy = false
      this.committed += bodies.length
      this.commits++
      for (const done of waiting) done(null)
      this.flush()
    })
    this.writer.postMessage(bodies)
  }
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { mode: { type: 'string', default: 'plain' }, 'data-dir': { type: 'string', default: 'bench-data' } } })
  const mode = values.mode
  if (mode !== 'plain' && mode !== 'sqlite') throw new Error(`--mode must be plain or sqlite, not ${String(mode)}`)
  const broker = await Aedes.createBroker()
  let group: GroupCommit | null = null
  let writer: Worker | null = null
  let dir: string | null = null
  if (mode === 'sqlite') {
    fs.mkdirSync(values['data-dir'], { recursive: true })
    dir = fs.mkdtempSync(path.join(values['data-dir'], 'gg-bench-aedes-sqlite-'))
    writer = new Worker(fileURLToPath(import.meta.url), { workerData: { file: path.join(dir, 'baseline.db') } satisfies WriterData })
    writer.on('error', (err) => { process.stderr.write(`baseline writer failed: ${err.message}\n`); process.exit(1) })
    group = new GroupCommit(writer)
    const g = group
    broker.authorizePublish = (_client, packet, done) => { g.append(packet.payload as Uint8Array, done) }
  }
  const server = net.createServer({ noDelay: true }, broker.handle)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  process.stdout.write(`${JSON.stringify({ event: 'listening', port: (server.address() as net.AddressInfo).port })}\n`)
  process.once('SIGTERM', () => {
    server.close()
    const result: BaselineResult = { mode, committed: group?.committed ?? 0, commits: group?.commits ?? 0 }
    const end = async (): Promise<void> => {
      await writer?.terminate()
      if (dir !== null) fs.rmSync(dir, { recursive: true, force: true })
      process.stdout.write(`${JSON.stringify(result)}\n`)
      process.exit(0)
    }
    void end()
  })
}

if (isMainThread) {
  main().catch((err: Error) => { process.stderr.write(`${err.stack ?? err.message}\n`); process.exit(1) })
} else {
  writerThread()
}
