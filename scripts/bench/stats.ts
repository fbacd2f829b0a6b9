// Shared by the load generators and the receiver: a latency recorder that keeps every sample in a
// preallocated Float64Array (4 MB per 500k samples; no per-sample allocation) and marks one-second
// boundaries, so the final report has exact percentiles overall and per second.
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { LoadgenResult } from './loadgen.js'

export interface Percentiles { count: number, p50: number, p99: number, max: number, mean: number }

export interface TimelinePoint {
  /** Seconds since the recorder started (end of the one-second window). */
  t: number
  /** Samples recorded in this window (= completed messages per second). */
  count: number
  p50: number
  p99: number
}

const round = (x: number, digits = 3): number => Number(x.toFixed(digits))

/** Nearest-rank percentile of an ascending array (p in 0..100). */
export function percentile (sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return 0
  const rank = Math.ceil(p / 100 * sorted.length) - 1
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))]!
}

export function summarize (samples: Float64Array): Percentiles {
  if (samples.length === 0) return { count: 0, p50: 0, p99: 0, max: 0, mean: 0 }
  const sorted = Float64Array.from(samples).sort()
  let sum = 0
  for (let i = 0; i < sorted.length; i++) sum += sorted[i]!
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted[sorted.length - 1]!),
    mean: round(sum / sorted.length),
  }
}

/** Latency samples in milliseconds, with a timeline of one-second windows. */
export class Recorder {
  private buf: Float64Array
  private n = 0
  private readonly marks: number[] = []
  private readonly startedAt: number
  private timer: NodeJS.Timeout | null = null

  constructor (expected: number, private readonly now: () => number = () => performance.now()) {
    this.buf = new Float64Array(Math.max(1024, expected))
    this.startedAt = now()
  }

  get count (): number { return this.n }

  /** Starts marking second boundaries (call once traffic starts). */
  startTimeline (): void {
    this.timer = setInterval(() => this.marks.push(this.n), 1000)
    this.timer.unref()
  }

  record (ms: number): void {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2)
      bigger.set(this.buf)
      this.buf = bigger
    }
    this.buf[this.n++] = ms
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  elapsedMs (): number { return this.now() - this.startedAt }

  summary (): Percentiles { return summarize(this.buf.subarray(0, this.n)) }

  /**
   * The samples after the first `seconds` of the timeline: steady state, once the JIT has compiled
   * the hot paths and the connections are up. Null when the run was not longer than that.
   */
  summaryAfter (seconds: number): Percentiles | null {
    if (this.marks.length <= seconds) return null
    return summarize(this.buf.subarray(this.marks[seconds - 1]!, this.n))
  }

  timeline (): TimelinePoint[] {
    const out: TimelinePoint[] = []
    let from = 0
    for (const [i, to] of [...this.marks, this.n].entries()) {
      const slice = Float64Array.from(this.buf.subarray(from, to)).sort()
      out.push({ t: i + 1, count: to - from, p50: round(percentile(slice, 50)), p99: round(percentile(slice, 99)) })
      from = to
    }
    // The last partial window is noise unless it holds samples.
    while (out.length > 0 && out[out.length - 1]!.count === 0) out.pop()
    return out
  }
}

/** Wall-clock time in microseconds, comparable between processes on one machine. */
export function wallMicros (): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000)
}

/** CPU seconds (user + system) this process used so far. */
export function ownCpuSeconds (): number {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

/**
 * The payload every load generator sends: a JSON object of exactly `size` bytes whose `t` is the send
 * time in microseconds as 16 digits at a fixed offset, patched in place per message.
 */
export function payloadTemplate (size: number): { buf: Buffer, tOffset: number } {
  const head = '{"t":'
  const stamp = '0'.repeat(16)
  const mid = ',"p":"'
  const tail = '"}'
  const fill = size - head.length - stamp.length - mid.length - tail.length
  if (fill < 0) throw new Error(`--size: at least ${size - fill} bytes`)
  return { buf: Buffer.from(head + stamp + mid + 'x'.repeat(fill) + tail, 'latin1'), tOffset: head.length }
}

/** Writes n as exactly 16 ASCII digits at buf[offset..offset+16), without allocating. */
export function writeStamp (buf: Buffer, offset: number, n: number): void {
  for (let i = offset + 15; i >= offset; i--) {
    buf[i] = 48 + (n % 10)
    n = Math.floor(n / 10)
  }
}

/** Every `"t":<16 digits>` in a text (the send stamps in a batch of events). */
export function stampsIn (text: string, each: (micros: number) => void): void {
  let i = text.indexOf('"t":')
  while (i !== -1) {
    const n = Number(text.slice(i + 4, i + 20))
    if (Number.isFinite(n)) each(n)
    i = text.indexOf('"t":', i + 20)
  }
}

/** True when the module at `url` is the script node was started with (not imported by a test). */
export function invokedDirectly (url: string): boolean {
  const argv1 = process.argv[1]
  if (argv1 === undefined) return false
  try {
    return fs.realpathSync(argv1) === fileURLToPath(url)
  } catch {
    return false
  }
}

/** A load generator's result from what every generator counts; `rate`, `late` and `connectSeconds` default to 0. */
/** Seconds at the start of a run that the steady-state percentiles leave out (the totals keep them). */
export const WARMUP_SECONDS = 2

export function loadResult (
  o: { protocol: LoadgenResult['protocol'], connections: number, window: number, size: number, rate?: number },
  c: { sent: number, acked: number, late?: number, errors: string[], connectSeconds?: number, seconds: number, cpuSeconds: number, rec: Recorder },
): LoadgenResult {
  return {
    protocol: o.protocol,
    connections: o.connections,
    window: o.window,
    size: o.size,
    rate: o.rate ?? 0,
    sent: c.sent,
    acked: c.acked,
    late: c.late ?? 0,
    errors: c.errors.slice(0, 20),
    connectSeconds: Number((c.connectSeconds ?? 0).toFixed(3)),
    seconds: Number(c.seconds.toFixed(3)),
    msgsPerSec: c.seconds > 0 ? Math.round(c.acked / c.seconds) : 0,
    ackMs: c.rec.summary(),
    ackMsAfterWarmup: c.rec.summaryAfter(WARMUP_SECONDS),
    timeline: c.rec.timeline(),
    cpuSeconds: Number(c.cpuSeconds.toFixed(3)),
    cpuUtilisation: c.seconds > 0 ? Number((c.cpuSeconds / c.seconds).toFixed(3)) : 0,
  }
}
