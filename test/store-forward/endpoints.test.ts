// EndpointSet with scripted sinks: selection, the breaker's closed → open → half-open → closed cycle,
// refusals that open at once, and Retry-After held per endpoint.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { pino } from 'pino'
import { EndpointSet, endpointLabel } from '../../store-forward/endpoints.js'
import type { SendOutcome, Sink, SinkBatch } from '../../store-forward/sink.js'

interface Scripted extends Sink { calls: number, next: SendOutcome }

function sink (): Scripted {
  const s: Scripted = {
    kind: 'test',
    calls: 0,
    next: { kind: 'delivered' },
    async send () { s.calls++; return s.next },
    async close () {},
  }
  return s
}

const batch: SinkBatch = { storeId: 's', events: [{ seq: 1, ingestMs: 0, body: new Uint8Array() }] }
const signal = new AbortController().signal
const log = pino({ level: 'silent' })
const fail: SendOutcome = { kind: 'retry', reason: 'HTTP 503', status: 503 }

test('failover: a failed batch goes to the next endpoint at once; the breaker opens, probes once and closes', async () => {
  let now = 1_000
  const a = sink()
  const b = sink()
  const set = new EndpointSet([{ label: 'a', sink: a }, { label: 'b', sink: b }], { uplink: 'u', selection: 'failover', breaker: { failures: 2, halfOpenAfterMs: 1000 }, log, now: () => now })
  a.next = fail
  assert.equal((await set.send(batch, signal)).kind, 'delivered')
  assert.deepEqual([a.calls, b.calls], [1, 1])
  assert.equal((await set.send(batch, signal)).kind, 'delivered')
  assert.deepEqual(set.endpoints().map(e => e.breaker), ['open', 'closed'])
  // Open: skipped entirely.
  await set.send(batch, signal)
  assert.deepEqual([a.calls, b.calls], [2, 3])
  // After halfOpenAfter: one probe batch; it fails, so open again and the batch falls through.
  now += 1000
  assert.equal((await set.send(batch, signal)).kind, 'delivered')
  assert.deepEqual([a.calls, b.calls], [3, 4])
  assert.equal(set.endpoints()[0]!.breaker, 'open')
  now += 1000
  a.next = { kind: 'delivered' }
  await set.send(batch, signal)
  assert.deepEqual([a.calls, b.calls], [4, 4])
  assert.deepEqual(set.endpoints().map(e => e.breaker), ['closed', 'closed'])
})

test('round-robin alternates and skips an open endpoint', async () => {
  const a = sink()
  const b = sink()
  const set = new EndpointSet([{ label: 'a', sink: a }, { label: 'b', sink: b }], { uplink: 'u', selection: 'round-robin', breaker: { failures: 1, halfOpenAfterMs: 60_000 }, log })
  for (let i = 0; i < 4; i++) await set.send(batch, signal)
  assert.deepEqual([a.calls, b.calls], [2, 2])
  b.next = fail
  await set.send(batch, signal)
  await set.send(batch, signal)
  await set.send(batch, signal)
  assert.equal(b.calls, 3, 'b failed once, then was skipped')
  assert.equal(a.calls, 5)
})

test('a refusal opens the breaker at once; with every endpoint refusing, the uplink is rejected without a request', async () => {
  let now = 0
  const a = sink()
  a.next = { kind: 'rejected', reason: 'HTTP 401', status: 401 }
  const set = new EndpointSet([{ label: 'a', sink: a }], { uplink: 'u', selection: 'failover', breaker: { failures: 5, halfOpenAfterMs: 1000 }, log, now: () => now })
  assert.equal((await set.send(batch, signal)).kind, 'rejected')
  assert.equal(set.endpoints()[0]!.breaker, 'open')
  const blocked = await set.send(batch, signal)
  assert.equal(blocked.kind, 'rejected')
  assert.equal(a.calls, 1)
  now += 1000
  await set.send(batch, signal)
  assert.equal(a.calls, 2, 'probed after halfOpenAfter')
})

test('Retry-After holds only the endpoint that sent it; with one endpoint the forwarder is told how long', async () => {
  let now = 0
  const a = sink()
  a.next = { kind: 'retry', reason: 'HTTP 429', status: 429, retryAfterMs: 2000 }
  const one = new EndpointSet([{ label: 'a', sink: a }], { uplink: 'u', selection: 'failover', breaker: { failures: 5, halfOpenAfterMs: 1000 }, log, now: () => now })
  assert.deepEqual(await one.send(batch, signal), a.next)
  now += 500
  const held = await one.send(batch, signal)
  assert.equal(held.kind, 'retry')
  assert.equal((held as { retryAfterMs?: number }).retryAfterMs, 1500)
  assert.equal(a.calls, 1)

  const b = sink()
  const two = new EndpointSet([{ label: 'a', sink: a }, { label: 'b', sink: b }], { uplink: 'u', selection: 'failover', breaker: { failures: 5, halfOpenAfterMs: 1000 }, log, now: () => now })
  assert.equal((await two.send(batch, signal)).kind, 'delivered')
  assert.equal((await two.send(batch, signal)).kind, 'delivered')
  assert.deepEqual([a.calls, b.calls], [2, 2])
})

test('poison and too-large answers are about the events: they reach the forwarder and keep the breaker closed', async () => {
  const a = sink()
  const b = sink()
  a.next = { kind: 'poison', reason: 'HTTP 400', status: 400 }
  const set = new EndpointSet([{ label: 'a', sink: a }, { label: 'b', sink: b }], { uplink: 'u', selection: 'failover', breaker: { failures: 1, halfOpenAfterMs: 1000 }, log })
  assert.equal((await set.send(batch, signal)).kind, 'poison')
  assert.equal(b.calls, 0)
  assert.equal(set.endpoints()[0]!.breaker, 'closed')
})

test('endpoint labels drop credentials and queries', () => {
  assert.equal(endpointLabel('https://user:pw@cloud.example:8443/events?key=secret'), 'https://cloud.example:8443/events')
  assert.equal(endpointLabel('10.0.0.1:50051'), '10.0.0.1:50051')
})
