// One forwarder per uplink: reads its routed events in sequence order in short pages, sends one
// batch at a time through its sink, and moves its own cursor only after the sink says delivered.
// Outcome classes (DESIGN.md "Uplinks"): retry with capped exponential backoff and full jitter
// (Retry-After wins), bisect poison into dead letters, keep everything when the uplink refuses us.
//
// Draining a backlog is pipelined: while one batch is in flight the next page is read and its request
// body rendered (and compressed), so the only serial step is the request itself. Memory stays at two
// pages whatever the backlog. With live traffic the batch size follows rate × round-trip time: a batch
// goes out as soon as it holds what arrives during one request (at least one event), and waits up to
// batchMaxDelay for that many, never beyond batchMaxEvents/batchMaxBytes.
import type { Logger } from 'pino'
import type { Metrics } from '../gateway/metrics.js'
import type { Sink, SinkBatch, SinkEvent, SendOutcome, EndpointReport } from './sink.js'
import type { Store } from './store.js'
import { bodySize } from './protocol.js'

export interface ForwarderOptions {
  name: string
  slot: number
  sink: Sink
  store: Store
  batchMaxEvents: number
  batchMaxBytes: number
  batchMaxDelayMs: number
  retryInitialMs: number
  retryMaxMs: number
  log: Logger
  metrics: Metrics
  random?: () => number
}

export type ForwarderState = 'idle' | 'sending' | 'backoff' | 'rejected' | 'stopped'

/**
 * A page read ahead of the batch in flight: rows in (after, horizon] routed to this uplink. `release`
 * hands its buffers back to the store's reader thread once the batch was delivered (RenderedPage).
 */
interface Page { after: number, horizon: number, full: boolean, batch: SinkBatch, release: (() => void) | undefined }

/** The shortest window a live batch collects arrivals over is batchMaxDelay divided by this. */
const BATCH_WINDOW_DIVISOR = 4
/** Weight of the newest sample in the round-trip average. */
const EWMA = 0.2
/** Shortest interval over which the arrival rate is sampled (ms). */
const RATE_SAMPLE_MS = 100
/** Age at which an arrival-rate sample has lost half its weight (ms). */
const RATE_HALF_LIFE_MS = 1000

/** Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): uniform in [0, min(cap, base·2^n)]. */
export function backoffDelay (attempt: number, initialMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * ceiling)
}

export class Forwarder {
  state: ForwarderState = 'idle'
  /** Highest sequence handed to the sink and delivered or dead-lettered (in memory; durable via acks). */
  position: number
  /** Ingest time of the oldest event not yet delivered, or null when caught up. */
  oldestPendingMs: number | null = null
  lastError: string | null = null
  private readonly controller = new AbortController()
  private wake: (() => void) | null = null
  private running: Promise<void> | null = null
  private failures = 0
  private readonly random: () => number
  /** Everything at or below this was removed by store policy (drop-oldest, TTL, maxLag): never sent. */
  private skipFloor = 0
  private ahead: Promise<Page> | null = null
  /** Smoothed time per delivered batch (ms) and arrival rate (events/ms), for the batch target. */
  private rttMs = 0
  private ratePerMs = 0
  private rateMark = { at: 0, seq: 0 }
  private readonly onAppended = (lastSeq: number): void => {
    this.sampleRate(lastSeq)
    this.wake?.()
  }

  constructor (private readonly o: ForwarderOptions, cursor: number) {
    this.position = cursor
    this.random = o.random ?? Math.random
  }

  /** Per-endpoint breaker state when the sink spreads the uplink over endpoints. */
  endpoints (): EndpointReport[] {
    return this.o.sink.endpoints?.() ?? []
  }

  /**
   * Events per batch that keep up with arrivals at one request in flight (rate × round-trip), and at
   * least what arrives in a quarter of batchMaxDelay: with a receiver a millisecond away, batches of a
   * handful of events cost a request each (main-thread time, a cursor commit) for no gain in latency.
   */
  get batchTarget (): number {
    const want = Math.ceil(this.ratePerMs * Math.max(this.rttMs, this.o.batchMaxDelayMs / BATCH_WINDOW_DIVISOR))
    return Math.min(this.o.batchMaxEvents, Math.max(1, want))
  }

  start (): void {
    this.o.store.on('appended', this.onAppended)
    this.running = this.loop().catch((err: Error) => {
      if (!this.controller.signal.aborted) this.o.log.error({ err, uplink: this.o.name }, 'forwarder stopped unexpectedly')
    })
  }

  /** Policy moved this uplink's cursor: what lies below it is not sent, not even from a batch being retried. */
  skipTo (cursor: number): void {
    if (cursor <= this.skipFloor) return
    this.skipFloor = cursor
    if (cursor > this.position) this.position = cursor
    this.wake?.()
  }

