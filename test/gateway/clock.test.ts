import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parse as uuidParse, v7 as uuidv7 } from 'uuid'
import { Clock, IdGenerator } from '../../gateway/clock.js'

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const FLOOR = Date.parse('2024-05-01T12:00:00.000Z')

// The 48-bit unix_ts_ms of a UUIDv7 (RFC 9562 §5.7).
function idMs (id: string): number {
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16)
}

function manualWall (start: number): { wall: () => number, set: (ms: number) => void } {
  let now = start
  return { wall: () => now, set: (ms) => { now = ms } }
}

test('a wall clock behind the floor reads as the floor until it catches up', () => {
  const w = manualWall(0) // a Raspberry Pi booting at 1970
  const clock = new Clock({ floorMs: FLOOR, wall: w.wall })
  assert.equal(clock.now(), FLOOR)
  assert.equal(clock.synced(), false)
  w.set(FLOOR - 5000)
  assert.equal(clock.now(), FLOOR)
  w.set(FLOOR + 1234)
  assert.equal(clock.now(), FLOOR + 1234)
  assert.equal(clock.synced(), true)
  assert.equal(clock.floorMs, FLOOR + 1234)
})

test('time never goes backwards when the wall clock steps back', () => {
  const w = manualWall(FLOOR + 10_000)
  const clock = new Clock({ floorMs: FLOOR, wall: w.wall })
  assert.equal(clock.now(), FLOOR + 10_000)
  w.set(FLOOR + 2_000) // NTP steps back
  assert.equal(clock.now(), FLOOR + 10_000)
  assert.equal(clock.floorMs, FLOOR + 10_000, 'the value to persist is the highest handed out')
  assert.equal(clock.synced(), true, 'synced compares with the floor persisted by the previous run')
  w.set(FLOOR + 10_001)
  assert.equal(clock.now(), FLOOR + 10_001)
})

test('floorMs starts at the persisted floor and a garbled floor counts as none', () => {
  assert.equal(new Clock({ floorMs: FLOOR, wall: () => 0 }).floorMs, FLOOR)
  for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY]) {
    const clock = new Clock({ floorMs: bad, wall: () => 5 })
    assert.equal(clock.now(), 5)
    assert.equal(clock.synced(), true)
  }
})

test('nowIso is RFC 3339 with milliseconds in UTC', () => {
  const clock = new Clock({ floorMs: FLOOR + 7, wall: () => 0 })
  assert.equal(clock.nowIso(), '2024-05-01T12:00:00.007Z')
  assert.match(new Clock({ floorMs: 0 }).nowIso(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
})

test('100k ids are UUIDv7 and strictly increasing as strings', () => {
  const ids = new IdGenerator(new Clock({ floorMs: 0 }))
  let prev = ids.next()
  assert.match(prev, UUID_V7)
  for (let i = 0; i < 100_000; i++) {
    const id = ids.next()
    assert.ok(id > prev, `${id} > ${prev}`)
    prev = id
  }
  assert.match(prev, UUID_V7)
})

test('an id is the text uuid makes of its time stamp, counter and random bits', () => {
  const msecs = FLOOR + 123
  let seeds = 0
  const ids = new IdGenerator(new Clock({ floorMs: FLOOR, wall: () => msecs }), { seed: () => 0x1234_5678 + seeds++ })
  for (let i = 0; i < 1000; i++) {
    const id = ids.next(msecs)
    // Same millisecond: the counter starts at the first seed and counts up.
    const expected = uuidv7({ msecs, seq: 0x1234_5678 + i, random: uuidParse(id) })
    assert.equal(id, expected)
  }
})

test('ids stay increasing within one millisecond and across a clock step back', () => {
  const w = manualWall(FLOOR + 100)
  const ids = new IdGenerator(new Clock({ floorMs: FLOOR, wall: w.wall }))
  const seen: string[] = []
  for (let i = 0; i < 1000; i++) seen.push(ids.next())
  w.set(FLOOR - 60_000)
  for (let i = 0; i < 1000; i++) seen.push(ids.next())
  w.set(FLOOR + 101)
  for (let i = 0; i < 10; i++) seen.push(ids.next())
  for (let i = 1; i < seen.length; i++) assert.ok((seen[i] as string) > (seen[i - 1] as string), `id ${i}`)
  assert.equal(idMs(seen[0] as string), FLOOR + 100)
  assert.equal(idMs(seen[1999] as string), FLOOR + 100, 'the time stamp follows the clock, which holds at its last value')
  assert.equal(idMs(seen[2000] as string), FLOOR + 101)
})

test('an id follows the clock floor, not the wall clock', () => {
  const ids = new IdGenerator(new Clock({ floorMs: FLOOR, wall: () => 0 }))
  assert.equal(idMs(ids.next()), FLOOR)
})

test('next(msecs) stamps the given time so that an event\'s time and id agree', () => {
  const clock = new Clock({ floorMs: FLOOR, wall: () => 0 })
  const ids = new IdGenerator(clock)
  const ms = clock.now()
  assert.equal(idMs(ids.next(ms)), ms)
  assert.equal(idMs(ids.next(ms - 1000)), ms, 'an earlier time is raised to the last id\'s')
  assert.equal(idMs(ids.next(ms + 5)), ms + 5)
})

test('a new millisecond starts the counter from a random seed with its top bit clear', () => {
  const w = manualWall(FLOOR)
  const clock = new Clock({ floorMs: FLOOR, wall: w.wall })
  const gen = new IdGenerator(clock)
  const counters = new Set<string>()
  for (let i = 0; i < 50; i++) {
    w.set(FLOOR + i)
    const id = gen.next()
    // The counter's top bit is the first bit of rand_a: the third hex digit of the third group.
    assert.ok(parseInt(id.slice(15, 16), 16) < 8, id)
    counters.add(id.slice(15, 18))
  }
  assert.ok(counters.size > 40, 'seeds are random')
})

test('a counter overflow moves the time stamp one ms ahead and ids keep increasing', () => {
  const ids = new IdGenerator(new Clock({ floorMs: FLOOR, wall: () => 0 }), { seed: () => 0xffff_fffe })
  const a = ids.next()
  const b = ids.next()
  const c = ids.next() // the counter passed 2^32 - 1
  assert.ok(a < b && b < c)
  assert.deepEqual([a, b, c].map(idMs), [FLOOR, FLOOR, FLOOR + 1])
  assert.match(c, UUID_V7)
})
