// The shared uplink sink suite against the HTTP and the gRPC sink, each with a real receiver.
import * as grpc from '@grpc/grpc-js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { uplinkSinkSuite, type Behaviour } from './uplink-sink-suite.js'
import { startReceiver, type Reply } from '../helpers/receiver.js'
import { createHttpSink } from '../../adapters/uplink-http/index.js'
import { createGrpcSink, classifyGrpc } from '../../adapters/uplink-grpc/index.js'
import type { SinkBatch } from '../../store-forward/sink.js'
import { reuseBatches, sendRenderingAhead } from '../helpers/sink-batches.js'
import { startGrpcReceiver, type GrpcAnswer } from '../../scripts/grpc-receiver.js'

const httpAnswers: Record<Behaviour, Reply | 'hang'> = {
  ok: { status: 200 },
  retry: { status: 503 },
  poison: { status: 400, body: 'bad event' },
  rejected: { status: 401 },
  hang: 'hang',
}

uplinkSinkSuite('HTTP', async (t) => {
  const rx = await startReceiver(t)
  let behaviour: Behaviour = 'ok'
  rx.respond = () => httpAnswers[behaviour]
  return {
    events: () => rx.events as never,
    behave: (b) => { behaviour = b },
    createSink: ({ timeoutMs }) => createHttpSink({ url: rx.url, timeoutMs }),
  }
})

const grpcAnswers: Record<Behaviour, GrpcAnswer> = {
  ok: { code: grpc.status.OK },
  retry: { code: grpc.status.UNAVAILABLE },
  poison: { code: grpc.status.INVALID_ARGUMENT, details: 'bad event' },
  rejected: { code: grpc.status.UNAUTHENTICATED },
  hang: 'hang',
}

uplinkSinkSuite('gRPC', async (t) => {
  const rx = await startGrpcReceiver()
  t.after(() => rx.close())
  let behaviour: Behaviour = 'ok'
  rx.respond = () => grpcAnswers[behaviour]
  return {
    events: () => rx.events,
    behave: (b) => { behaviour = b },
    createSink: ({ timeoutMs }) => createGrpcSink({ address: rx.address, timeoutMs }),
  }
})

test('gRPC status codes map to the outcome classes of the design', () => {
  const s = grpc.status
  const table: Array<[grpc.status, string]> = [
    [s.OK, 'delivered'],
    [s.UNAVAILABLE, 'retry'], [s.DEADLINE_EXCEEDED, 'retry'], [s.RESOURCE_EXHAUSTED, 'retry'],
    [s.INTERNAL, 'retry'], [s.UNKNOWN, 'retry'], [s.ABORTED, 'retry'],
    [s.INVALID_ARGUMENT, 'poison'],
    [s.UNAUTHENTICATED, 'rejected'], [s.PERMISSION_DENIED, 'rejected'], [s.NOT_FOUND, 'rejected'],
    [s.UNIMPLEMENTED, 'rejected'], [s.FAILED_PRECONDITION, 'rejected'],
  ]
  for (const [code, kind] of table) assert.equal(classifyGrpc(code, '').kind, kind, s[code])
  assert.equal(classifyGrpc(s.RESOURCE_EXHAUSTED, 'Received message larger than max (5000 vs. 4000)').kind, 'too_large')
  assert.deepEqual(classifyGrpc(s.UNAVAILABLE, 'busy', 1500), { kind: 'retry', reason: 'gRPC UNAVAILABLE: busy', status: s.UNAVAILABLE, retryAfterMs: 1500 })
})

test('gRPC batches written into the buffer of a delivered one go out whole, larger or smaller than it; a retried one is sent as it was', async (t) => {
  const rx = await startGrpcReceiver()
  t.after(() => rx.close())
  const calls: string[][] = []
  const answers = [grpc.status.OK, grpc.status.OK, grpc.status.UNAVAILABLE, grpc.status.OK, grpc.status.OK]
  rx.respond = (events) => {
    calls.push(events.map(e => `${String(e.sequence)} ${String(e.storeid)} ${String(e.id)} ${JSON.stringify(e.data)}`))
    return { code: answers[calls.length - 1] ?? grpc.status.OK }
  }
  const sink = createGrpcSink({ address: rx.address, timeoutMs: 2000 })
  t.after(() => sink.close())
  const expect = (b: SinkBatch): string[] => b.events.map(e => `${String(e.seq).padStart(20, '0')} store e${e.seq} ${JSON.stringify({ n: 'y'.repeat(e.seq % 97) })}`)
  const batches = reuseBatches()
  const outcomes = await sendRenderingAhead(sink, batches)
  assert.deepEqual(outcomes, ['delivered', 'delivered', 'retry', 'delivered'])
  assert.deepEqual(calls, [expect(batches[0]!), expect(batches[1]!), expect(batches[2]!), expect(batches[2]!), expect(batches[3]!)])
})

test('a gRPC receiver that requires a token refuses a call without it as UNAUTHENTICATED', async (t) => {
  const rx = await startGrpcReceiver({ token: 'right-token' })
  t.after(() => rx.close())
  const ev = { storeId: 's', events: [] }
  const wrong = createGrpcSink({ address: rx.address, timeoutMs: 2000, bearerToken: 'wrong-token' })
  const right = createGrpcSink({ address: rx.address, timeoutMs: 2000, bearerToken: 'right-token', headers: { 'x-site': 'plant-7' } })
  t.after(() => Promise.all([wrong.close(), right.close()]))
  // An empty batch never leaves the gateway.
  assert.equal((await wrong.send(ev, new AbortController().signal)).kind, 'delivered')
  assert.equal(rx.calls.length, 0)
  const { encodeEvent } = await import('../../gateway/event.js')
  const body = encodeEvent({ id: 'x', source: '/s', type: 't', subject: 'devices/d/x', time: new Date().toISOString(), extensions: {} })
  const one = { storeId: 's', events: [{ seq: 1, ingestMs: Date.now(), body }] }
  const refused = await wrong.send(one, new AbortController().signal)
  assert.equal(refused.kind, 'rejected')
  assert.match((refused as { reason: string }).reason, /UNAUTHENTICATED/)
  assert.equal((await right.send(one, new AbortController().signal)).kind, 'delivered')
  assert.equal(rx.calls.at(-1)?.metadata['x-site'], 'plant-7')
  assert.equal(rx.events.length, 1)
})
