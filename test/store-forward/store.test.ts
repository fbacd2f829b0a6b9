import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { pino } from 'pino'
import { Store, STORE_FILE, type StoreOptions } from '../../store-forward/store.js'
import { PackedRow, SCHEMA_VERSION, bodySize, murmur3, packAppends, packRows, payloadFingerprint, unpackAppends, unpackRows } from '../../store-forward/protocol.js'
import { createHash } from 'node:crypto'
import { isGridgateError } from '../../gateway/errors.js'
import protobuf from 'protobufjs'
import { encodeEvent, renderJsonBatch, type GridEvent } from '../../gateway/event.js'
import { protoSource } from '../../gateway/proto/index.js'
import { tempDir, waitFor } from '../helpers/util.js'

function options (dataDir: string, over: Partial<StoreOptions> = {}): StoreOptions {
  return {
    dataDir,
    sync: 'full',
    dedupWindowMs: 120_000,
    commitDelayMs: 0,
    uplinks: ['a'],
    floorMs: () => Date.now(),
    now: () => Date.now(),
    log: pino({ level: 'silent' }),
    faults: false,
    ...over,
  }
}

const body = (s: string): Uint8Array => Buffer.from(s)

async function open (t: import('node:test').TestContext, dataDir: string, over: Partial<StoreOptions> = {}): Promise<Store> {
  const s = new Store(options(dataDir, over))
  await s.open()
  t.after(() => s.close().catch(() => {}))
  return s
}

test('the writer sets synchronous explicitly and reads it back, also when the file is reopened', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  assert.equal(s1.info.synchronous, 2)
  assert.equal(s1.info.journalMode, 'wal')
  await s1.close()
  // better-sqlite3 would start a reopened WAL file at NORMAL (1) without the explicit pragma.
  const s2 = await open(t, dir)
  assert.equal(s2.info.synchronous, 2)
  await s2.close()
  const s3 = await open(t, dir, { sync: 'normal' })
  assert.equal(s3.info.synchronous, 1)
})

test('concurrent appends share commits and get strictly increasing sequences', async (t) => {
  const s = await open(t, tempDir(t))
  const results = await Promise.all(Array.from({ length: 2000 }, (_, i) =>
    s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `id-${i}` })))
  const seqs = results.map(r => r.seq)
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!, 'sequence order follows append order')
  assert.ok(s.commits < 2000, `group commit: ${s.commits} commits for 2000 appends`)
  assert.equal(s.uplinks.get('a')!.backlogEvents, 2000)
})

test('a sequence is never reused after the store empties and reopens', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  const a = await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('x'), eventId: 'x' })
  await s1.ack(s1.uplinks.get('a')!.slot, a.seq, 1, 1)
  const st = await s1.stats()
  assert.equal(st.events, 0, 'delivered rows are deleted')
  await s1.close()
  const s2 = await open(t, dir)
  assert.equal(s2.info.lastSeq, a.seq)
  const b = await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('y'), eventId: 'y' })
  assert.ok(b.seq > a.seq, `new sequence ${b.seq} > ${a.seq}`)
  assert.equal(s2.uplinks.get('a')!.cursor, a.seq, 'the cursor survived the restart')
})

test('a row is deleted only when every uplink it is routed to has acknowledged it', async (t) => {
  const s = await open(t, tempDir(t), { uplinks: ['a', 'b'] })
  const a = s.uplinks.get('a')!.slot
  const b = s.uplinks.get('b')!.slot
  const r = await Promise.all([1, 2, 3, 4].map(i => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `e${i}` })))
  await s.ack(a, r[3]!.seq, 4, 8)
  assert.equal((await s.stats()).events, 4, 'b has not acknowledged anything yet')
  await s.ack(b, r[1]!.seq, 2, 4)
  assert.equal((await s.stats()).events, 2)
  await s.ack(b, r[3]!.seq, 2, 4)
  assert.equal((await s.stats()).events, 0)
})

test('a drained backlog is deleted 1,024 rows per commit that carries devices\' events, 4,096 per commit without', async (t) => {
  const s = await open(t, tempDir(t), { maintainIntervalMs: 3_600_000 })
  const a = s.uplinks.get('a')!.slot
  const append = (i: number): ReturnType<Store['append']> => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `e${i}` })
  const backlog = await Promise.all(Array.from({ length: 6000 }, (_, i) => append(i)))
  const last = backlog.at(-1)!.seq
  assert.equal((await s.stats()).events, 6000)
  // The cursor jump is queued while x commits, so it rides y's commit.
  const x = append(6000)
  const moved = s.ack(a, last, 6000, 6000 * 6)
  const y = append(6001)
  await Promise.all([x, y])
  assert.equal((await s.stats()).events, 6002 - 1024, 'y\'s commit deleted 1,024 drained rows')
  await moved
  // A commit of cursors alone (nothing waits for its fsync) takes the larger share.
  const before = (await s.stats()).events
  await s.ack(a, (await y).seq - 1, 1, 6)
  assert.equal((await s.stats()).events, before - 4096)
})

test('appends made in one turn of the event loop share one commit, the first one included', async (t) => {
  const s = await open(t, tempDir(t))
  await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('warm'), eventId: 'warm' })
  // The writer is idle: without waiting for the end of the turn, the first append would start a
  // commit of its own and the rest would wait for it.
  const before = s.commits
  const results = await Promise.all(Array.from({ length: 5 }, (_, i) => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `e${i}` })))
  assert.equal(s.commits - before, 1)
  assert.deepEqual(results.map(r => r.seq - results[0]!.seq), [0, 1, 2, 3, 4])
})

