// One behaviour suite for "an uplink sink", run against every sink (HTTP, gRPC): the same batch, the
// same receiver answers, the same outcome classes (DESIGN.md "Uplinks").
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { encodeEvent, formatSequence } from '../../gateway/event.js'
import type { Sink, SinkBatch } from '../../store-forward/sink.js'

/** What the receiver answers: success, a transient failure, poison, or a refusal of the gateway. */
export type Behaviour = 'ok' | 'retry' | 'poison' | 'rejected' | 'hang'

export interface SuiteEvent { id: string, sequence: string, storeid: string, data?: unknown, [k: string]: unknown }

export interface SuiteReceiver {
  /** Events the receiver accepted (answered with success), in arrival order. */
  events (): SuiteEvent[]
  behave (b: Behaviour): void
  createSink (opts: { timeoutMs: number }): Sink
}

export type StartReceiver = (t: TestContext) => Promise<SuiteReceiver>

function batch (n: number, firstSeq = 41): SinkBatch {
  const events = Array.from({ length: n }, (_, i) => ({
    seq: firstSeq + i,
    ingestMs: Date.now(),
    body: encodeEvent({
      id: `0190a000-0000-7000-8000-00000000000${i}`,
      source: '/gateways/gw/devices/d',
      type: 'gridgate.telemetry',
      subject: 'devices/d/x',
      time: new Date().toISOString(),
      datacontenttype: 'application/json',
      data: { kind: 'json', text: JSON.stringify({ n: i }) },
      extensions: { deviceid: 'd' },
    }),
  }))
  return { storeId: 'store-1', events }
}

const never = new AbortController().signal

export function uplinkSinkSuite (name: string, start: StartReceiver): void {
  test(`${name} sink: an accepted batch is delivered, every event with its storeid and sequence`, async (t) => {
    const rx = await start(t)
    const sink = rx.createSink({ timeoutMs: 2000 })
    t.after(() => sink.close())
    const outcome = await sink.send(batch(3), never)
    assert.deepEqual(outcome, { kind: 'delivered' })
    const got = rx.events()
    assert.deepEqual(got.map(e => e.sequence), [41, 42, 43].map(formatSequence))
    assert.deepEqual(got.map(e => e.data), [{ n: 0 }, { n: 1 }, { n: 2 }])
    assert.ok(got.every(e => e.storeid === 'store-1' && e.specversion === '1.0' && e.deviceid === 'd'))
  })

  test(`${name} sink: a transient server failure is a retry`, async (t) => {
    const rx = await start(t)
    rx.behave('retry')
    const sink = rx.createSink({ timeoutMs: 2000 })
    t.after(() => sink.close())
    const outcome = await sink.send(batch(2), never)
    assert.equal(outcome.kind, 'retry')
    assert.equal(rx.events().length, 0)
  })

  test(`${name} sink: an invalid batch is poison (bisected by the forwarder)`, async (t) => {
    const rx = await start(t)
    rx.behave('poison')
    const sink = rx.createSink({ timeoutMs: 2000 })
    t.after(() => sink.close())
    const outcome = await sink.send(batch(2), never)
    assert.equal(outcome.kind, 'poison')
  })

  test(`${name} sink: a refused credential is rejected, never poison`, async (t) => {
    const rx = await start(t)
    rx.behave('rejected')
    const sink = rx.createSink({ timeoutMs: 2000 })
    t.after(() => sink.close())
    const outcome = await sink.send(batch(2), never)
    assert.equal(outcome.kind, 'rejected')
  })

  test(`${name} sink: an answer that does not come within the timeout is a retry`, async (t) => {
    const rx = await start(t)
    rx.behave('hang')
    const sink = rx.createSink({ timeoutMs: 300 })
    t.after(() => sink.close())
    const outcome = await sink.send(batch(1), never)
    assert.equal(outcome.kind, 'retry')
    assert.match((outcome as { reason: string }).reason, /timeout/i)
  })

  test(`${name} sink: a batch goes out again after a failure, to the same receiver`, async (t) => {
    const rx = await start(t)
    const sink = rx.createSink({ timeoutMs: 2000 })
    t.after(() => sink.close())
    rx.behave('retry')
    const b = batch(2)
    sink.prepare?.(b)
    assert.equal((await sink.send(b, never)).kind, 'retry')
    rx.behave('ok')
    assert.equal((await sink.send(b, never)).kind, 'delivered')
    assert.deepEqual(rx.events().map(e => e.sequence), [41, 42].map(formatSequence))
  })

  test(`${name} sink: stopping aborts a send in flight`, async (t) => {
    const rx = await start(t)
    rx.behave('hang')
    const sink = rx.createSink({ timeoutMs: 30_000 })
    t.after(() => sink.close())
    const stop = new AbortController()
    setTimeout(() => stop.abort(), 100)
    const outcome = await sink.send(batch(1), stop.signal)
    assert.equal(outcome.kind, 'retry')
  })
}