  /** Stops after the batch in flight; a send still running at the deadline is aborted (and resent after restart). */
  async stop (deadlineMs: number): Promise<void> {
    this.stopping = true
    this.wake?.()
    const timer = setTimeout(() => this.controller.abort(), deadlineMs)
    try {
      await this.running
    } finally {
      clearTimeout(timer)
      this.o.store.off('appended', this.onAppended)
      this.state = 'stopped'
      // Connection pools and channels go with the forwarder that used them.
      await this.o.sink.close().catch(() => {})
    }
  }

  private stopping = false

  private get stopped (): boolean { return this.stopping || this.controller.signal.aborted }

  private async loop (): Promise<void> {
    while (!this.stopped) {
      try {
        await this.step()
      } catch (err) {
        // A failed read (the reader thread restarting, say) must not end forwarding for good.
        this.noteFailure('backoff', `store read failed: ${(err as Error).message}`)
        await this.sleep(backoffDelay(this.failures - 1, this.o.retryInitialMs, this.o.retryMaxMs, this.random))
      }
    }
  }

  /** One batch: wait for events, take the page read ahead (or read one), deliver it. */
  private async step (): Promise<void> {
    if (this.o.store.lastSeq <= this.position) {
      this.oldestPendingMs = null
      this.state = 'idle'
      this.ahead = null
      await this.sleep(Infinity)
      return
    }
    let page = await this.takeAhead()
    // A page read ahead may have been cut at the horizon of its time: top it up when more arrived since.
    if (!page.full && this.o.store.lastSeq > page.horizon) page = await this.readAhead(this.position)
    let rows = page.batch.events
    if (rows.length === 0) {
      // Nothing in (position, horizon] is routed to this uplink.
      this.position = Math.max(this.position, page.horizon)
      return
    }
    // Live traffic: wait up to batchMaxDelay from the first event's arrival for the adaptive target.
    const target = this.batchTarget
    if (!page.full && rows.length < target && this.o.batchMaxDelayMs > 0) {
      const waitMs = rows[0]!.ingestMs + this.o.batchMaxDelayMs - Date.now()
      if (waitMs > 0 && waitMs <= this.o.batchMaxDelayMs) {
        await this.sleep(waitMs, () => this.o.store.lastSeq - this.position >= target)
        if (this.stopped) return
        page = await this.readAhead(this.position)
        rows = page.batch.events
        if (rows.length === 0) return
      }
    }
    this.oldestPendingMs = rows[0]!.ingestMs
    // Read (and render) the next page while this one is in flight.
    const last = rows[rows.length - 1]!.seq
    if (this.o.store.lastSeq > last) this.ahead = this.readAhead(last)
    // Only after delivery: a page dropped above (read again, or skipped) may still be being gzipped.
    if (await this.deliver(page.batch)) page.release?.()
  }

  /** The page after `position`: the one read ahead when it starts there, else a fresh read. */
  private takeAhead (): Promise<Page> {
    const ahead = this.ahead
    this.ahead = null
    if (ahead !== null) {
      return ahead.then(p => p.after === this.position ? p : this.readAhead(this.position))
    }
    return this.readAhead(this.position)
  }

  private readAhead (after: number): Promise<Page> {
    const horizon = this.o.store.lastSeq
    const read = this.o.sink.acceptsJson === true
      ? this.o.store.readRenderedPage(this.o.slot, after, this.o.batchMaxEvents, this.o.batchMaxBytes)
      : this.o.store.readPage(this.o.slot, after, this.o.batchMaxEvents, this.o.batchMaxBytes).then(rows => ({ rows, json: null, release: undefined }))
    const p = read.then(({ rows, json, release }) => {
      let bytes = 0
      for (const r of rows) bytes += bodySize(r)
      const batch: SinkBatch = { storeId: this.o.store.info.storeId, events: rows, ...(json === null ? {} : { json }) }
      // Full: at the event limit, or one more row of average size would pass the byte limit.
      const full = rows.length >= this.o.batchMaxEvents || (rows.length > 0 && bytes + bytes / rows.length > this.o.batchMaxBytes)
      // A full page (backlog) goes out as it is: render its request body now, while the request
      // before it is in flight. A partial one may still be topped up, so it is rendered when sent.
      if (full) this.o.sink.prepare?.(batch)
      return { after, horizon, full, batch, release }
    })
    p.catch(() => {})
    return p
  }

  private sampleRate (lastSeq: number): void {
    const now = performance.now()
    const mark = this.rateMark
    if (mark.at === 0) {
      this.rateMark = { at: now, seq: lastSeq }
      return
    }
    const dt = now - mark.at
    if (dt < RATE_SAMPLE_MS) return
    const rate = (lastSeq - mark.seq) / dt
    // Time-weighted: after a long quiet spell the new sample dominates.
    const weight = 1 - Math.exp(-dt / RATE_HALF_LIFE_MS * Math.LN2)
    this.ratePerMs = this.ratePerMs === 0 ? rate : this.ratePerMs + weight * (rate - this.ratePerMs)
    this.rateMark = { at: now, seq: lastSeq }
  }