test('a cursor move rides the next commit of events instead of a commit of its own, and commits alone after a pause', async (t) => {
  const s = await open(t, tempDir(t))
  const a = s.uplinks.get('a')!.slot
  const first = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('e1'), eventId: 'e1' })
  // The move is queued while the next event's commit is under way, and that commit's answer finds
  // nothing but the move waiting: it waits for the event after it (one commit, not two).
  const second = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('e2'), eventId: 'e2' })
  const moved = s.ack(a, first.seq, 1, 2)
  const before = s.commits
  await second
  const third = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('e3'), eventId: 'e3' })
  await moved
  assert.equal(s.commits - before, 2, 'the commit of e2, then the commit of e3 with the cursor')
  assert.equal((await s.stats()).events, 2)
  // With no events coming, the move commits on its own.
  const alone = s.commits
  await s.ack(a, third.seq, 2, 4)
  assert.equal(s.commits - alone, 1)
  assert.equal((await s.stats()).events, 0)
})

test('the reader thread starts when first needed, stops when idle, and starts again for the next read', async (t) => {
  const s = await open(t, tempDir(t), { maintainIntervalMs: 20, readerIdleMs: 300 })
  const slot = s.uplinks.get('a')!.slot
  assert.equal(s.readerRunning, false, 'a store nobody reads from starts without it')
  const r = await Promise.all([1, 2, 3].map(i => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `e${i}` })))
  // The commits need a checkpoint: the checkpointer starts the reader.
  await waitFor(() => s.readerRunning, 'the checkpointer starts the reader')
  await waitFor(() => s.lastCheckpoint !== null && s.lastCheckpoint.checkpointed === s.lastCheckpoint.log, 'the WAL copied')
  // Nothing more to copy or read: it stops, and the checkpoints with it.
  await waitFor(() => !s.readerRunning, 'the idle reader stops')
  const page = await s.readStoredPage(slot, 0, 10, 1 << 20)
  assert.deepEqual(page.map(p => p.seq), r.map(x => x.seq), 'a read starts it again')
  assert.equal(s.readerRunning, true)
  await waitFor(() => !s.readerRunning, 'and it stops again')
  // A reader that dies is replaced at the next read.
  await s.killReader()
  assert.deepEqual((await s.readStoredPage(slot, r[0]!.seq, 10, 1 << 20)).map(p => p.seq), r.slice(1).map(x => x.seq))
})

test('the writer hands its page cache back once after a quiet spell, and again only after the next commit', async (t) => {
  const s = await open(t, tempDir(t), { maintainIntervalMs: 20, writerCacheIdleMs: 300 })
  const slot = s.uplinks.get('a')!.slot
  // Opening reads (the row counts) into the cache too.
  await waitFor(() => s.cacheReleases === 1, 'handed back once the opened store was quiet')
  await new Promise(resolve => setTimeout(resolve, 500))
  assert.equal(s.cacheReleases, 1, 'nothing committed since: not again')
  const r = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('after'), eventId: 'after' })
  await waitFor(() => s.cacheReleases === 2, 'a commit, then a quiet spell: handed back again')
  // The writer goes on from a cold cache, reading the pages it needs again.
  const r2 = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('next'), eventId: 'next' })
  assert.equal(r2.seq, r.seq + 1)
  assert.equal((await s.stats()).events, 2)
  assert.deepEqual((await s.readStoredPage(slot, 0, 10, 1 << 20)).map(p => Buffer.from(p.body).toString()), ['after', 'next'])
})

test('a removed uplink no longer pins rows and a new uplink starts at the newest event', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir, { uplinks: ['a', 'b'] })
  const r = await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('x'), eventId: 'x' })
  await s1.ack(s1.uplinks.get('a')!.slot, r.seq, 1, 1)
  await s1.close()
  const s2 = await open(t, dir, { uplinks: ['a', 'c'] })
  assert.deepEqual(s2.info.removedUplinks, [{ name: 'b', backlogEvents: 1 }])
  assert.equal((await s2.stats()).events, 0, 'the row only b wanted is gone')
  assert.equal(s2.uplinks.get('c')!.cursor, r.seq)
  assert.equal(s2.uplinks.get('c')!.backlogEvents, 0)
})

test('a dedup key answers a retransmission with the original outcome, also after a restart', async (t) => {
  const dir = tempDir(t)
  const key = new Uint8Array(16).fill(7)
  const s1 = await open(t, dir)
  const first = await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('x'), eventId: 'id-1', dedupKey: key })
  const again = await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('x'), eventId: 'id-2', dedupKey: key, dedupCheck: true })
  assert.deepEqual(again, { seq: first.seq, duplicate: true, eventId: 'id-1' })
  await s1.close()
  const s2 = await open(t, dir)
  const third = await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('x'), eventId: 'id-3', dedupKey: key, dedupCheck: true })
  assert.equal(third.duplicate, true)
  assert.equal((await s2.stats()).events, 1)
})

