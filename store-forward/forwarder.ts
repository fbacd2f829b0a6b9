// One forwarder per uplink: reads its routed events in sequence order in short pages, sends one
// batch at a time through its sink, and moves its own cursor only after the sink says delivered.
// Outcome classes (DESIGN.md "Uplinks"): retry with capped exponential backoff and full jitter
// (Retry-After wins), bisect poison into dead letters, keep everything when the uplink refuses us.
import type { Logger } from 'pino'
import type { Metrics } from '../gateway/metrics.js'
import type { Sink, SinkEvent, SendOutcome } from './sink.js'
import type { Store, StoredRow } from './store.js'

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
  private readonly onAppended = (): void => { this.wake?.() }
  /** Everything at or below this was removed by store policy (drop-oldest, TTL, maxLag): never sent. */
  private skipFloor = 0

  constructor (private readonly o: ForwarderOptions, cursor: number) {
    this.position = cursor
    this.random = o.random ?? Math.random
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

  /** One batch: wait for events, read a page, deliver it. */
  private async step (): Promise<void> {
    if (this.o.store.lastSeq <= this.position) {
      this.oldestPendingMs = null
      this.state = 'idle'
      await this.sleep(Infinity)
      return
    }
    const horizon = this.o.store.lastSeq
    let rows = await this.read()
    if (rows.length === 0) {
      // Nothing in (position, horizon] is routed to this uplink.
      this.position = Math.max(this.position, horizon)
      return
    }
    // Wait up to batchMaxDelay from the first event's arrival for a fuller batch.
    if (rows.length < this.o.batchMaxEvents && this.o.batchMaxDelayMs > 0) {
      const waitMs = rows[0]!.ingestMs + this.o.batchMaxDelayMs - Date.now()
      if (waitMs > 0 && waitMs <= this.o.batchMaxDelayMs) {
        await this.sleep(waitMs, () => this.o.store.lastSeq - this.position >= this.o.batchMaxEvents)
        if (this.stopped) return
        rows = await this.read()
      }
    }
    this.oldestPendingMs = rows[0]!.ingestMs
    await this.deliver(rows)
  }

  private read (): Promise<StoredRow[]> {
    return this.o.store.readPage(this.o.slot, this.position, this.o.batchMaxEvents, this.o.batchMaxBytes)
  }

  /** Sends rows until they are delivered or dead-lettered; returns early only when stopping. */
  private async deliver (batch: readonly SinkEvent[]): Promise<boolean> {
    let rows = batch
    while (!this.stopped) {
      if (rows[0]!.seq <= this.skipFloor) {
        rows = rows.filter(r => r.seq > this.skipFloor)
        if (rows.length === 0) return true
      }
      const outcome = await this.sendOnce(rows)
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
          if (!await this.deliver(rows.slice(0, mid))) return false
          return this.deliver(rows.slice(mid))
        }
      }
    }
    return false
  }

  private async sendOnce (rows: readonly SinkEvent[]): Promise<SendOutcome> {
    this.state = 'sending'
    const started = performance.now()
    const outcome = await this.o.sink.send({ storeId: this.o.store.info.storeId, events: rows }, this.controller.signal)
    this.o.metrics.uplinkLatency.observe({ uplink: this.o.name }, (performance.now() - started) / 1000)
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
    for (const r of rows) bytes += r.body.byteLength
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
    this.o.store.ack(this.o.slot, row.seq, 1, row.body.byteLength).catch(() => {})
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
