// Drain measurement: how fast a backlog left by an outage goes out while live traffic keeps flowing.
//
//   node dist/scripts/drain-measure.js --events 200000 [--rate 1000] [--type http|grpc] [--batch 500]
//                                      [--settle 15]
//
// 1. spawns the real gateway (child process) with one uplink whose receiver is down;
// 2. publishes --events messages over MQTT QoS1 (the backlog), waiting for every PUBACK;
// 3. brings the receiver up (a child process of its own, so decoding batches never delays this
//    process's timing of PUBACKs; it only counts) and, at the same time, starts live QoS1 traffic at
//    --rate msgs/s, recording each PUBACK's latency;
// 4. reports the drain rate (backlog events / time until the last backlog event arrived), the gateway's
//    peak RSS (VmRSS sampled from /proc every 100 ms, and VmHWM), and live PUBACK latency percentiles,
//    as one JSON object on stdout. Progress goes to stderr.
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type MqttClient } from 'mqtt'
import { stringify } from 'yaml'
import { spawnGatewayProcess } from './gateway-process.js'
import * as grpc from '@grpc/grpc-js'
import { PUBLISH_PATH, decodeRawBatch, encodePublishResponse } from '../adapters/uplink-grpc/schema.js'
import { freePort } from './net.js'
import { scrape, slowCommitsBetween } from './bench/metrics.js'
import { procSample, threadCpu, threadCpuDelta } from './bench/sys.js'

const log = (line: string): void => { process.stderr.write(`${line}\n`) }

function args () {
  const { values } = parseArgs({
    options: {
      events: { type: 'string', default: '200000' },
      rate: { type: 'string', default: '1000' },
      type: { type: 'string', default: 'http' },
      batch: { type: 'string', default: '500' },
      keep: { type: 'boolean', default: false },
      settle: { type: 'string', default: '0' },
      serve: { type: 'string' },
      port: { type: 'string' },
    },
  })
  const events = Number(values.events)
  const rate = Number(values.rate)
  const batch = Number(values.batch)
  if (!Number.isInteger(events) || events < 1) throw new Error(`--events: expected a positive integer, got ${values.events}`)
  if (!Number.isFinite(rate) || rate < 0) throw new Error(`--rate: expected msgs/s, got ${values.rate}`)
  if (values.type !== 'http' && values.type !== 'grpc') throw new Error(`--type: expected http or grpc, got ${values.type}`)
  const settle = Number(values.settle)
  if (!Number.isFinite(settle) || settle < 0) throw new Error(`--settle: expected seconds, got ${values.settle}`)
  return { events, rate, type: values.type, batch, keep: values.keep === true, serve: values.serve, port: Number(values.port), settleMs: settle * 1000 }
}

function procStatus (pid: number): { rss: number, hwm: number } {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
}

function connect (port: number, id: string): Promise<MqttClient> {
  const client = mqtt.connect({ host: '127.0.0.1', port, username: 'sensor-1', password: 'sensor-1-measure-token', clientId: id, reconnectPeriod: 0 })
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client))
    client.once('error', reject)
  })
}

/** Publishes n messages at QoS1 over several connections, a window in flight on each. */
async function backlog (port: number, n: number): Promise<number> {
  const clients = await Promise.all([0, 1, 2, 3].map(i => connect(port, `backlog-${i}`)))
  let next = 0
  let done = 0
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    const one = (c: MqttClient): void => {
      if (next >= n) return
      const i = next++
      c.publish('devices/sensor-1/backlog', `{"phase":"backlog","i":${i}}`, { qos: 1 }, (err) => {
        if (err != null) { reject(err); return }
        done++
        if (done % 20_000 === 0) log(`  backlog ${done}/${n}`)
        if (done === n) resolve()
        else one(c)
      })
    }
    for (const c of clients) for (let w = 0; w < 128; w++) one(c)
  })
  const secs = (performance.now() - started) / 1000
  for (const c of clients) c.end(true)
  return n / secs
}

function percentile (sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))]!
}