test('a retry committed together with its original is answered with the original and is no new row for the uplinks', async (t) => {
  const s = await open(t, tempDir(t))
  const key = new Uint8Array(12).fill(3)
  // The first append's commit is under way, so the next two are queued into one commit together.
  const filler = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('filler'), eventId: 'id-0' })
  const original = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('original'), eventId: 'id-1', dedupKey: key, dedupCheck: true })
  const retry = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('retry'), eventId: 'id-2', dedupKey: key, dedupCheck: true })
  const [f, o, r] = await Promise.all([filler, original, retry])
  assert.equal(o.duplicate, false)
  assert.deepEqual(r, { seq: o.seq, duplicate: true, eventId: 'id-1' })
  const rows = await s.readPage(0, 0, 10, 1 << 20)
  assert.deepEqual(rows.map(x => [x.seq, Buffer.from(x.body).toString()]), [[f.seq, 'filler'], [o.seq, 'original']])
  assert.equal((await s.stats()).events, 2)
})

test('a maintenance round does not undo a dead-letter purge answered while its checkpoint ran', async (t) => {
  const s = await open(t, tempDir(t))
  for (let round = 0; round < 3; round++) {
    await s.deadLetter({ uplink: 'a', seq: round + 1, ingestMs: Date.now(), reason: 'rejected', status: 400, body: body('poison') })
    assert.equal(s.uplinks.get('a')!.deadLetters, 1)
    // The dead letter changed the store: this round checkpoints on the reader thread, which it may
    // have to start first. The purge is answered by the writer meanwhile.
    const maintained = s.maintain()
    const purged = await s.purgeDeadLetters(null)
    await maintained
    assert.equal(purged.purged, 1)
    assert.equal(s.uplinks.get('a')!.deadLetters, 0, `round ${round}: the purge's count stands`)
  }
})

test('murmur3 is MurmurHash3 x86_32 (SMHasher\'s reference values)', () => {
  const text = (s: string): Uint8Array => new TextEncoder().encode(s)
  assert.equal(murmur3(text(''), 0), 0)
  assert.equal(murmur3(text(''), 1), 0x514e28b7)
  assert.equal(murmur3(text(''), 0xffffffff), 0x81f16f39)
  assert.equal(murmur3(new Uint8Array(4), 0), 0x2362f9de)
  assert.equal(murmur3(text('Hello, world!'), 1234), 0xfaf6cdb3)
  assert.equal(murmur3(text('The quick brown fox jumps over the lazy dog'), 0), 0x2e4ff723)
  // Every tail length (0-3 bytes after the last whole word) changes the hash.
  const seen = new Set(Array.from({ length: 8 }, (_, n) => murmur3(new Uint8Array(n).fill(1), 0)))
  assert.equal(seen.size, 8)
})

test('a payload fingerprint is the same bytes as stores already keep (both hashes in one pass give what two passes gave)', () => {
  const text = (s: string): Uint8Array => new TextEncoder().encode(s)
  // Written by the two-pass version: a stored key's fingerprint must still match its retransmission.
  const kept: Array<[string, string]> = [['', 'ebb6c228d9aaf7d300000000'], ['a', '7fa09ea6c795411c00000001'],
    ['{"t":19.5}', '69b1b47b4da2ea8f0000000a'], ['x'.repeat(203), '701161641da26e6f000000cb']]
  for (const [payload, hex] of kept) assert.equal(Buffer.from(payloadFingerprint(text(payload))).toString('hex'), hex, JSON.stringify(payload.slice(0, 12)))
  // Each half is murmur3 with its own seed, at every tail length.
  const bytes = Uint8Array.from({ length: 70 }, (_, i) => (i * 151 + 7) & 255)
  for (let n = 0; n <= bytes.length; n++) {
    const fp = Buffer.from(payloadFingerprint(bytes.subarray(0, n)))
    assert.deepEqual([fp.readUInt32BE(0), fp.readUInt32BE(4), fp.readUInt32BE(8)], [murmur3(bytes.subarray(0, n), 0x9747b28c), murmur3(bytes.subarray(0, n), 0x5bd1e995), n])
  }
})

test('an entry fingerprinted by an earlier version (SHA-256) still answers its retransmission', async (t) => {
  const dir = tempDir(t)
  const key = new Uint8Array(12).fill(9)
  const payload = new TextEncoder().encode('{"t":19.5}')
  const s1 = await open(t, dir)
  const first = await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('a'), eventId: 'id-1', dedupKey: key, dedupPayload: payload })
  await s1.close()
  // As a store written before the fingerprint changed has it: the first 8 bytes of SHA-256.
  const db = new Database(path.join(dir, STORE_FILE))
  db.prepare('UPDATE dedup SET fp = ? WHERE key = ?').run(createHash('sha256').update(payload).digest().subarray(0, 8), key)
  db.close()
  const s2 = await open(t, dir)
  const retry = await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('a'), eventId: 'id-2', dedupKey: key, dedupPayload: Uint8Array.from(payload), dedupCheck: true })
  assert.deepEqual(retry, { seq: first.seq, duplicate: true, eventId: 'id-1' })
  const other = await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('b'), eventId: 'id-3', dedupKey: key, dedupPayload: new TextEncoder().encode('{"t":20}'), dedupCheck: true })
  assert.equal(other.duplicate, false)
  assert.equal((await s2.stats()).events, 2)
})