  /** Sends rows until they are delivered or dead-lettered; returns early only when stopping. */
  private async deliver (batch: SinkBatch): Promise<boolean> {
    let rows = batch.events
    while (!this.stopped) {
      if (rows[0]!.seq <= this.skipFloor) {
        // Store policy removed the head of this batch while it was being retried: never send it.
        rows = rows.filter(r => r.seq > this.skipFloor)
        if (rows.length === 0) return true
        batch = { storeId: batch.storeId, events: rows }
      }
      const outcome = await this.sendOnce(batch)
      switch (outcome.kind) {
        case 'delivered':
          this.recover()
          this.advance(rows)
          return true
        case 'retry':
          this.noteFailure('backoff', outcome.reason)
          await this.sleep(outcome.retryAfterMs ?? backoffDelay(this.failures - 1, this.o.retryInitialMs, this.o.retryMaxMs, this.random))
          break
        case 'rejected':
          if (this.state !== 'rejected') {
            this.o.log.error({ code: 'GG_ERR_UPLINK_REJECTED', uplink: this.o.name, status: outcome.status, reason: outcome.reason },
              'uplink refused the gateway; events are kept and retried at the maximum backoff')
          }
          this.noteFailure('rejected', outcome.reason)
          await this.sleep(this.o.retryMaxMs)
          break
        case 'poison':
        case 'too_large': {
          const reason = outcome.kind === 'poison' ? 'rejected' : 'too_large'
          if (rows.length === 1) {
            this.deadLetter(rows[0]!, reason, outcome.status, outcome.reason)
            return true
          }
          // Bisect: the halves go out in order, so order holds for everything that is delivered.
          const mid = Math.ceil(rows.length / 2)
          if (!await this.deliver({ storeId: batch.storeId, events: rows.slice(0, mid) })) return false
          return this.deliver({ storeId: batch.storeId, events: rows.slice(mid) })
        }
      }
    }
    return false
  }

  private async sendOnce (batch: SinkBatch): Promise<SendOutcome> {
    this.state = 'sending'
    const started = performance.now()
    const outcome = await this.o.sink.send(batch, this.controller.signal)
    const ms = performance.now() - started
    if (outcome.kind === 'delivered') this.rttMs = this.rttMs === 0 ? ms : this.rttMs + EWMA * (ms - this.rttMs)
    // A batch held back by open breakers was not sent: no latency, no send to count.
    if (outcome.kind === 'retry' && outcome.notSent === true) return outcome
    this.o.metrics.uplinkLatency.observe({ uplink: this.o.name }, ms / 1000)
    this.o.metrics.uplinkSends.inc({ uplink: this.o.name, outcome: outcome.kind })
    return outcome
  }

  private noteFailure (state: 'backoff' | 'rejected', reason: string): void {
    if (this.failures === 0 && state === 'backoff') {
      this.o.log.warn({ code: 'GG_ERR_UPLINK_UNREACHABLE', uplink: this.o.name, reason }, 'uplink send failed; retrying with backoff')
    }
    this.failures++
    this.state = state
    this.lastError = reason
  }

  private recover (): void {
    if (this.failures > 0) this.o.log.info({ uplink: this.o.name, failures: this.failures }, 'uplink delivering again')
    this.failures = 0
    this.lastError = null
  }

  private advance (rows: readonly SinkEvent[]): void {
    const last = rows[rows.length - 1]!
    let bytes = 0
    for (const r of rows) bytes += bodySize(r)
    this.position = Math.max(this.position, last.seq)
    this.o.metrics.uplinkEvents.inc({ uplink: this.o.name }, rows.length)
    // The cursor move is durable with the next commit; a lost move only means a resend.
    this.o.store.ack(this.o.slot, last.seq, rows.length, bytes).catch(() => {})
  }

  private deadLetter (row: SinkEvent, reason: string, status: number, detail: string): void {
    this.o.log.warn({ code: 'GG_ERR_UPLINK_POISON', uplink: this.o.name, seq: row.seq, status, detail }, 'uplink rejected one event; moved to dead letters')
    this.o.metrics.deadLetters.inc({ uplink: this.o.name, reason })
    this.o.store.deadLetter({ uplink: this.o.name, seq: row.seq, ingestMs: row.ingestMs, reason: `${reason}: ${detail}`, status, body: row.body }).catch(() => {})
    this.position = Math.max(this.position, row.seq)
    this.o.store.ack(this.o.slot, row.seq, 1, bodySize(row)).catch(() => {})
  }

  /** Sleeps for ms, or until new events arrive and `until` (if given) holds, or until stop. */
  private sleep (ms: number, until?: () => boolean): Promise<void> {
    if (this.stopped) return Promise.resolve()
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | null = null
      const done = (): void => {
        if (timer !== null) clearTimeout(timer)
        this.wake = null
        resolve()
      }
      this.wake = () => {
        if (this.stopped || ms === Infinity || (until !== undefined && until())) done()
      }
      if (ms !== Infinity) timer = setTimeout(done, ms)
    })
  }
}
