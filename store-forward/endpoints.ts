// Several endpoints behind one Sink: selection (failover or round-robin) and a circuit breaker per
// endpoint, so the forwarder keeps seeing one sink and one outcome per batch (DESIGN.md "Uplinks").
//
// Breaker: closed → open after `failures` consecutive retry-class failures (at once when the endpoint
// refuses the gateway: 401/403/UNAUTHENTICATED…) → after `halfOpenAfter` one batch probes it
// (half-open) → closed on success, open again on failure. An open endpoint is skipped; when every
// endpoint is open the batch is not sent and the forwarder waits until the first probe is due.
// Batches still go out one at a time: a batch that fails on one endpoint is tried on the next
// eligible one within the same send, never on two at once.
import type { Logger } from 'pino'
import type { BreakerState, EndpointReport, SendOutcome, Sink, SinkBatch } from './sink.js'

export type Selection = 'failover' | 'round-robin'

export interface BreakerOptions {
  /** Consecutive failures that open the breaker. */
  failures: number
  /** How long an open breaker waits before one probe batch (ms). */
  halfOpenAfterMs: number
}

export interface EndpointSetOptions {
  uplink: string
  selection: Selection
  breaker: BreakerOptions
  log: Logger
  now?: () => number
}

interface Endpoint {
  label: string
  sink: Sink
  state: BreakerState
  failures: number
  openedAt: number
  /** Retry-After from this endpoint: not used again before this time (ms since epoch). */
  notBefore: number
  lastError: string | null
  lastKind: 'retry' | 'rejected' | null
  lastStatus: number | undefined
}

/** Timers may fire a millisecond early against Date.now(); a due time this close counts as reached. */
const SLACK_MS = 5

export class EndpointSet implements Sink {
  readonly kind: string
  readonly acceptsJson: boolean
  private readonly list: Endpoint[]
  private readonly now: () => number
  private rotation = 0

  constructor (endpoints: ReadonlyArray<{ label: string, sink: Sink }>, private readonly o: EndpointSetOptions) {
    if (endpoints.length === 0) throw new TypeError('an uplink needs at least one endpoint')
    this.kind = endpoints[0]!.sink.kind
    this.acceptsJson = endpoints.every(e => e.sink.acceptsJson === true)
    this.now = o.now ?? Date.now
    this.list = endpoints.map(e => ({
      label: e.label, sink: e.sink, state: 'closed', failures: 0, openedAt: 0, notBefore: 0, lastError: null, lastKind: null, lastStatus: undefined,
    }))
  }

  prepare (batch: SinkBatch): void {
    this.list[0]!.sink.prepare?.(batch)
  }

  async send (batch: SinkBatch, signal: AbortSignal): Promise<SendOutcome> {
    const order = this.candidates(this.now())
    if (order.length === 0) return this.blocked(this.now())
    const failed: SendOutcome[] = []
    for (const ep of order) {
      if (signal.aborted) break
      if (ep.state === 'open') this.transition(ep, 'half-open')
      const outcome = await ep.sink.send(batch, signal)
      // A send cut short by our own stop says nothing about the endpoint.
      if (signal.aborted) return outcome
      if (outcome.kind === 'retry' || outcome.kind === 'rejected') {
        this.failed(ep, outcome)
        failed.push(outcome)
        continue
      }
      // Delivered, or an answer about the events themselves (poison, too large): the endpoint works.
      this.succeeded(ep)
      return outcome
    }
    return this.combine(failed)
  }

  endpoints (): EndpointReport[] {
    return this.list.map(ep => ({ endpoint: ep.label, breaker: ep.state, consecutiveFailures: ep.failures, lastError: ep.lastError }))
  }

  async close (): Promise<void> {
    await Promise.all(this.list.map(ep => ep.sink.close()))
  }

  /** Endpoints that may take this batch, in the order to try them. */
  private candidates (now: number): Endpoint[] {
    const eligible = (ep: Endpoint): boolean => {
      if (ep.notBefore > now + SLACK_MS) return false
      return ep.state !== 'open' || now + SLACK_MS >= ep.openedAt + this.o.breaker.halfOpenAfterMs
    }
    if (this.o.selection === 'failover') return this.list.filter(eligible)
    // Round-robin: each batch starts one endpoint further; the others are its fallbacks.
    const start = this.rotation
    this.rotation = (this.rotation + 1) % this.list.length
    const rotated = [...this.list.slice(start), ...this.list.slice(0, start)]
    return rotated.filter(eligible)
  }