test('a reused dedup key with another fingerprint is a new event and replaces the entry; the same fingerprint is a retransmission', async (t) => {
  const s = await open(t, tempDir(t))
  const key = new Uint8Array(12).fill(3)
  const fp = (n: number): Uint8Array => new Uint8Array(8).fill(n)
  const first = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('a'), eventId: 'id-1', dedupKey: key, dedupFp: fp(1) })
  // The sender reused its message number for another payload (MQTT: the packet id was acknowledged).
  const other = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('b'), eventId: 'id-2', dedupKey: key, dedupFp: fp(2), dedupCheck: true })
  assert.equal(other.duplicate, false)
  assert.notEqual(other.seq, first.seq)
  // A retransmission of the newer message is recognised; the older one's entry was replaced.
  const retry = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('b'), eventId: 'id-3', dedupKey: key, dedupFp: fp(2), dedupCheck: true })
  assert.deepEqual(retry, { seq: other.seq, duplicate: true, eventId: 'id-2' })
  const old = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('a'), eventId: 'id-4', dedupKey: key, dedupFp: fp(1), dedupCheck: true })
  assert.equal(old.duplicate, false)
  // A key stored without a fingerprint matches only a retry without one.
  const plain = new Uint8Array(12).fill(4)
  await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('c'), eventId: 'id-5', dedupKey: plain })
  assert.equal((await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('c'), eventId: 'id-6', dedupKey: plain, dedupFp: fp(5), dedupCheck: true })).duplicate, false)
  assert.equal((await s.stats()).events, 5)
})

test('an append that carries its payload is fingerprinted by the writer, as if it carried the fingerprint', async (t) => {
  const dir = tempDir(t)
  const s = await open(t, dir)
  const key = new Uint8Array(12).fill(7)
  const payload = new TextEncoder().encode('{"t":21.5}')
  const first = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('a'), eventId: 'id-1', dedupKey: key, dedupPayload: payload })
  // The same payload under the same key: a retransmission, whether it comes with its payload or with
  // the fingerprint of it.
  const retry = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('a'), eventId: 'id-2', dedupKey: key, dedupPayload: Uint8Array.from(payload), dedupCheck: true })
  assert.deepEqual(retry, { seq: first.seq, duplicate: true, eventId: 'id-1' })
  const byFp = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('a'), eventId: 'id-3', dedupKey: key, dedupFp: payloadFingerprint(payload), dedupCheck: true })
  assert.deepEqual(byFp, { seq: first.seq, duplicate: true, eventId: 'id-1' })
  // Another payload under the reused key is a new event.
  const other = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('b'), eventId: 'id-4', dedupKey: key, dedupPayload: new TextEncoder().encode('{"t":22}'), dedupCheck: true })
  assert.equal(other.duplicate, false)
  await s.close()
  // The fingerprint was stored: it still tells them apart after a restart.
  const s2 = await open(t, dir)
  const after = await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('b'), eventId: 'id-5', dedupKey: key, dedupPayload: new TextEncoder().encode('{"t":22}'), dedupCheck: true })
  assert.deepEqual(after, { seq: other.seq, duplicate: true, eventId: 'id-4' })
  assert.equal((await s2.append({ ingestMs: Date.now(), routes: s2.routesAll, body: body('a'), eventId: 'id-6', dedupKey: key, dedupPayload: payload, dedupCheck: true })).duplicate, false)
  assert.equal((await s2.stats()).events, 3)
})

test('packed appends carry a payload to fingerprint apart from a fingerprint', () => {
  const items = [
    { ingestMs: 1, routes: 1, body: body('a'), eventId: 'a', dedupKey: new Uint8Array([1, 2]), dedupPayload: new Uint8Array([9, 9, 9]), dedupCheck: true },
    { ingestMs: 2, routes: 1, body: body('b'), eventId: 'b', dedupKey: new Uint8Array([3]), dedupFp: new Uint8Array(8).fill(5) },
    { ingestMs: 3, routes: 1, body: body('c'), eventId: 'c' },
  ]
  const back = unpackAppends(packAppends(items))
  assert.deepEqual(back.map(i => ({ ...i, body: [...i.body], dedupKey: i.dedupKey && [...i.dedupKey], dedupFp: i.dedupFp && [...i.dedupFp], dedupPayload: i.dedupPayload && [...i.dedupPayload] })), [
    { ingestMs: 1, routes: 1, body: [...body('a')], eventId: 'a', dedupKey: [1, 2], dedupCheck: true, dedupFp: undefined, dedupPayload: [9, 9, 9] },
    { ingestMs: 2, routes: 1, body: [...body('b')], eventId: 'b', dedupKey: [3], dedupCheck: false, dedupFp: [5, 5, 5, 5, 5, 5, 5, 5], dedupPayload: undefined },
    { ingestMs: 3, routes: 1, body: [...body('c')], eventId: 'c', dedupKey: undefined, dedupFp: undefined, dedupPayload: undefined },
  ])
})

test('packed rows come back with their sequence, time and size; each body a view into the one buffer, made once when read', () => {
  const rows = [{ seq: 7, ingestMs: 100, body: body('first') }, { seq: 9, ingestMs: 101, body: body('') }, { seq: 12, ingestMs: 102, body: body('third!') }]
  const packed = packRows(rows)
  const { rows: back, page } = unpackRows(packed)
  assert.deepEqual(back.map(r => [r.seq, r.ingestMs, bodySize(r)]), [[7, 100, 5], [9, 101, 0], [12, 102, 6]])
  assert.ok(back.every(r => r instanceof PackedRow))
  // The size needs no view, and the page knows that none was made (its buffer may be handed back).
  assert.equal(page.viewed, false)
  // The body is one, into the transferred buffer (no copy), the same object each time.
  assert.deepEqual(back.map(r => Buffer.from(r.body).toString()), ['first', '', 'third!'])
  assert.equal(page.viewed, true)
  assert.equal(page.data, packed.data.buffer)
  assert.ok(back.every(r => r.body.buffer === packed.data.buffer))
  assert.equal(back[2]!.body, back[2]!.body)
  // Rows that are not packed (the in-memory tail's) are measured by their body.
  assert.equal(bodySize({ seq: 1, ingestMs: 1, body: body('four') }), 4)
})

