// The heap V8 holds, apart from the heap in use: in a file of its own, so that the young generation
// starts at its initial size (other tests' allocations grow it).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import v8 from 'node:v8'
import { setTimeout as sleep } from 'node:timers/promises'
import { HeapTrim, type HeapTrimResult } from '../../gateway/heap-trim.js'

const newSpace = (): number => v8.getHeapSpaceStatistics().find(s => s.space_name === 'new_space')!.space_size
const MiB = 2 ** 20

test('after a burst, a quiet process gets the young generation back although the heap in use did not grow', async () => {
  const trim = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 1, minGrowthBytes: 2 ** 40, minHeldGrowthBytes: 8 * MiB, shrinkTries: 10, trimMalloc: null })
  await sleep(60)
  assert.notEqual(trim.look(), null, 'the start-up collection sets the level')
  // A burst as ingest makes it: short-lived objects, some surviving a scavenge or two. V8 grows the
  // young generation to its limit and keeps it.
  let window: Array<{ i: number, s: string }> = []
  const end = performance.now() + 1500
  while (performance.now() < end && newSpace() < 32 * MiB) {
    for (let i = 0; i < 1000; i++) window.push({ i, s: `event-${i}` })
    if (window.length > 200_000) window = []
  }
  window = []
  assert.equal(trim.look(), null, 'the burst was in this look\'s window: not quiet')
  const grown = newSpace()
  assert.ok(grown >= 16 * MiB, `the burst grew the young generation: ${grown / MiB} MiB`)
  assert.ok(v8.getHeapStatistics().used_heap_size < 2 ** 40)
  // V8 shrinks it only once it judges the allocation rate low: the first collections may leave it,
  // and the trim tries again on the quiet looks after.
  let shrunk: HeapTrimResult | null = null
  const collections: HeapTrimResult[] = []
  for (let look = 0; look < 10 && shrunk === null; look++) {
    await sleep(1000)
    const r = trim.look()
    assert.notEqual(r, null, `look ${look}: the heap held is still grown, so it collects`)
    collections.push(r!)
    if (newSpace() <= grown / 4) shrunk = r
  }
  assert.notEqual(shrunk, null, `the young generation came back: ${JSON.stringify(collections)}, now ${newSpace() / MiB} MiB`)
  assert.ok(shrunk!.heapHeldAfter <= shrunk!.heapHeldBefore - grown / 2, `and the heap held with it: ${JSON.stringify(shrunk)}`)
  await sleep(60)
  assert.equal(trim.look(), null, 'back at the level: no more collections')
  assert.equal(window.length, 0)
})

test('a heap held that stays grown because it is in use becomes the level: no more collections for it', async () => {
  const trim = new HeapTrim({ intervalMs: 1000, quietUtilization: 0.5, quietLooks: 1, minGrowthBytes: 2 ** 40, minHeldGrowthBytes: 8 * MiB, shrinkTries: 3, trimMalloc: null })
  await sleep(60)
  assert.notEqual(trim.look(), null, 'the start-up collection sets the level')
  // Live data, as 10,000 connected devices are: no collection can give it back.
  const live = Array.from({ length: 300_000 }, (_, i) => ({ i, s: `device-${i}-${'x'.repeat(24)}` }))
  assert.equal(trim.look(), null, 'building it was in this look\'s window: not quiet')
  const results: Array<HeapTrimResult | null> = []
  for (let i = 0; i < 6; i++) {
    await sleep(60)
    results.push(trim.look())
  }
  const collected = results.filter(r => r !== null)
  // Once, or again while V8 still holds the young generation the allocation grew (at most shrinkTries).
  assert.ok(collected.length >= 1 && collected.length <= 3, `collections: ${results.map(r => r !== null).join(', ')}`)
  const last = results.map(r => r !== null).lastIndexOf(true)
  assert.ok(last <= 3, `then none: the heap held is the new level (${results.map(r => r !== null).join(', ')})`)
  assert.ok(collected.at(-1)!.heapHeldAfter >= collected[0]!.heapHeldBefore - 8 * MiB, 'the heap held stayed grown')
  assert.equal(live.length, 300_000)
})