/** What the receiver counted, and its own CPU time (user + system, µs) when it reported. */
interface Counter { backlog: number, live: number, lastBacklogAt: number, cpuMicros: number }

const BACKLOG_PHASE = Buffer.from('"phase":"backlog"')
const LIVE_PHASE = Buffer.from('"phase":"live"')

/**
 * How often `pattern` occurs in `bytes`. The receiver counts each event's phase in the bytes it got
 * (the JSON batch, or the protobuf batch whose events carry the JSON data as it is) instead of parsing
 * them: it stands for a cloud service on another machine, yet shares the 2 cores the gateway is
 * measured on (with parsing it used about a quarter of a core during a drain, without about a fifth).
 */
function occurrences (bytes: Buffer, pattern: Buffer): number {
  let n = 0
  for (let at = bytes.indexOf(pattern); at !== -1; at = bytes.indexOf(pattern, at + pattern.length)) n++
  return n
}

function countPhases (c: Counter, bytes: Buffer): void {
  const backlog = occurrences(bytes, BACKLOG_PHASE)
  c.backlog += backlog
  c.live += occurrences(bytes, LIVE_PHASE)
  if (backlog > 0) c.lastBacklogAt = Date.now()
}

/** Receiver mode (a child process): counts backlog and live events, reports over IPC every 50 ms. */
async function serve (type: string, port: number): Promise<void> {
  const c: Counter = { backlog: 0, live: 0, lastBacklogAt: 0, cpuMicros: 0 }
  if (type === 'http') {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (b: Buffer) => chunks.push(b))
      req.on('end', () => {
        countPhases(c, Buffer.concat(chunks))
        res.writeHead(200).end()
      })
    })
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  } else {
    const server = new grpc.Server({ 'grpc.max_receive_message_length': 64 * 1024 * 1024 })
    const id = (b: Buffer): Buffer => b
    server.addService({
      Publish: { path: PUBLISH_PATH, requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
    }, {
      Publish: ((call, callback) => {
        countPhases(c, call.request)
        callback(null, encodePublishResponse(decodeRawBatch(call.request).length))
      }) satisfies grpc.handleUnaryCall<Buffer, Buffer>,
    })
    await new Promise<void>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => err === null ? resolve() : reject(err)))
  }
  setInterval(() => {
    const cpu = process.cpuUsage()
    c.cpuMicros = cpu.user + cpu.system
    process.send?.(c)
  }, 50)
  process.send?.({ ready: true })
}