test('pages served from the in-memory tail equal the pages SQLite returns, for every uplink, offset and limit', async (t) => {
  const s = await open(t, tempDir(t), { uplinks: ['a', 'b', 'c'] })
  const slots = [...s.uplinks.values()].map(u => u.slot)
  const now = Date.now()
  // Varying routes (one uplink, two, all, none) and sizes, over several commits.
  for (let round = 0; round < 5; round++) {
    await Promise.all(Array.from({ length: 40 }, (_, i) => {
      const n = round * 40 + i
      const routes = [0, 1, 2, 4, 3, 5, 7][n % 7]!
      return s.append({ ingestMs: now + n, routes, body: Buffer.alloc(10 + (n * 37) % 300, n), eventId: `id-${n}` })
    }))
  }
  const strip = (rows: ReadonlyArray<{ seq: number, ingestMs: number, body: Uint8Array }>): unknown[] => rows.map(r => [r.seq, r.ingestMs, Buffer.from(r.body).toString('hex')])
  let compared = 0
  for (const slot of slots) {
    for (const after of [0, 1, 17, 60, 121, 199, s.lastSeq]) {
      for (const [limit, maxBytes] of [[500, 1 << 20], [7, 1 << 20], [500, 900], [3, 1]]) {
        const fromTail = await s.readPage(slot, after, limit!, maxBytes!)
        const fromDb = await s.readStoredPage(slot, after, limit!, maxBytes!)
        assert.deepEqual(strip(fromTail), strip(fromDb), `slot ${slot} after ${after} limit ${limit} maxBytes ${maxBytes}`)
        compared++
      }
    }
  }
  assert.ok(s.tailReads >= compared, 'every page came from the tail')
  assert.equal(s.storeReads, 0)
})

test('while every forwarder reads from further below its oldest row than its reach, the in-memory tail holds nothing; one back near the top fills it again', async (t) => {
  const s = await open(t, tempDir(t), { uplinks: ['a', 'b'], tail: { rows: 8, bytes: 1 << 20, reach: 4 } })
  const [a, b] = [...s.uplinks.values()].map(u => u.slot) as [number, number]
  let n = 0
  // One commit each.
  const add = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      n++
      await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: Buffer.alloc(100, n), eventId: `id-${n}` })
    }
  }
  await add(5)
  assert.equal(s.tailHeld.rows, 5, 'no forwarder has read yet: held')
  assert.equal((await s.readPage(a, 0, 500, 1 << 20)).length, 5)
  assert.equal((await s.readPage(b, 0, 500, 1 << 20)).length, 5)
  // Both uplinks go down with that page in flight (their forwarders stay at 0) while events arrive:
  // the tail drops its oldest rows past them, then holds nothing once they are out of reach.
  await add(6)
  assert.equal(s.tailHeld.rows, 8, 'dropping its oldest, but both are within reach (3 rows below)')
  await add(2)
  assert.deepEqual(s.tailHeld, { rows: 0, bytes: 0 }, 'both 5 rows below its oldest: nothing held')
  await add(20)
  assert.deepEqual(s.tailHeld, { rows: 0, bytes: 0 }, 'and it stays empty while they are behind')
  // a drains from SQLite up to the newest row; b stays behind.
  const storeReads = s.storeReads
  let after = 0
  for (;;) {
    const page = await s.readPage(a, after, 7, 1 << 20)
    if (page.length === 0) break
    after = page[page.length - 1]!.seq
  }
  assert.equal(after, s.lastSeq)
  assert.ok(s.storeReads > storeReads, 'the drain read from SQLite')
  await add(3)
  assert.equal(s.tailHeld.rows, 3, 'a is at the top again: the tail holds what comes next')
  const tailReads = s.tailReads
  const page = await s.readPage(a, after, 500, 1 << 20)
  assert.equal(s.tailReads, tailReads + 1, 'and serves it')
  const hex = (rows: ReadonlyArray<{ body: Uint8Array }>): string[] => rows.map(r => Buffer.from(r.body).toString('hex'))
  assert.deepEqual(hex(page), hex(await s.readStoredPage(a, after, 500, 1 << 20)))
  assert.equal(page.length, 3)
  after = page[2]!.seq
  // Slightly behind: 9 more rows, its next read starts 1 row below the oldest held and its last one
  // started 4 rows below, within reach. The tail stays full; one page from SQLite and a is back in it.
  await add(9)
  assert.equal(s.tailHeld.rows, 8)
  const before = s.storeReads
  const fromDb = await s.readPage(a, after, 500, 1 << 20)
  assert.equal(fromDb.length, 9)
  assert.equal(s.storeReads, before + 1, 'from SQLite: the tail no longer holds the row after its position')
  const reads = s.tailReads
  await add(1)
  assert.equal(s.tailHeld.rows, 8, 'kept: a is within reach')
  assert.equal((await s.readPage(a, fromDb[8]!.seq, 500, 1 << 20)).length, 1)
  assert.equal(s.tailReads, reads + 1, 'back in the tail')
})

