// Gives memory back once the gateway goes quiet. V8 collects its old generation when the heap grows,
// not when the process idles: after a burst (10,000 devices reconnecting, say, or a backlog ingested)
// the garbage it left can stay in the heap, and in RSS, until the next burst. Measured with 10,000
// idle MQTT connections: 92 MiB of live heap, 164 MiB in use until a full collection, and whether V8's
// own memory reducer ran within 15 s varied from run to run (RSS 185 or 285 MiB).
//
// Every `intervalMs` (2 s) this looks at the event loop's utilisation; after `quietLooks` (3) looks in
// a row below `quietUtilization` (5 %), so 6–8 s after a burst ends, if the heap in use has grown by
// `minGrowthBytes` since the last full collection (or none has run since start-up, whose garbage is
// given back once), it runs one. While devices keep the loop busy it never runs: V8 collects as it
// always does, and no message waits for it.
//
// The heap V8 holds can grow without the heap in use growing: a burst of ingest (a backlog of 1M
// events at 25k msgs/s, say) takes the young generation from 1 to its 32 MiB limit, and V8 keeps it
// there until a collection finds the allocation rate low. Measured after that ingest: 20 MiB in use of
// 55 MiB held, 32 of it young generation, still held 15 s later. So a quiet look also collects when
// the heap held has grown by `minHeldGrowthBytes` since the last collection. V8 only gives the young
// generation back when it judges the allocation rate low, which a collection soon after the burst may
// not (after a 1M-event ingest the first quiet collection mostly did, sometimes only the second or
// third, and once none of 3 within 6 s): a collection that leaves the young generation at 8 MiB or
// more is tried again at the next quiet look, up to `shrinkTries` (10) times. Grown in the old
// generation instead, the heap held is data in use (10,000 connections, say) and counts as the new
// level.
//
// On every look that counts as quiet it also hands the C heap's free memory back to the system
// (glibc's malloc_trim, gateway/malloc.ts): what threads that came and went (the config loader, the
// store's reader) and a burst's buffers left in the malloc arenas. An idle gateway: RSS 84.9 → 77.6 MiB. It walks the arenas'
// free lists and costs well under a millisecond when there is nothing to give back.
import v8 from 'node:v8'
import vm from 'node:vm'
import { performance, type EventLoopUtilization } from 'node:perf_hooks'
import type { Logger } from 'pino'
import { mallocTrimUnavailable, trimMalloc } from './malloc.js'

export interface HeapTrimOptions {
  intervalMs?: number
  /** Event-loop utilisation (0..1) under which a look counts as quiet. */
  quietUtilization?: number
  quietLooks?: number
  minGrowthBytes?: number
  /** Growth of the heap V8 holds (total_heap_size) since the last collection that also makes one. */
  minHeldGrowthBytes?: number
  /** Collections in a row that may leave the young generation grown before the size held counts as the level. */
  shrinkTries?: number
  log?: Logger | undefined
  onTrim?: ((result: HeapTrimResult) => void) | undefined
  /** malloc_trim(0), or null when unavailable (tests inject one; null turns it off). */
  trimMalloc?: (() => boolean | null) | null
  onMallocTrim?: ((result: MallocTrimResult) => void) | undefined
}

export interface MallocTrimResult {
  /** malloc_trim's answer: whether any memory went back to the system. */
  released: boolean
  rssBefore: number
  rssAfter: number
  pauseMs: number
}

export interface HeapTrimResult {
  heapUsedBefore: number
  heapUsedAfter: number
  /** The heap V8 holds (v8.getHeapStatistics().total_heap_size) before and after. */
  heapHeldBefore: number
  heapHeldAfter: number
  pauseMs: number
}

let collect: (() => void) | null = null

/** A young generation this large after a full collection is one V8 grew for a burst and may give back. */
const YOUNG_GROWN_BYTES = 8 * 2 ** 20

function youngGeneration (): number {
  return v8.getHeapSpaceStatistics().find(s => s.space_name === 'new_space')?.space_size ?? 0
}

/**
 * A full garbage collection. Node offers it only behind --expose-gc; the flag, set at run time, gives
 * the function to contexts created afterwards, so one is made for it (the gateway's own global stays
 * without `gc`). Called without arguments: on Node 20 any options object, `{ type: 'major' }`
 * included, runs only a minor collection (Node 22 honours it).
 */
export function fullCollection (): void {
  if (collect === null) {
    const existing = (globalThis as { gc?: () => void }).gc
    if (typeof existing === 'function') {
      collect = existing
    } else {
      v8.setFlagsFromString('--expose-gc')
      collect = vm.runInNewContext('gc') as () => void
    }
  }
  collect()
}