async function main (): Promise<void> {
  const o = args()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gg-drain-'))
  const port = await freePort()
  const uplink = o.type === 'http'
    ? { name: 'cloud', type: 'http', url: `http://127.0.0.1:${port}/events` }
    : { name: 'cloud', type: 'grpc', address: `127.0.0.1:${port}` }
  const file = path.join(dir, 'gridgate.yaml')
  fs.writeFileSync(file, stringify({
    gateway: { id: 'gw-drain', dataDir: path.join(dir, 'data'), logLevel: 'info' },
    mqtt: { host: '127.0.0.1', port: 0 },
    coap: { host: '127.0.0.1', port: 0 },
    websocket: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    devices: [{ id: 'sensor-1', token: 'sensor-1-measure-token' }],
    uplinks: [{ ...uplink, batchMaxEvents: o.batch, timeout: '10s', retry: { initialDelay: '100ms', maxDelay: '1s' } }],
  }))
  const env = { PATH: process.env.PATH ?? '', ...(process.env.NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: process.env.NODE_OPTIONS }), ...(process.env.BENCH_PROFILE_DIR === undefined ? {} : { BENCH_PROFILE_DIR: process.env.BENCH_PROFILE_DIR }) }
  let gw = await spawnGatewayProcess({ configFile: file, env })
  let pid = gw.child.pid!
  try {
    // --settle: RSS with an empty store and with the whole backlog stored, each in a gateway left alone
    // that long (V8 gives back start-up and ingest heap some seconds after allocation stops); for the
    // second the gateway is restarted on the backlog, as after a reboot during an outage.
    let emptySettled: ReturnType<typeof procStatus> | null = null
    if (o.settleMs > 0) {
      await sleep(o.settleMs)
      emptySettled = procStatus(pid)
      log(`empty store, settled: gateway RSS ${(emptySettled.rss / 2 ** 20).toFixed(1)} MiB`)
    }
    log(`gateway pid ${pid}, uplink ${o.type} on port ${port} (down); building a backlog of ${o.events}`)
    const ingestRate = await backlog(gw.mqttPort, o.events)
    const afterBacklog = procStatus(pid)
    log(`backlog built at ${Math.round(ingestRate)} msgs/s; gateway RSS ${(afterBacklog.rss / 2 ** 20).toFixed(1)} MiB`)
    let backlogSettled: ReturnType<typeof procStatus> | null = null
    let backlogSettledAfterRestart: ReturnType<typeof procStatus> | null = null
    if (o.settleMs > 0) {
      await sleep(o.settleMs)
      backlogSettled = procStatus(pid)
      gw.child.kill('SIGTERM')
      await gw.exited
      gw = await spawnGatewayProcess({ configFile: file, env })
      pid = gw.child.pid!
      await sleep(o.settleMs)
      backlogSettledAfterRestart = procStatus(pid)
      log(`with the backlog, settled: ${(backlogSettled.rss / 2 ** 20).toFixed(1)} MiB; restarted on it: ${(backlogSettledAfterRestart.rss / 2 ** 20).toFixed(1)} MiB`)
    }

    let c: Counter = { backlog: 0, live: 0, lastBacklogAt: 0, cpuMicros: 0 }
    const admin = `http://127.0.0.1:${gw.adminPort}`
    const m0 = await scrape(admin)
    const cpu0 = { total: procSample(pid)?.cpuSeconds ?? 0, threads: threadCpu(pid) }
    const upAtWall = Date.now()
    const receiver = fork(fileURLToPath(import.meta.url), ['--serve', o.type, '--port', String(port)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    await new Promise<void>((resolve, reject) => {
      receiver.on('message', (m: Counter | { ready: true }) => {
        if ('ready' in m) resolve()
        else c = m
      })
      receiver.once('exit', (code) => reject(new Error(`the receiver exited (${code})`)))
    })
    const closeReceiver = async (): Promise<void> => { receiver.kill('SIGKILL') }
    log('receiver up; draining with live traffic')

    // Live traffic: rate msgs/s in 10 ms ticks, each PUBACK timed. The rate's clock starts once the
    // connection is up: counted from the receiver's start, the first tick sent everything "due" while
    // the receiver started and the client connected (a burst of a few hundred at once, not 1000 msgs/s).
    const live = await connect(gw.mqttPort, 'live')
    const liveAt = performance.now()
    const latencies: number[] = []
    // PUBACK latency while the backlog drains, and after it (the baseline on this machine).
    const during: number[] = []
    const after: number[] = []
    let sent = 0
    const tick = setInterval(() => {
      const due = Math.floor((performance.now() - liveAt) / 1000 * o.rate) - sent
      for (let i = 0; i < due; i++) {
        const at = performance.now()
        sent++
        live.publish('devices/sensor-1/live', `{"phase":"live","i":${sent}}`, { qos: 1 }, (err) => {
          if (err != null) return
          const ms = performance.now() - at
          latencies.push(ms)
          ;(c.backlog < o.events ? during : after).push(ms)
        })
      }
    }, 10)

    let peakRss = afterBacklog.rss
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, procStatus(pid).rss) }, 100)
    let lastLog = 0
    while (c.backlog < o.events) {
      await sleep(100)
      if (performance.now() - lastLog > 5000) {
        lastLog = performance.now()
        log(`  drained ${c.backlog}/${o.events}, live delivered ${c.live}, RSS ${(procStatus(pid).rss / 2 ** 20).toFixed(1)} MiB`)
      }
    }
    // The receiver's own CPU from its start to the end of the drain (its last report, at most 50 ms old).
    const receiverCpuMicros = c.cpuMicros
    const receiverEvents = c.backlog + c.live
    const drainSecs = (c.lastBacklogAt - upAtWall) / 1000
    // The gateway's CPU over about the same stretch: all threads, and the main thread and the busiest
    // others (the store's writer and reader, V8's helpers for concurrent marking and sweeping).
    const gatewayCpuSeconds = (procSample(pid)?.cpuSeconds ?? 0) - cpu0.total
    const gatewayThreads = threadCpuDelta(pid, cpu0.threads, threadCpu(pid))
    // Commits that the disk held up while the backlog drained (the live PUBACKs wait for them).
    const slowCommits = slowCommitsBetween(m0, await scrape(admin))
    // Keep live traffic going a little longer: the latency after the drain is the baseline.
    await sleep(2000)
    clearInterval(tick)
    const liveSent = sent
    await sleep(1000)
    clearInterval(sampler)
    const final = procStatus(pid)
    live.end(true)
    await closeReceiver()
    const stats = (xs: readonly number[]) => {
      const sorted = [...xs].sort((a, b) => a - b)
      return {
        count: sorted.length,
        p50: Number(percentile(sorted, 50).toFixed(2)),
        p99: Number(percentile(sorted, 99).toFixed(2)),
        max: Number((sorted.at(-1) ?? 0).toFixed(2)),
      }
    }
    const result = {
      type: o.type,
      backlogEvents: o.events,
      batchMaxEvents: o.batch,
      ingestRateMsgsPerSec: Math.round(ingestRate),
      drainSeconds: Number(drainSecs.toFixed(2)),
      drainRateEventsPerSec: Math.round(o.events / drainSecs),
      liveRateMsgsPerSec: o.rate,
      liveSent,
      liveAcked: latencies.length,
      liveDeliveredDuringRun: c.live,
      gatewayCpuSecondsDuringDrain: Number(gatewayCpuSeconds.toFixed(2)),
      gatewayCpuMicrosPerEvent: Number((gatewayCpuSeconds * 1e6 / Math.max(1, receiverEvents)).toFixed(2)),
      gatewayThreadCpuSecondsDuringDrain: gatewayThreads,
      receiverCpuSecondsDuringDrain: Number((receiverCpuMicros / 1e6).toFixed(2)),
      receiverCpuMicrosPerEvent: Number((receiverCpuMicros / Math.max(1, receiverEvents)).toFixed(2)),
      livePubackMsDuringDrain: stats(during),
      livePubackMsAfterDrain: stats(after),
      slowCommitsDuringDrain: slowCommits,
      gatewayRssMiB: {
        afterBacklog: Number((afterBacklog.rss / 2 ** 20).toFixed(1)),
        ...(o.settleMs === 0
          ? {}
          : {
              settleSeconds: o.settleMs / 1000,
              emptyStoreSettled: Number((emptySettled!.rss / 2 ** 20).toFixed(1)),
              backlogSettled: Number((backlogSettled!.rss / 2 ** 20).toFixed(1)),
              backlogSettledAfterRestart: Number((backlogSettledAfterRestart!.rss / 2 ** 20).toFixed(1)),
            }),
        peakDuringDrain: Number((peakRss / 2 ** 20).toFixed(1)),
        end: Number((final.rss / 2 ** 20).toFixed(1)),
        vmHwm: Number((final.hwm / 2 ** 20).toFixed(1)),
      },
      node: process.version,
      cpus: os.cpus().length,
    }
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
  } finally {
    gw.child.kill('SIGTERM')
    await gw.exited
    if (!o.keep) fs.rmSync(dir, { recursive: true, force: true })
  }
}

const cli = args()
;(cli.serve === undefined ? main() : serve(cli.serve, cli.port)).catch((err: Error) => {
  process.stderr.write(`drain-measure: ${err.stack ?? err.message}\n`)
  process.exitCode = 1
})