test('a dedup key outside the window is not a duplicate', async (t) => {
  let now = Date.now()
  const s = await open(t, tempDir(t), { dedupWindowMs: 1000, now: () => now })
  const key = new Uint8Array(16).fill(9)
  await s.append({ ingestMs: now, routes: s.routesAll, body: body('x'), eventId: 'id-1', dedupKey: key })
  now += 5000
  const r = await s.append({ ingestMs: now, routes: s.routesAll, body: body('x'), eventId: 'id-2', dedupKey: key, dedupCheck: true })
  assert.equal(r.duplicate, false)
})

test('a failed commit rolls back, fails its appends and the next commit succeeds', async (t) => {
  const s = await open(t, tempDir(t), { faults: true })
  await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('ok'), eventId: 'ok' })
  s.fault('failCommits', 1)
  await assert.rejects(s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('bad'), eventId: 'bad' }),
    (err: unknown) => isGridgateError(err, 'GG_ERR_STORE_FULL'))
  assert.equal((await s.stats()).events, 1, 'nothing half-stored')
  const after = await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('after'), eventId: 'after' })
  assert.equal(after.duplicate, false)
  assert.equal((await s.stats()).events, 2)
  assert.equal(s.uplinks.get('a')!.backlogEvents, 2, 'failed appends are not counted')
})

test('when the writer dies, its pending appends fail, the store turns unready and recovers', async (t) => {
  const s = await open(t, tempDir(t), { faults: true })
  const states: boolean[] = []
  s.on('ready', (r) => states.push(r))
  s.fault('killWriter', 1)
  await assert.rejects(s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('lost'), eventId: 'lost' }),
    (err: unknown) => isGridgateError(err, 'GG_ERR_STORE_UNAVAILABLE'))
  await waitFor(() => s.ready, 'the writer restarted')
  assert.deepEqual(states, [false, true])
  await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('kept'), eventId: 'kept' })
  const st = await s.stats()
  assert.equal(st.events, 1, 'the event of the killed commit is absent')
})

test('a commit held before COMMIT acknowledges nothing until released', async (t) => {
  const s = await open(t, tempDir(t), { faults: true })
  s.fault('holdBeforeCommit', 1)
  let acked = false
  const p = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('held'), eventId: 'held' }).then(() => { acked = true })
  await waitFor(() => s.faultValue('holding') === 1, 'the writer is holding')
  assert.equal(acked, false)
  s.fault('holdBeforeCommit', 0)
  await p
  assert.equal(acked, true)
})