export class HeapTrim {
  private readonly intervalMs: number
  private readonly quietUtilization: number
  private readonly quietLooks: number
  private readonly minGrowthBytes: number
  private readonly minHeldGrowthBytes: number
  private readonly shrinkTries: number
  private timer: NodeJS.Timeout | null = null
  private elu: EventLoopUtilization = performance.eventLoopUtilization()
  private quiet = 0
  /** Heap in use after the last full collection; null until the first (start-up garbage). */
  private baseline: number | null = null
  /** Heap held after the last collection that set the level; null until the first. */
  private heldBaseline: number | null = null
  /** Collections in a row that left the heap held above heldBaseline + minHeldGrowthBytes. */
  private failedShrinks = 0
  trims = 0
  last: HeapTrimResult | null = null
  mallocTrims = 0
  lastMallocTrim: MallocTrimResult | null = null
  private trimMallocFn: (() => boolean | null) | null

  constructor (private readonly opts: HeapTrimOptions = {}) {
    this.intervalMs = opts.intervalMs ?? 2000
    this.quietUtilization = opts.quietUtilization ?? 0.05
    this.quietLooks = opts.quietLooks ?? 3
    this.minGrowthBytes = opts.minGrowthBytes ?? 32 * 2 ** 20
    this.minHeldGrowthBytes = opts.minHeldGrowthBytes ?? 16 * 2 ** 20
    this.shrinkTries = opts.shrinkTries ?? 10
    this.trimMallocFn = opts.trimMalloc === undefined ? trimMalloc : opts.trimMalloc
  }

  start (): void {
    if (this.timer !== null) return
    this.elu = performance.eventLoopUtilization()
    this.timer = setInterval(() => this.look(), this.intervalMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /**
   * One look (the timer's; tests call it directly). Returns what a collection it ran did, else null;
   * a quiet look also trims the C heap (lastMallocTrim).
   */
  look (): HeapTrimResult | null {
    const now = performance.eventLoopUtilization()
    const busy = performance.eventLoopUtilization(now, this.elu).utilization
    this.elu = now
    this.quiet = busy < this.quietUtilization ? this.quiet + 1 : 0
    if (this.quiet < this.quietLooks) return null
    const result = this.collect()
    this.giveBack()
    // The next look measures the devices' load, not this look's own collection.
    this.elu = performance.eventLoopUtilization()
    return result
  }

  /** The full collection, when the heap in use or the heap held has grown enough since the last. */
  private collect (): HeapTrimResult | null {
    const before = v8.getHeapStatistics()
    const usedGrew = this.baseline === null || before.used_heap_size - this.baseline >= this.minGrowthBytes
    if (!usedGrew && !this.heldGrown(before.total_heap_size)) return null
    const started = performance.now()
    fullCollection()
    const after = v8.getHeapStatistics()
    const result: HeapTrimResult = {
      heapUsedBefore: before.used_heap_size,
      heapUsedAfter: after.used_heap_size,
      heapHeldBefore: before.total_heap_size,
      heapHeldAfter: after.total_heap_size,
      pauseMs: Number((performance.now() - started).toFixed(1)),
    }
    this.baseline = result.heapUsedAfter
    // Still grown with the young generation still large: tried again at the next quiet look, unless
    // that was the last try. Grown in the old generation, it is data in use: the new level.
    const retry = this.heldGrown(result.heapHeldAfter) && youngGeneration() >= YOUNG_GROWN_BYTES &&
      this.failedShrinks + 1 < this.shrinkTries
    if (retry) {
      this.failedShrinks++
    } else {
      this.heldBaseline = result.heapHeldAfter
      this.failedShrinks = 0
    }
    this.quiet = retry ? this.quietLooks - 1 : 0
    this.trims++
    this.last = result
    this.opts.log?.debug(result, 'quiet: heap collected')
    this.opts.onTrim?.(result)
    return result
  }

  private heldGrown (held: number): boolean {
    return this.heldBaseline !== null && held - this.heldBaseline >= this.minHeldGrowthBytes
  }

  /** malloc_trim(0); without the addon, says why once and stops trying. */
  private giveBack (): void {
    const trim = this.trimMallocFn
    if (trim === null) return
    const rssBefore = process.memoryUsage.rss()
    const started = performance.now()
    const released = trim()
    if (released === null) {
      this.trimMallocFn = null
      this.opts.log?.info({ reason: mallocTrimUnavailable() }, 'freed C heap memory cannot be handed back to the system when idle (malloc_trim unavailable)')
      return
    }
    const result: MallocTrimResult = { released, rssBefore, rssAfter: process.memoryUsage.rss(), pauseMs: Number((performance.now() - started).toFixed(2)) }
    this.mallocTrims++
    this.lastMallocTrim = result
    if (released) this.opts.log?.debug(result, 'quiet: C heap trimmed')
    this.opts.onMallocTrim?.(result)
  }
}