  /** No endpoint may be tried now: report why and when the first one may. */
  private blocked (now: number): SendOutcome {
    if (this.list.every(ep => ep.state === 'open' && ep.lastKind === 'rejected')) {
      const ep = this.list[0]!
      return { kind: 'rejected', reason: `every endpoint refused the gateway; last: ${ep.lastError ?? ''}`, status: ep.lastStatus ?? 0 }
    }
    let due = Infinity
    for (const ep of this.list) {
      const probe = ep.state === 'open' ? ep.openedAt + this.o.breaker.halfOpenAfterMs : 0
      due = Math.min(due, Math.max(probe, ep.notBefore))
    }
    const wait = Math.max(1, due - now)
    const open = this.list.filter(ep => ep.state === 'open').length
    const reason = open === this.list.length ? 'circuit open on every endpoint' : 'every endpoint asked to wait (Retry-After)'
    return { kind: 'retry', reason, retryAfterMs: wait, notSent: true }
  }

  private combine (failed: readonly SendOutcome[]): SendOutcome {
    const retries = failed.filter((o): o is Extract<SendOutcome, { kind: 'retry' }> => o.kind === 'retry')
    if (retries.length === 0) {
      return failed[failed.length - 1] ?? { kind: 'retry', reason: 'stopped before the batch was sent' }
    }
    const last = retries[retries.length - 1]!
    if (this.list.length === 1 || retries.length === 1) return last
    // Several endpoints failed: honour a Retry-After only when every one of them asked for one.
    const waits = retries.map(o => o.retryAfterMs)
    if (waits.some(w => w === undefined)) {
      const { retryAfterMs: _ignored, ...rest } = last
      return rest
    }
    return { ...last, retryAfterMs: Math.min(...waits as number[]) }
  }

  private failed (ep: Endpoint, outcome: Extract<SendOutcome, { kind: 'retry' | 'rejected' }>): void {
    const now = this.now()
    ep.failures++
    ep.lastError = outcome.reason
    ep.lastKind = outcome.kind
    ep.lastStatus = outcome.status
    if (outcome.kind === 'retry' && outcome.retryAfterMs !== undefined) ep.notBefore = now + outcome.retryAfterMs
    if (outcome.kind === 'rejected' || ep.state === 'half-open' || ep.failures >= this.o.breaker.failures) {
      ep.openedAt = now
      this.transition(ep, 'open')
    }
  }

  private succeeded (ep: Endpoint): void {
    ep.failures = 0
    ep.lastError = null
    ep.lastKind = null
    ep.notBefore = 0
    this.transition(ep, 'closed')
  }

  private transition (ep: Endpoint, to: BreakerState): void {
    if (ep.state === to) return
    const from = ep.state
    ep.state = to
    const fields = { uplink: this.o.uplink, endpoint: ep.label, from, to, failures: ep.failures, reason: ep.lastError }
    // One warning when an endpoint is ejected and one line when it is back: a probe that fails
    // (half-open → open) is the same outage, not news.
    if (to === 'open' && from === 'closed') this.o.log.warn({ code: 'GG_ERR_UPLINK_UNREACHABLE', ...fields }, 'uplink endpoint failing; circuit open, it gets a probe batch later')
    else if (to === 'closed') this.o.log.info(fields, 'uplink endpoint healthy again; circuit closed')
    else this.o.log.debug(fields, to === 'open' ? 'probe batch failed; circuit open again' : 'uplink endpoint probed with one batch')
  }
}

/** An endpoint as it may appear in logs, metrics labels and the admin API: no credentials, no query. */
export function endpointLabel (target: string): string {
  try {
    const u = new URL(target)
    if (u.protocol === 'http:' || u.protocol === 'https:') return `${u.protocol}//${u.host}${u.pathname}`
  } catch {}
  return target.replace(/^[^@/]*@/, '')
}
