import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { HeapTrim } from '../../gateway/heap-trim.js'
import { configSchema } from '../../config/schema.js'
import type { Logger } from 'pino'

/** Keeps the event loop busy for `ms` (what a gateway serving devices looks like to the trim). */
function spin (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) { /* busy */ }
}

test('a quiet process gets its garbage collected once, and again only after the heap has grown', async () => {
  // Garbage in the old generation, as a burst of connections leaves it.
  let junk: Array<{ i: number, s: string }> | null = Array.from({ length: 400_000 }, (_, i) => ({ i, s: `item-${i}` }))
  assert.equal(junk.length, 400_000)
  junk = null
  const trim = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 2, minGrowthBytes: 16 * 2 ** 20 })
  await sleep(150)
  assert.equal(trim.look(), null, 'one quiet look is not enough')
  await sleep(150)
  const first = trim.look()
  assert.notEqual(first, null, 'two quiet looks in a row collect')
  assert.ok(first!.heapUsedAfter < first!.heapUsedBefore - 8 * 2 ** 20, `the garbage went: ${JSON.stringify(first)}`)
  assert.equal(trim.trims, 1)
  await sleep(150)
  trim.look()
  await sleep(150)
  assert.equal(trim.look(), null, 'no growth since: no second collection')
  // Held until the collection below: garbage this young could already be gone in a scavenge before
  // the look, and the heap in use would no longer show the growth (it failed so about 1 run in 3).
  let more: string[] | null = Array.from({ length: 300_000 }, (_, i) => `grown-${i}-${'x'.repeat(40)}`)
  assert.equal(more.length, 300_000)
  // The look whose window holds the allocation may count as quiet or not (how long it took), so
  // the collection comes at the first, second or third look: the first that collects is the one.
  let second: ReturnType<HeapTrim['look']> = null
  for (let i = 0; i < 3 && second === null; i++) {
    await sleep(150)
    second = trim.look()
  }
  assert.equal(more.length, 300_000)
  more = null
  assert.notEqual(second, null, 'grown by more than minGrowthBytes: collected again')
  assert.equal(trim.trims, 2)
})

test('a busy event loop is never interrupted by a collection', async () => {
  const trim = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 2, minGrowthBytes: 0 })
  for (let i = 0; i < 4; i++) {
    spin(60)
    assert.equal(trim.look(), null, `busy look ${i}`)
  }
  await sleep(60)
  assert.equal(trim.look(), null, 'the first quiet look after busy ones only starts counting')
  await sleep(60)
  assert.notEqual(trim.look(), null)
})

test('quiet looks hand freed C heap memory back; busy ones do not; without the addon it says why once and stops', async () => {
  let calls = 0
  const trim = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 2, minGrowthBytes: 2 ** 40, trimMalloc: () => { calls++; return calls === 1 } })
  const quietLook = async (): Promise<ReturnType<HeapTrim['look']>> => { await sleep(60); return trim.look() }
  spin(60)
  trim.look()
  await quietLook()
  assert.equal(calls, 0, 'not before two quiet looks')
  assert.notEqual(await quietLook(), null, 'the start-up collection')
  assert.equal(calls, 1, 'trimmed after it')
  assert.equal(trim.lastMallocTrim?.released, true)
  await quietLook()
  assert.equal(calls, 1, 'a collection starts the count of quiet looks again')
  assert.equal(await quietLook(), null, 'no growth: no collection')
  assert.equal(calls, 2, 'but trimmed all the same')
  assert.equal(trim.lastMallocTrim?.released, false)
  await quietLook()
  assert.equal(calls, 3, 'and on every quiet look after')
  assert.equal(trim.mallocTrims, 3)
  spin(60)
  trim.look()
  assert.equal(calls, 3, 'a busy look does not trim')

  const logged: Array<[unknown, string]> = []
  const log = { info: (obj: unknown, msg: string) => logged.push([obj, msg]), debug: () => {} } as unknown as Logger
  let tries = 0
  const without = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 1, log, trimMalloc: () => { tries++; return null } })
  for (let i = 0; i < 3; i++) {
    await sleep(60)
    without.look()
  }
  assert.equal(tries, 1, 'unavailable: asked once')
  assert.equal(logged.length, 1)
  assert.match(logged[0]![1], /malloc_trim unavailable/)
  assert.equal(without.mallocTrims, 0)
})

test('gateway.gcWhenIdle is on by default and can be turned off', () => {
  assert.equal(configSchema.parse({}).gateway.gcWhenIdle, true)
  assert.equal(configSchema.parse({ gateway: { gcWhenIdle: false } }).gateway.gcWhenIdle, false)
  assert.throws(() => configSchema.parse({ gateway: { gcWhenIdle: 'yes' } }))
})
