import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RecentTail, type TailRow } from '../../store-forward/tail.js'

const row = (seq: number, routes = 1, size = 10): TailRow => ({ seq, ingestMs: seq, routes, body: new Uint8Array(size) })

test('the tail answers only for ranges it holds completely', () => {
  const tail = new RecentTail({ rows: 4, bytes: 1 << 20 }, 10)
  assert.deepEqual(tail.read(0, 10, 10, 100, 1 << 20), [], 'nothing new since it started')
  assert.equal(tail.read(0, 9, 10, 100, 1 << 20), null, 'before its start: ask SQLite')
  tail.append(10, 13, [row(11), row(12), row(13)])
  assert.deepEqual(tail.read(0, 10, 13, 100, 1 << 20)!.map(r => r.seq), [11, 12, 13])
  assert.deepEqual(tail.read(0, 11, 12, 100, 1 << 20)!.map(r => r.seq), [12], 'bounded by upTo')
  assert.equal(tail.read(0, 10, 14, 100, 1 << 20), null, 'beyond what it was told about')
  // Two more rows push the oldest out (4 rows at most): reads from before them go to SQLite.
  tail.append(13, 15, [row(14), row(15)])
  assert.equal(tail.size, 4)
  assert.equal(tail.read(0, 10, 15, 100, 1 << 20), null)
  assert.deepEqual(tail.read(0, 11, 15, 100, 1 << 20)!.map(r => r.seq), [12, 13, 14, 15])
})

test('a commit that does not continue where the tail ends resets it', () => {
  const tail = new RecentTail({ rows: 100, bytes: 1 << 20 }, 0)
  tail.append(0, 2, [row(1), row(2)])
  // Rows 3..5 were appended elsewhere (dead-letter replay): the next commit starts at 5.
  tail.append(5, 6, [row(6)])
  assert.equal(tail.read(0, 2, 6, 100, 1 << 20), null)
  assert.equal(tail.size, 0)
  tail.append(6, 7, [row(7)])
  assert.deepEqual(tail.read(0, 6, 7, 100, 1 << 20)!.map(r => r.seq), [7])
})

test('routes select rows per uplink, also beyond 31 bits; unrouted rows are not kept', () => {
  const tail = new RecentTail({ rows: 100, bytes: 1 << 20 }, 0)
  tail.append(0, 4, [row(1, 2 ** 40), row(2, 0), row(3, 1 + 2 ** 40), row(4, 1)])
  assert.equal(tail.size, 3)
  assert.deepEqual(tail.read(40, 0, 4, 100, 1 << 20)!.map(r => r.seq), [1, 3])
  assert.deepEqual(tail.read(0, 0, 4, 100, 1 << 20)!.map(r => r.seq), [3, 4])
  assert.deepEqual(tail.read(5, 0, 4, 100, 1 << 20), [])
})

test('the byte limits: at most maxBytes per page (the first row always), at most limits.bytes held', () => {
  const tail = new RecentTail({ rows: 100, bytes: 250 }, 0)
  tail.append(0, 3, [row(1, 1, 100), row(2, 1, 100), row(3, 1, 100)])
  assert.equal(tail.heldBytes, 200, 'the oldest row went')
  assert.deepEqual(tail.read(0, 1, 3, 100, 150)!.map(r => r.seq), [2])
  assert.deepEqual(tail.read(0, 1, 3, 100, 50)!.map(r => r.seq), [2], 'one row even when it alone is over')
  assert.deepEqual(tail.read(0, 1, 3, 1, 1 << 20)!.map(r => r.seq), [2])
})

test('many commits: compaction keeps every read correct', () => {
  const tail = new RecentTail({ rows: 3000, bytes: 1 << 30 }, 0)
  let seq = 0
  for (let c = 0; c < 500; c++) {
    const rows = Array.from({ length: 10 }, () => row(++seq))
    tail.append(seq - 10, seq, rows)
  }
  assert.equal(tail.size, 3000)
  assert.deepEqual(tail.read(0, seq - 5, seq, 100, 1 << 20)!.map(r => r.seq), [seq - 4, seq - 3, seq - 2, seq - 1, seq])
  assert.equal(tail.read(0, seq - 3001, seq, 1, 1 << 20), null)
  assert.deepEqual(tail.read(0, seq - 3000, seq, 1, 1 << 20)!.map(r => r.seq), [seq - 2999])
})

test('trimTo forgets what every forwarder has read; reads below it go to SQLite', () => {
  const tail = new RecentTail({ rows: 100, bytes: 1 << 20 }, 0)
  tail.append(0, 5, [row(1), row(2), row(3), row(4), row(5)])
  tail.trimTo(3)
  assert.equal(tail.size, 2)
  assert.equal(tail.heldBytes, 20)
  assert.deepEqual(tail.read(0, 3, 5, 100, 1 << 20)!.map(r => r.seq), [4, 5])
  assert.equal(tail.read(0, 2, 5, 100, 1 << 20), null)
  tail.trimTo(2)
  assert.equal(tail.size, 2, 'never backwards')
  tail.trimTo(5)
  assert.equal(tail.size, 0)
  assert.deepEqual(tail.read(0, 5, 5, 100, 1 << 20), [])
  tail.append(5, 6, [row(6)])
  assert.deepEqual(tail.read(0, 5, 6, 100, 1 << 20)!.map(r => r.seq), [6])
})