test('a store from a newer gridgate is refused, and a corrupt one is moved aside with a new storeid', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  const oldId = s1.info.storeId
  await s1.close()
  const db = new Database(path.join(dir, STORE_FILE))
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`)
  db.close()
  await assert.rejects(new Store(options(dir)).open(), (err: unknown) => isGridgateError(err, 'GG_ERR_STORE_VERSION'))

  fs.writeFileSync(path.join(dir, STORE_FILE), Buffer.alloc(8192, 0x5a))
  const s2 = await open(t, dir)
  assert.notEqual(s2.info.movedAside, null)
  assert.notEqual(s2.info.storeId, oldId)
  assert.ok(fs.existsSync(path.join(s2.info.movedAside!, STORE_FILE)), 'the corrupt file was kept for inspection')
})

test('an unclean stop is detected and quick_check runs on the next start', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: body('x'), eventId: 'x' })
  // Simulate a crash: the file still says "not clean".
  const db = new Database(path.join(dir, STORE_FILE))
  await s1.close()
  db.prepare("UPDATE meta SET value = '0' WHERE key = 'clean'").run()
  db.close()
  const s2 = await open(t, dir)
  assert.equal(s2.info.uncleanShutdown, true)
  assert.equal(s2.info.quickCheck, 'ok')
  assert.equal(s2.uplinks.get('a')!.backlogEvents, 1)
})

test('expired dedup keys are pruned as fast as new ones arrive', async (t) => {
  let now = Date.now()
  const dir = tempDir(t)
  const s = await open(t, dir, { dedupWindowMs: 1000, now: () => now })
  const append = (i: number) => s.append({ ingestMs: now, routes: s.routesAll, body: body('x'), eventId: `id-${i}`, dedupKey: Buffer.from(`key-${i}`) })
  await Promise.all(Array.from({ length: 3000 }, (_, i) => append(i)))
  now += 5000
  for (let round = 0; round < 5; round++) await Promise.all(Array.from({ length: 1000 }, (_, i) => append(10_000 + round * 1000 + i)))
  const db = new Database(path.join(dir, STORE_FILE), { readonly: true })
  t.after(() => db.close())
  const expired = db.prepare('SELECT count(*) FROM dedup WHERE at_ms < ?').pluck().get(now - 1000) as number
  assert.equal(expired, 0, 'every expired key is gone')
  assert.equal(db.prepare('SELECT count(*) FROM dedup').pluck().get(), 5000, 'the keys still in the window are kept')
})

test('the reader thread (backlog pages, checkpoints) runs ten nice steps below the process; the writer does not', { skip: process.platform !== 'linux' && 'nice is per thread on Linux only' }, async (t) => {
  const s = await open(t, tempDir(t))
  await s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('n'), eventId: 'n' })
  // Starts the reader thread.
  assert.equal((await s.readStoredPage(s.uplinks.get('a')!.slot, 0, 10, 1 << 20)).length, 1)
  const niceOf = (tid: string): number => {
    const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
    // Fields after the command name: state is field 3, nice field 19.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
  }
  const base = niceOf(String(process.pid))
  const nices = fs.readdirSync('/proc/self/task').map(niceOf)
  const lowered = nices.filter(n => n !== base)
  assert.deepEqual(lowered, [Math.min(19, base + 10)], `one thread (the reader) lowered; nice values ${nices.join(' ')}`)
})

test('under steady commits the routine checkpoint rewinds the WAL, so its file stays at one round of commits', async (t) => {
  const dir = tempDir(t)
  // No walMaxBytes: nothing but the routine checkpoint keeps the WAL from growing.
  const s = await open(t, dir)
  const wal = path.join(dir, `${STORE_FILE}-wal`)
  const payload = Buffer.alloc(1024, 7)
  let appending = true
  let appended = 0
  // Commits land all the time, also while a checkpoint copies frames: a PASSIVE checkpoint alone then
  // never finds the WAL wholly copied when the next commit starts, and the file grows with every commit.
  const writing = (async () => {
    while (appending) {
      await Promise.all(Array.from({ length: 20 }, (_, i) => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: new Uint8Array(payload), eventId: `w-${appended}-${i}` })))
      appended += 20
    }
  })()
  let rewinds = 0
  let lastLog = 0
  let largest = 0
  // 24 rounds: a peak of a few rounds' WAL (each 1 KiB event costs about 2 KiB of frames, and a round
  // whose rewind meets a read still on the WAL keeps its frames to the next) stays well under a third of all.
  for (let round = 0; round < 24; round++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    await s.maintain()
    // The WAL's frame count goes down only when a commit started it from its beginning again.
    const log = s.lastCheckpoint?.log ?? -1
    if (log >= 0 && log < lastLog) rewinds++
    if (log >= 0) lastLog = log
    largest = Math.max(largest, fs.statSync(wal).size)
  }
  appending = false
  await writing
  const written = appended * 1024
  t.diagnostic(`${appended} events of 1 KiB; the WAL rewound ${rewinds} times in 24 rounds; WAL file at most ${largest} bytes`)
  assert.ok(rewinds >= 3, `the WAL was started from its beginning again (${rewinds} times)`)
  assert.ok(largest < written / 3, `the WAL file (${largest} bytes) held far less than what was committed (${written} bytes)`)
})

test('store.commitDelay gathers appends into fewer commits', async (t) => {
  const s = await open(t, tempDir(t), { commitDelayMs: 50 })
  const before = s.commits
  await Promise.all(Array.from({ length: 100 }, (_, i) => s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body(`e${i}`), eventId: `e${i}` })))
  assert.equal(s.commits - before, 1)
})

test('close waits for the commit in flight and then finishes, even with nothing queued behind it', async (t) => {
  const s = await open(t, tempDir(t), { faults: true })
  s.fault('holdBeforeCommit', 1)
  const appended = s.append({ ingestMs: Date.now(), routes: s.routesAll, body: body('last'), eventId: 'last' })
  await waitFor(() => s.faultValue('holding') === 1, 'the commit is in flight')
  let closed = false
  const closing = s.close().then(() => { closed = true })
  s.fault('holdBeforeCommit', 0)
  await appended
  await waitFor(() => closed, 'close finished after the last commit')
  await closing
})

test('the clock floor is persisted (at most every 10 s, and at a clean stop) and read back at start', async (t) => {
  const dir = tempDir(t)
  let floor = Date.parse('2030-01-01T00:00:00Z')
  const s1 = await open(t, dir, { floorMs: () => floor })
  await s1.append({ ingestMs: floor, routes: s1.routesAll, body: body('x'), eventId: 'x' })
  floor += 1000
  await s1.close()
  const s2 = await open(t, dir, { floorMs: () => 0 })
  assert.equal(s2.info.floorMs, floor, 'the floor at the clean stop')
})

test('a version 1 store is migrated to the current schema in place, its events kept', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: Buffer.from('kept'), eventId: 'e1' })
  await s1.close()
  // Make it look like a store written before the migration.
  const db = new Database(path.join(dir, 'gridgate.db'))
  db.exec('DROP TABLE retained; DROP TABLE devices; ALTER TABLE dedup DROP COLUMN fp; CREATE INDEX dedup_at ON dedup (at_ms)')
  db.pragma('user_version = 1')
  db.close()
  const s2 = await open(t, dir)
  const rows = await s2.readPage(0, 0, 10, 1 << 20)
  assert.deepEqual(rows.map(r => Buffer.from(r.body).toString()), ['kept'])
  await s2.close()
  const check = new Database(path.join(dir, 'gridgate.db'), { readonly: true })
  t.after(() => check.close())
  assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION)
  assert.deepEqual(check.prepare("SELECT name FROM sqlite_master WHERE name IN ('retained', 'devices') ORDER BY name").pluck().all(), ['devices', 'retained'])
  assert.deepEqual(check.prepare("SELECT name FROM sqlite_master WHERE name = 'dedup_at'").pluck().all(), [], 'the dedup age index is dropped (version 4)')
})

test('a page read from SQLite comes rendered by the reader thread, exactly as the main thread renders it', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  const now = Date.now()
  const events: GridEvent[] = Array.from({ length: 30 }, (_, i) => ({
    id: `id-${i}`, source: '/gateways/gw/devices/d', type: 'gridgate.telemetry', subject: `devices/d/t${i}`,
    time: new Date(now + i).toISOString(), datacontenttype: i % 3 === 0 ? 'application/octet-stream' : 'application/json',
    data: i % 3 === 0 ? { kind: 'binary', bytes: Buffer.from([i, 0, 255]) } : { kind: 'json', text: `{"i":${i},"s":"grüße ${'x'.repeat(i * 10)}"}` },
    extensions: { deviceid: 'd', protocol: 'mqtt', gatewayid: 'gw' },
  }))
  for (const ev of events) await s1.append({ ingestMs: now, routes: s1.routesAll, body: encodeEvent(ev), eventId: ev.id })
  await s1.close()
  // Reopened: nothing is in the in-memory tail, every page comes from SQLite.
  const s2 = await open(t, dir)
  const slot = s2.uplinks.get('a')!.slot
  for (const [after, limit] of [[0, 500], [7, 5], [29, 10]] as const) {
    const page = await s2.readRenderedPage(slot, after, limit, 1 << 20)
    assert.ok(page.json !== null, 'rendered by the reader')
    assert.equal(Buffer.from(page.json).toString('utf8'), renderJsonBatch(page.rows, s2.info.storeId), `after ${after} limit ${limit}`)
    assert.deepEqual(page.rows.map(r => r.seq), Array.from({ length: Math.min(limit, 30 - after) }, (_, i) => after + i + 1))
  }
  assert.equal(s2.tailReads, 0)
  assert.deepEqual(await s2.readRenderedPage(slot, 30, 10, 1 << 20), { rows: [], json: null }, 'nothing new: the tail answers')
})

test('the buffers of a delivered page go back to the reader thread and carry the next pages, which read as fresh ones do', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  const now = Date.now()
  for (let i = 0; i < 60; i++) {
    const ev: GridEvent = {
      id: `id-${i}`, source: '/gateways/gw/devices/d', type: 'gridgate.telemetry', subject: `devices/d/t${i}`,
      time: new Date(now + i).toISOString(), datacontenttype: 'application/json',
      // Sizes vary, so a reused buffer is larger than the page written into it.
      data: { kind: 'json', text: `{"i":${i},"pad":"${'x'.repeat((i * 37) % 300)}"}` },
      extensions: { deviceid: 'd', protocol: 'mqtt', gatewayid: 'gw' },
    }
    await s1.append({ ingestMs: now, routes: s1.routesAll, body: encodeEvent(ev), eventId: ev.id })
  }
  await s1.close()
  const s2 = await open(t, dir)
  const slot = s2.uplinks.get('a')!.slot
  const read = async (after: number): Promise<Awaited<ReturnType<Store['readRenderedPage']>>> => {
    const page = await s2.readRenderedPage(slot, after, 15, 1 << 20)
    assert.ok(page.json !== null && page.release !== undefined)
    return page
  }
  const first = await read(0)
  const firstJson = first.json!.buffer
  const firstText = Buffer.from(first.json!).toString('utf8')
  first.release!()
  const second = await read(15)
  assert.equal(firstJson.byteLength, 0, 'the released JSON buffer was transferred back with the next read')
  assert.equal(firstText, renderJsonBatch((await s2.readStoredPage(slot, 0, 15, 1 << 20)), s2.info.storeId), 'what was sent was whole')
  // A row whose body was read pins its page's bodies: they are not handed back.
  const viewed = second.rows[3]!.body
  const viewedText = Buffer.from(viewed).toString('hex')
  const secondJson = second.json!.buffer
  assert.equal(Buffer.from(second.json!).toString('utf8'), renderJsonBatch(second.rows, s2.info.storeId))
  second.release!()
  second.release!()
  // A page not released keeps its buffers.
  const third = await read(30)
  assert.equal(secondJson.byteLength, 0)
  assert.equal(Buffer.from(viewed).toString('hex'), viewedText, 'the viewed body is intact after the next pages were read')
  const thirdText = Buffer.from(third.json!).toString('utf8')
  const fourth = await read(45)
  assert.equal(Buffer.from(third.json!).toString('utf8'), thirdText)
  assert.equal(Buffer.from(third.json!).toString('utf8'), renderJsonBatch(third.rows, s2.info.storeId))
  assert.equal(Buffer.from(fourth.json!).toString('utf8'), renderJsonBatch(fourth.rows, s2.info.storeId))
  assert.deepEqual(fourth.rows.map(r => r.seq), Array.from({ length: 15 }, (_, i) => 46 + i))
})

test('a page with an event only protobufjs decodes is left for the main thread to render', async (t) => {
  const dir = tempDir(t)
  const s1 = await open(t, dir)
  const ce = new protobuf.Root()
  protobuf.parse(protoSource('cloudevents.proto'), ce, { keepCase: true })
  for (const name of ['google/protobuf/any.proto', 'google/protobuf/timestamp.proto']) ce.addJSON((protobuf.common as unknown as Record<string, { nested: Record<string, protobuf.AnyNestedObject> }>)[name]!.nested)
  const CE = ce.lookupType('io.cloudevents.v1.CloudEvent')
  const foreign = CE.encode(CE.fromObject({ id: 'f', source: '/s', spec_version: '1.0', type: 't', attributes: { flag: { ce_boolean: true } }, text_data: 'x' })).finish()
  await s1.append({ ingestMs: Date.now(), routes: s1.routesAll, body: foreign, eventId: 'f' })
  await s1.close()
  const s2 = await open(t, dir)
  const page = await s2.readRenderedPage(s2.uplinks.get('a')!.slot, 0, 10, 1 << 20)
  assert.equal(page.json, null)
  assert.equal(page.rows.length, 1)
  assert.match(renderJsonBatch(page.rows, s2.info.storeId), /"flag":"true"/)
})
