// Chaos: receivers that randomly fail (HTTP 500 / gRPC UNAVAILABLE), hang past the uplink timeout or
// reset the connection, while the gateway process is killed with SIGKILL and restarted under QoS1
// load. Every acknowledged event must arrive at both uplinks; keeping each id's first arrival, the
// sequences strictly increase.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import * as grpc from '@grpc/grpc-js'
import { tempDir, waitFor } from '../helpers/util.js'
import { CounterPublisher } from '../helpers/mqtt.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, spawnGateway, writeConfig } from '../helpers/gateway.js'
import { startGrpcReceiver } from '../../scripts/grpc-receiver.js'

/** mulberry32: a small seeded generator, so a failing run can be replayed with its seed. */
function seeded (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}


type Arrival = { id: string, sequence: string, data?: unknown }

function check (name: string, arrivals: readonly Arrival[], acked: ReadonlySet<number>): number {
  const seen = new Set<string>()
  let last = 0
  const got = new Set<number>()
  for (const e of arrivals) {
    got.add((e.data as { n: number }).n)
    if (seen.has(e.id)) continue
    seen.add(e.id)
    const seq = Number(e.sequence)
    assert.ok(seq > last, `${name}: sequence ${seq} arrived after ${last}`)
    last = seq
  }
  const missing = [...acked].filter(n => !got.has(n))
  assert.deepEqual(missing.slice(0, 20), [], `${name}: ${missing.length} acknowledged counters never arrived`)
  return arrivals.length - seen.size
}

test('under random 500s, hangs, resets and repeated kill -9, every acknowledged event arrives in order', async (t) => {
  const seed = Number(process.env.CHAOS_SEED ?? Date.now() % 1_000_000)
  const random = seeded(seed)
  t.diagnostic(`seed ${seed} (CHAOS_SEED=${seed} replays it)`)
  let chaos = true

  // A batch that hangs past the timeout did reach the cloud: it counts as an arrival (and its resend
  // as a duplicate), as it would for a receiver that stores before it answers.
  const httpArrivals: Arrival[] = []
  const grpcArrivals: Arrival[] = []
  const http = await startReceiver(t)
  http.respond = (events) => {
    const r = chaos ? random() : 1
    const answer = r < 0.2 ? { status: 500 } : r < 0.3 ? 'hang' as const : r < 0.4 ? 'drop' as const : { status: 200 }
    if (answer === 'hang' || (answer !== 'drop' && answer.status === 200)) httpArrivals.push(...events)
    return answer
  }
  const rpc = await startGrpcReceiver()
  t.after(() => rpc.close())
  rpc.respond = (events) => {
    const r = chaos ? random() : 1
    const answer = r < 0.2 ? { code: grpc.status.UNAVAILABLE } : r < 0.3 ? 'hang' as const : r < 0.35 ? { code: grpc.status.INTERNAL } : { code: grpc.status.OK }
    if (answer === 'hang' || answer.code === grpc.status.OK) grpcArrivals.push(...events)
    return answer
  }

  const dir = tempDir(t)
  const fast = { batchMaxDelay: '5ms', timeout: '300ms', retry: { initialDelay: '10ms', maxDelay: '150ms' } }
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), {}, {
    uplinks: [
      { name: 'cloud', type: 'http', url: http.url, ...fast },
      { name: 'analytics', type: 'grpc', address: rpc.address, ...fast },
    ],
  }))
  const pub = new CounterPublisher('chaos')
  const rounds = 4
  for (let round = 0; round < rounds; round++) {
    const gw = await spawnGateway(t, file)
    pub.start(gw.mqttPort, 32)
    await sleep(700 + Math.floor(random() * 800))
    gw.child.kill('SIGKILL')
    await gw.exited
    pub.stop()
  }
  assert.ok(pub.acked.size > 100, `only ${pub.acked.size} messages were acknowledged`)

  // Last run: still chaotic for a while, then a healthy cloud drains what is left.
  const gw = await spawnGateway(t, file)
  await sleep(1000)
  chaos = false
  const all = (events: readonly Arrival[]): boolean => {
    const got = new Set(events.map(e => (e.data as { n: number }).n))
    return [...pub.acked].every(n => got.has(n))
  }
  try {
    await waitFor(() => all(http.events) && all(rpc.events), 'every acked counter at both receivers', 90_000)
  } catch (err) {
    // Say what is missing where, and what the gateway thinks, so a failure can be told from slowness.
    const missing = (events: readonly Arrival[]): number[] => {
      const got = new Set(events.map(e => (e.data as { n: number }).n))
      return [...pub.acked].filter(n => !got.has(n)).sort((a, b) => a - b)
    }
    const uplinks = await (await gw.admin('/api/v1/uplinks')).text().catch((e: Error) => e.message)
    const mh = missing(http.events)
    const mg = missing(rpc.events)
    throw new Error(`${(err as Error).message}; missing at http ${mh.length} (first ${mh.slice(0, 10).join(',')}), at grpc ${mg.length} (first ${mg.slice(0, 10).join(',')}); seen by http at all: ${mh.filter(n => httpArrivals.some(e => (e.data as { n: number }).n === n)).length}; uplinks ${uplinks}`)
  }
  const dupHttp = check('http', httpArrivals, pub.acked)
  const dupGrpc = check('grpc', grpcArrivals, pub.acked)
  t.diagnostic(`${rounds} kill -9 rounds: ${pub.acked.size} acked of ${pub.next} sent; duplicates http ${dupHttp}, grpc ${dupGrpc}`)
  gw.child.kill('SIGKILL')
})
