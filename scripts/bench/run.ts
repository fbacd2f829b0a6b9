// `npm run bench`: gridgate's benchmarks, each against the real CLI in a child process with a real
// config and a data dir on a disk-backed file system, a local HTTP receiver in its own process, and
// load generators in their own processes. Writes bench-results/<run>.json and .svg, prints a table.
//
//   npm run bench -- [--scenario 1,2,3,4,5,6,7] [--quick] [--procs 1] [--drain-events 1000000]
//                    [--data-dir DIR] [--no-mosquitto] [--profile] [--flash-commit-delay 100ms]
//                    [--node-options "--max-semi-space-size=32"] [--rounds 3]
//
// --rounds: scenario 1 runs gridgate and mosquitto this many times (default 3, 1 with --quick),
// alternating which goes first; the round with the median ratio is reported, with the others.
// --node-options: NODE_OPTIONS for the gateways measured (runtime tuning, e.g. a larger V8 young
// generation); the default configuration is measured without it, and the results record it.
//
// Scenarios: 1 saturated MQTT QoS1 ingest with HTTP forwarding (and mosquitto side by side, and two
// reference brokers built on aedes: scripts/bench/aedes-baseline.ts);
// 2 fixed 5,000 msgs/s from 100 connections (PUBACK, device→cloud and event-loop delay p99, also
// without the first 2 s of JIT warm-up);
// 3 10,000 idle subscribed connections (RSS); 4 drain of a backlog (scripts/drain-measure.ts);
// 5 CoAP CON POST at saturation; 6 WebSocket JSON at saturation; 7 flash wear (bytes written and
// fsyncs per event at 100 and 5,000 msgs/s, store.sync full and normal).
import fs from 'node:fs'
import os from 'node:os'
import net from 'node:net'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { stringify } from 'yaml'
import { spawnGatewayProcess, type GatewayProcess } from '../gateway-process.js'
import type { LoadgenResult } from './loadgen.js'
import type { BaselineResult } from './aedes-baseline.js'
import type { ReceiverReport } from './receiver.js'
import { renderSvg, type Panel } from './svg.js'
import { commitsBetween, scrape, slowCommitsBetween } from './metrics.js'
import { assertDiskBacked, cpuCapacity, fdatasyncMs, loadAverage, machine, MiB, nofile, pressure, pressureBetween, procSample, threadCpu, threadCpuDelta, type ProcSample } from './sys.js'
import { WARMUP_SECONDS, type Percentiles } from './stats.js'
import { freePort } from '../net.js'

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, '..', '..', '..')
const script = (name: string): string => path.join(here, name)
const log = (line: string): void => { process.stderr.write(`${line}\n`) }

const DEVICES = 100
const SCENARIOS: Record<string, string> = { 1: 'ingest', 2: 'rate', 3: 'idle', 4: 'drain', 5: 'coap', 6: 'ws', 7: 'flash' }
/** Connections scenario 3 holds open: the gateway and the load generator each need one descriptor per connection. */
const IDLE_CONNECTIONS = 10_000
const FD_MARGIN = 1024
/** How long an idle gateway is left before its RSS counts as settled (V8's memory reducer has run). */
const SETTLE_MS = 15_000

interface Options {
  scenarios: number[]
  quick: boolean
  procs: number
  drainEvents: number
  dataDir: string
  out: string
  mosquitto: string | null
  profile: boolean
  /** NODE_OPTIONS for the gateway processes (runtime tuning; none by default). */
  nodeOptions: string | null
  /** Extra scenario 7 rows with this store.commitDelay (not the default; for SD-card sizing). */
  flashCommitDelay: string | null
  /** Scenario 1 runs gridgate and mosquitto this many times, alternating which goes first. */
  rounds: number
}

function options (): Options {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string', default: '1,2,3,4,5,6,7' },
      quick: { type: 'boolean', default: false },
      procs: { type: 'string', default: '1' },
      'drain-events': { type: 'string' },
      'data-dir': { type: 'string', default: os.tmpdir() },
      out: { type: 'string', default: path.join(repoRoot, 'bench-results') },
      'no-mosquitto': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      'node-options': { type: 'string' },
      'flash-commit-delay': { type: 'string' },
      rounds: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  if (values.help) {
    process.stdout.write(`${fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter(l => l.startsWith('//')).join('\n')}\n`)
    process.exit(0)
  }
  const byName = Object.fromEntries(Object.entries(SCENARIOS).map(([k, v]) => [v, Number(k)]))
  const scenarios = values.scenario.split(',').map(s => s.trim()).filter(s => s !== '').map((s) => {
    const n = /^\d+$/.test(s) ? Number(s) : byName[s]
    if (n === undefined || SCENARIOS[n] === undefined) throw new Error(`--scenario: unknown scenario ${s} (1-7 or ${Object.values(SCENARIOS).join(', ')})`)
    return n
  })
  const quick = values.quick
  const procs = Number(values.procs)
  if (!Number.isInteger(procs) || procs < 1 || procs > 10) throw new Error(`--procs: expected 1..10, got ${values.procs}`)
  const drainEvents = Number(values['drain-events'] ?? (quick ? 20_000 : 1_000_000))
  if (!Number.isInteger(drainEvents) || drainEvents < 1) throw new Error(`--drain-events: expected a positive integer, got ${values['drain-events']}`)
  const rounds = Number(values.rounds ?? (quick ? 1 : 3))
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) throw new Error(`--rounds: expected 1..9, got ${values.rounds}`)
  const mosquitto = values['no-mosquitto'] ? null : ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'].find(p => fs.existsSync(p)) ?? null
  return { scenarios: [...new Set(scenarios)].sort(), quick, procs, drainEvents, dataDir: path.resolve(values['data-dir']), out: path.resolve(values.out), mosquitto, profile: values.profile, nodeOptions: values['node-options'] ?? null, flashCommitDelay: values['flash-commit-delay'] ?? null, rounds }
}

// ---- processes -----------------------------------------------------------------------------------

interface ChildRun<T> { pid: number, result: Promise<T>, child: ChildProcess }

/** Runs a node script; its last stdout line is its JSON result. `onLine` sees every line before. */
function runNode<T> (file: string, args: string[], opts: { env?: NodeJS.ProcessEnv, onLine?: (line: string) => void, onErrLine?: (line: string) => void } = {}): ChildRun<T> {
  const child = spawn(process.execPath, [file, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env })
  let out = ''
  let err = ''
  let buf = ''
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString()
    buf += c.toString()
    let nl
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      opts.onLine?.(line)
    }
  })
  let errBuf = ''
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString()
    if (err.length > 1e6) err = err.slice(-1e5)
    if (opts.onErrLine === undefined) return
    errBuf += c.toString()
    let nl
    while ((nl = errBuf.indexOf('\n')) >= 0) {
      opts.onErrLine(errBuf.slice(0, nl))
      errBuf = errBuf.slice(nl + 1)
    }
  })
  const result = new Promise<T>((resolve, reject) => {
    child.on('exit', (code, signal) => {
      if (code !== 0) { reject(new Error(`${path.basename(file)} exited ${signal ?? code}: ${err.slice(-2000)}`)); return }
      // The result is the whole stdout (pretty-printed) or its last line (after progress lines).
      for (const text of [out, out.trim().split('\n').at(-1) ?? '']) {
        try { resolve(JSON.parse(text) as T); return } catch {}
      }
      reject(new Error(`${path.basename(file)} printed no JSON result: ${out.slice(-500)}${err.slice(-1500)}`))
    })
  })
  // Awaited later (or not at all when a scenario fails first): never an unhandled rejection.
  result.catch(() => {})
  return { pid: child.pid!, result, child }
}

class Receiver {
  private nextId = 1
  private readonly waiting = new Map<number, (m: unknown) => void>()
  private constructor (readonly child: ChildProcess, readonly port: number) {
    child.on('message', (m: { id?: number }) => {
      if (m.id === undefined) return
      const w = this.waiting.get(m.id)
      this.waiting.delete(m.id)
      w?.(m)
    })
  }

  static async start (): Promise<Receiver> {
    const child = fork(script('receiver.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m: { port: number }) => resolve(m.port))
      child.once('exit', (code) => reject(new Error(`the receiver exited (${code})`)))
    })
    return new Receiver(child, port)
  }

  get url (): string { return `http://127.0.0.1:${this.port}/events` }

  private ask<T> (cmd: 'reset' | 'count' | 'report'): Promise<T> {
    const id = this.nextId++
    return new Promise((resolve) => {
      this.waiting.set(id, resolve as (m: unknown) => void)
      this.child.send({ cmd, id })
    })
  }

  reset (): Promise<unknown> { return this.ask('reset') }
  async count (): Promise<number> { return (await this.ask<{ events: number }>('count')).events }
  report (): Promise<ReceiverReport> { return this.ask('report') }

  /** Waits until n events arrived (or the timeout); the seconds it took from `since` (performance.now()). */
  async waitFor (n: number, timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs
    while (performance.now() < deadline) {
      if (await this.count() >= n) return true
      await sleep(50)
    }
    return false
  }

  close (): void { this.child.kill('SIGTERM') }
}

interface Gateway {
  proc: GatewayProcess
  pid: number
  dir: string
  admin: string
  /** Where the gateway writes its .cpuprofile and .heapprofile on exit (--profile), else null. */
  profileDir: string | null
  stop (): Promise<void>
}

function gatewayConfig (dir: string, uplinkUrl: string | null, store: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    gateway: { id: 'gw-bench', dataDir: path.join(dir, 'data'), logLevel: 'info' },
    mqtt: { host: '127.0.0.1', port: 0 },
    coap: { host: '127.0.0.1', port: 0 },
    websocket: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    devices: Array.from({ length: DEVICES }, (_, i) => ({ id: `bench-${i}`, token: `bench-token-${i}` })),
    // Only the defaults count: the uplink names its URL and nothing else.
    uplinks: uplinkUrl === null ? [] : [{ name: 'cloud', type: 'http', url: uplinkUrl }],
    ...(Object.keys(store).length === 0 ? {} : { store }),
  }
}

async function startGateway (o: Options, label: string, uplinkUrl: string | null, store: Record<string, unknown> = {}): Promise<Gateway> {
  const dir = fs.mkdtempSync(path.join(o.dataDir, `gg-bench-${label.replace(/[^A-Za-z0-9]+/g, '-')}-`))
  const file = path.join(dir, 'gridgate.yaml')
  fs.writeFileSync(file, stringify(gatewayConfig(dir, uplinkUrl, store)))
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '' }
  const nodeOptions = [o.nodeOptions ?? '', o.profile ? `--import=${script('profile-preload.js')}` : ''].filter(x => x !== '').join(' ')
  if (nodeOptions !== '') env.NODE_OPTIONS = nodeOptions
  const profileDir = o.profile ? path.join(o.out, 'profiles', label.replace(/[^A-Za-z0-9]+/g, '-')) : null
  if (profileDir !== null) env.BENCH_PROFILE_DIR = profileDir
  const proc = await spawnGatewayProcess({ configFile: file, env, readyTimeoutMs: 60_000 })
  const pid = proc.child.pid!
  return {
    proc, pid, dir, admin: `http://127.0.0.1:${proc.adminPort}`, profileDir,
    async stop () {
      proc.child.kill('SIGTERM')
      const t = setTimeout(() => proc.child.kill('SIGKILL'), 20_000)
      await proc.exited
      clearTimeout(t)
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

interface Mosquitto { port: number, pid: number, stop (): Promise<void> }

async function startMosquitto (bin: string, o: Options): Promise<Mosquitto> {
  const dir = fs.mkdtempSync(path.join(o.dataDir, 'gg-bench-mosquitto-'))
  const port = await freePort()
  const conf = path.join(dir, 'mosquitto.conf')
  // Not durable: no persistence. Nagle off like gridgate's listener.
  fs.writeFileSync(conf, [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'set_tcp_nodelay true', 'log_dest none', ''].join('\n'))
  const child = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  child.stderr.on('data', (c: Buffer) => { err += c.toString() })
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  const deadline = Date.now() + 10_000
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) break
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`mosquitto did not start: ${err}`)
    await sleep(50)
  }
  return {
    port, pid: child.pid!,
    async stop () { child.kill('SIGTERM'); await exited; fs.rmSync(dir, { recursive: true, force: true }) },
  }
}

// ---- sampling ------------------------------------------------------------------------------------

/** prom-client's event-loop monitoring precision (its default; gateway/metrics.ts keeps it). */
const EVENT_LOOP_RESOLUTION_MS = 10

interface Sample { t: number, rssMiB: number, cpuPercent: number, eventLoopP99Ms: number | null }

/** Once per second: the gateway's RSS and CPU from /proc, its event-loop delay p99 from /metrics. */
class Sampler {
  readonly samples: Sample[] = []
  private timer: NodeJS.Timeout | null = null
  private readonly t0 = performance.now()
  private last: ProcSample | null
  private lastAt = performance.now()
  constructor (private readonly pid: number, private readonly admin: string | null) {
    this.last = procSample(pid)
    // Collecting resets prom-client's event-loop histogram: each scrape covers the second before it.
    if (admin !== null) void scrape(admin)
    this.timer = setInterval(() => { void this.tick() }, 1000)
  }

  private async tick (): Promise<void> {
    const s = procSample(this.pid)
    const now = performance.now()
    if (s === null) return
    const cpu = this.last === null ? 0 : (s.cpuSeconds - this.last.cpuSeconds) / ((now - this.lastAt) / 1000) * 100
    this.last = s
    this.lastAt = now
    const m = this.admin === null ? null : await scrape(this.admin)
    const lag = m?.get('gridgate_nodejs_eventloop_lag_p99_seconds')
    // prom-client's figure comes from monitorEventLoopDelay({ resolution: 10 }), which records the whole
    // interval between its 10 ms timer's runs: an idle loop reads 10-11 ms. The delay is what exceeds it.
    const delayMs = lag === undefined ? null : Math.max(0, lag * 1000 - EVENT_LOOP_RESOLUTION_MS)
    this.samples.push({ t: Number(((now - this.t0) / 1000).toFixed(1)), rssMiB: MiB(s.rss), cpuPercent: Math.round(cpu), eventLoopP99Ms: delayMs === null ? null : Number(delayMs.toFixed(2)) })
  }

  stop (): Sample[] {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    return this.samples
  }
}

/** Unlabelled (or summed) metric values from the admin /metrics. */

// ---- scenarios -----------------------------------------------------------------------------------

interface Usage { cpuSeconds: number, writeBytes: number, rssMiB: number, peakRssMiB: number }

function usage (before: ProcSample | null, after: ProcSample | null): Usage {
  return {
    cpuSeconds: Number(((after?.cpuSeconds ?? 0) - (before?.cpuSeconds ?? 0)).toFixed(2)),
    writeBytes: (after?.writeBytes ?? 0) - (before?.writeBytes ?? 0),
    rssMiB: MiB(after?.rss ?? 0),
    peakRssMiB: MiB(after?.hwm ?? 0),
  }
}

/** Several load generator processes as one: sums, and the worst p99/max (percentiles do not add up). */
function combine (rs: LoadgenResult[]): LoadgenResult & { processes: number, perProcess: Array<{ msgsPerSec: number, cpuUtilisation: number, ackMs: Percentiles }> } {
  const first = rs[0]!
  if (rs.length === 1) return { ...first, processes: 1, perProcess: [{ msgsPerSec: first.msgsPerSec, cpuUtilisation: first.cpuUtilisation, ackMs: first.ackMs }] }
  const seconds = Math.max(...rs.map(r => r.seconds))
  const acked = rs.reduce((a, r) => a + r.acked, 0)
  const count = rs.reduce((a, r) => a + r.ackMs.count, 0)
  const timeline = first.timeline.map((p, i) => ({ ...p, count: rs.reduce((a, r) => a + (r.timeline[i]?.count ?? 0), 0), p99: Math.max(...rs.map(r => r.timeline[i]?.p99 ?? 0)) }))
  return {
    ...first,
    connections: rs.reduce((a, r) => a + r.connections, 0),
    sent: rs.reduce((a, r) => a + r.sent, 0),
    acked,
    late: rs.reduce((a, r) => a + r.late, 0),
    errors: rs.flatMap(r => r.errors).slice(0, 20),
    seconds,
    msgsPerSec: Math.round(acked / seconds),
    // Percentiles do not add up: the worst process's steady-state p99 stands for all.
    ackMsAfterWarmup: rs.every(r => r.ackMsAfterWarmup !== null) ? rs.map(r => r.ackMsAfterWarmup!).reduce((a, b) => (b.p99 > a.p99 ? b : a)) : null,
    ackMs: {
      count,
      p50: Number((rs.reduce((a, r) => a + r.ackMs.p50 * r.ackMs.count, 0) / count).toFixed(3)),
      p99: Math.max(...rs.map(r => r.ackMs.p99)),
      max: Math.max(...rs.map(r => r.ackMs.max)),
      mean: Number((rs.reduce((a, r) => a + r.ackMs.mean * r.ackMs.count, 0) / count).toFixed(3)),
    },
    timeline,
    cpuSeconds: Number(rs.reduce((a, r) => a + r.cpuSeconds, 0).toFixed(3)),
    cpuUtilisation: Number(rs.reduce((a, r) => a + r.cpuUtilisation, 0).toFixed(3)),
    processes: rs.length,
    perProcess: rs.map(r => ({ msgsPerSec: r.msgsPerSec, cpuUtilisation: r.cpuUtilisation, ackMs: r.ackMs })),
  }
}

interface MqttLoad { connections: number, messages?: number, rate?: number, duration?: number, window: number, procs: number }

async function mqttLoad (port: number, l: MqttLoad): Promise<ReturnType<typeof combine>> {
  const runs = Array.from({ length: l.procs }, (_, p) => {
    const conns = Math.floor(l.connections / l.procs) + (p < l.connections % l.procs ? 1 : 0)
    return runNode<LoadgenResult>(script('loadgen.js'), [
      '--port', String(port), '--connections', String(conns), '--window', String(l.window),
      '--messages', String(l.messages ?? 0), '--rate', String((l.rate ?? 0) / l.procs), '--duration', String(l.duration ?? 0),
      '--devices', String(DEVICES), '--client-prefix', `lg${p}-`, '--size', '200',
    ]).result
  })
  return combine(await Promise.all(runs))
}

const perMessageUs = (cpuSeconds: number, messages: number): number => messages === 0 ? 0 : Number((cpuSeconds / messages * 1e6).toFixed(1))

/** Store commits between two scrapes; null while gridgate_store_commits_total stays 0 (not counted by this build). */

interface Ctx { o: Options, rx: Receiver, rxPid: number, charts: Panel[][] }

/** Runs an MQTT load against a fresh gateway with an HTTP uplink and measures the whole path. */
async function gatewayRun (ctx: Ctx, label: string, load: MqttLoad, chart: boolean): Promise<Record<string, unknown>> {
  const gw = await startGateway(ctx.o, label, ctx.rx.url)
  let result: Record<string, unknown> & { loadgen: LoadgenResult }
  try {
    result = await measureRun(ctx, gw, label, load, chart)
  } finally {
    await gw.stop()
  }
  // With --profile the gateway wrote its allocation sample when it exited.
  const heap = gw.profileDir === null ? null : allocatedBytes(path.join(gw.profileDir, `gridgate-${gw.pid}.heapprofile`))
  if (heap === null) return result
  return { ...result, allocatedKiBPerMessage: Number((heap / 1024 / Math.max(1, result.loadgen.acked)).toFixed(2)), allocationNote: 'bytes the main thread allocated (V8 sampling heap profiler, collected objects included) over the gateway\'s life, per acknowledged message' }
}

/** Total bytes in a V8 sampling heap profile (every sampled allocation, collected or not), or null. */
function allocatedBytes (file: string): number | null {
  if (!fs.existsSync(file)) return null
  interface Node { selfSize: number, children: Node[] }
  const sum = (n: Node): number => n.children.reduce((acc, c) => acc + sum(c), n.selfSize)
  return sum((JSON.parse(fs.readFileSync(file, 'utf8')) as { head: Node }).head)
}

async function measureRun (ctx: Ctx, gw: Gateway, label: string, load: MqttLoad, chart: boolean): Promise<Record<string, unknown> & { loadgen: LoadgenResult }> {
  const { rx } = ctx
  await sleep(1000)
  // Reset now, so the receiver's timeline starts with the load (its warm-up seconds are the load's).
  await rx.reset()
  const idle = procSample(gw.pid)
  const m0 = await scrape(gw.admin)
  const sampler = new Sampler(gw.pid, gw.admin)
  const rx0 = procSample(ctx.rxPid)
  const g0 = procSample(gw.pid)
  const th0 = threadCpu(gw.pid)
  const t0 = performance.now()
  const lg = await mqttLoad(gw.proc.mqttPort, load)
  const allDelivered = await rx.waitFor(lg.acked, 120_000)
  const deliveredSeconds = (performance.now() - t0) / 1000
  const samples = sampler.stop()
  const g1 = procSample(gw.pid)
  const threads = threadCpuDelta(gw.pid, th0, threadCpu(gw.pid))
  const rx1 = procSample(ctx.rxPid)
  const m1 = await scrape(gw.admin)
  const report = await rx.report()
  const gu = usage(g0, g1)
  const lags = samples.map(s => s.eventLoopP99Ms).filter((x): x is number => x !== null).sort((a, b) => a - b)
  const samplesAfterWarmup = samples.filter(s => s.t > WARMUP_SECONDS + 0.5).map(s => s.eventLoopP99Ms).filter((x): x is number => x !== null)
  const commits = commitsBetween(m0, m1)
  if (chart) {
    ctx.charts.push([
      { title: `${label}: throughput`, unit: 'msgs/s', series: [{ name: 'PUBACKed', points: lg.timeline.map(p => [p.t, p.count]) }, { name: 'delivered to cloud', points: report.timeline.map(p => [p.t, p.count]) }] },
      { title: `${label}: latency`, unit: 'ms', series: [
        { name: 'PUBACK p50', points: lg.timeline.map(p => [p.t, p.p50]) }, { name: 'PUBACK p99', points: lg.timeline.map(p => [p.t, p.p99]) },
        { name: 'device→cloud p99', points: report.timeline.map(p => [p.t, p.p99]) },
        { name: 'event loop p99', points: samples.filter(s => s.eventLoopP99Ms !== null).map(s => [s.t, s.eventLoopP99Ms!]) },
      ] },
      { title: `${label}: gateway`, unit: 'MiB RSS / % CPU', series: [{ name: 'RSS MiB', points: samples.map(s => [s.t, s.rssMiB]) }, { name: 'CPU %', points: samples.map(s => [s.t, s.cpuPercent]) }] },
    ])
  }
  return {
    loadgen: lg,
    msgsPerSec: lg.msgsPerSec,
    pubackMs: lg.ackMs,
    deviceToCloudMs: report.latencyMs,
    /** The same without the first WARMUP_SECONDS (JIT warm-up, connections coming up). */
    afterWarmup: {
      seconds: WARMUP_SECONDS,
      pubackMs: lg.ackMsAfterWarmup,
      deviceToCloudMs: report.latencyMsAfterWarmup,
      eventLoopP99Ms: { max: Math.max(...samplesAfterWarmup), median: samplesAfterWarmup.sort((a, b) => a - b)[Math.floor(samplesAfterWarmup.length / 2)] ?? null },
    },
    delivered: report.events,
    allDelivered,
    deliveredSeconds: Number(deliveredSeconds.toFixed(2)),
    uplinkBatches: report.batches,
    eventLoopP99Ms: { max: lags.at(-1) ?? null, median: lags[Math.floor(lags.length / 2)] ?? null, samples: lags.length, note: 'per 1 s window: p99 of monitorEventLoopDelay minus its 10 ms sampling interval' },
    gateway: {
      idleRssMiB: MiB(idle?.rss ?? 0),
      ...gu,
      cpuPerMessageUs: perMessageUs(gu.cpuSeconds, lg.acked),
      /** Where the CPU went: the main thread (network, MQTT, ingest, forwarding) and the busiest other threads (SQLite workers, libuv). */
      threadCpuSeconds: threads,
      mainThreadBusy: Number((threads.mainSeconds / deliveredSeconds).toFixed(2)),
      writeBytesPerEvent: lg.acked === 0 ? 0 : Math.round(gu.writeBytes / lg.acked),
      commits,
      eventsPerCommit: commits === null || commits === 0 ? null : Number((lg.acked / commits).toFixed(1)),
      slowCommits: slowCommitsBetween(m0, m1),
    },
    receiver: { cpuSeconds: usage(rx0, rx1).cpuSeconds, cpuPerMessageUs: perMessageUs(usage(rx0, rx1).cpuSeconds, report.events) },
    loadgenCpuPerMessageUs: perMessageUs(lg.cpuSeconds, lg.acked),
    timeline: samples,
  }
}

/** The MQTT load against a broker other than gridgate, with the broker process's CPU from /proc. */
async function brokerLoad (pid: number, port: number, load: MqttLoad): Promise<{ loadgen: ReturnType<typeof combine>, msgsPerSec: number, pubackMs: Percentiles, broker: Usage & { cpuPerMessageUs: number } }> {
  const p0 = procSample(pid)
  const lg = await mqttLoad(port, load)
  const u = usage(p0, procSample(pid))
  return { loadgen: lg, msgsPerSec: lg.msgsPerSec, pubackMs: lg.ackMs, broker: { ...u, cpuPerMessageUs: perMessageUs(u.cpuSeconds, lg.acked) } }
}

async function mosquittoRun (ctx: Ctx, load: MqttLoad): Promise<Record<string, unknown> | null> {
  if (ctx.o.mosquitto === null) return null
  const mq = await startMosquitto(ctx.o.mosquitto, ctx.o)
  try {
    return await brokerLoad(mq.pid, mq.port, load)
  } finally {
    await mq.stop()
  }
}

/**
 * The same load against aedes itself (scripts/bench/aedes-baseline.ts): as it comes, and with each
 * payload committed to SQLite before its PUBACK. What separates gridgate from the second is gridgate's
 * own pipeline (authentication aside: normalising, deduplication, routing, forwarding).
 */
async function baselineRun (ctx: Ctx, load: MqttLoad, mode: BaselineResult['mode']): Promise<Record<string, unknown>> {
  let port = 0
  const broker = runNode<BaselineResult>(script('aedes-baseline.js'), ['--mode', mode, '--data-dir', ctx.o.dataDir], {
    onLine: (line) => { if (line.includes('"listening"')) port = (JSON.parse(line) as { port: number }).port },
  })
  try {
    const deadline = Date.now() + 10_000
    while (port === 0) {
      if (broker.child.exitCode !== null) await broker.result
      if (Date.now() > deadline) throw new Error(`the ${mode} aedes baseline did not start listening`)
      await sleep(50)
    }
    const measured = await brokerLoad(broker.pid, port, load)
    broker.child.kill('SIGTERM')
    const done = await broker.result
    return { ...measured, ...(mode === 'sqlite' ? { eventsPerCommit: Number((done.committed / Math.max(1, done.commits)).toFixed(1)) } : {}) }
  } finally {
    if (broker.child.exitCode === null) broker.child.kill('SIGKILL')
  }
}

interface IngestRound { gridgate: Record<string, unknown>, mosquitto: Record<string, unknown> | null, ratio: number | null, loadAverage: number[], charts: Panel[][] }

/**
 * One round of scenario 1: gridgate and mosquitto under the same load, one after the other. Every second
 * round (the 2nd, 4th, …) runs mosquitto first, so a machine that gets busier (or quieter) during the
 * run favours neither.
 */
async function ingestRound (ctx: Ctx, load: MqttLoad, round: number): Promise<IngestRound> {
  const mosquittoFirst = round % 2 === 1
  let mosquitto = mosquittoFirst ? await mosquittoRun(ctx, load) : null
  const charted = ctx.charts.length
  const gridgate = await gatewayRun(ctx, ctx.o.rounds > 1 ? `scenario 1 (saturated ingest), round ${round + 1}` : 'scenario 1 (saturated ingest)', load, true)
  const charts = ctx.charts.splice(charted)
  if (!mosquittoFirst) mosquitto = await mosquittoRun(ctx, load)
  const ratio = mosquitto === null ? null : Number(((gridgate.msgsPerSec as number) / (mosquitto.msgsPerSec as number)).toFixed(3))
  if (ctx.o.rounds > 1) log(`  round ${round + 1}: gridgate ${String(gridgate.msgsPerSec)} msgs/s${mosquitto === null ? '' : `, mosquitto ${String(mosquitto.msgsPerSec)}, ratio ${String(ratio)}`}`)
  return { gridgate, mosquitto, ratio, loadAverage: loadAverage(), charts }
}

async function scenarioIngest (ctx: Ctx): Promise<Record<string, unknown>> {
  const load: MqttLoad = { connections: 10, messages: ctx.o.quick ? 5000 : 50_000, window: 64, procs: ctx.o.procs }
  log(`scenario 1: saturated QoS1 ingest, ${load.connections} connections × ${load.messages} messages of 200 B, window ${load.window}, HTTP uplink, ${ctx.o.rounds} round(s)`)
  const rounds: IngestRound[] = []
  for (let r = 0; r < ctx.o.rounds; r++) rounds.push(await ingestRound(ctx, load, r))
  // The round with the median ratio (the median gridgate rate without mosquitto) stands for the
  // scenario: one busy minute on a shared machine moves a single round's ratio by a third.
  const key = (r: IngestRound): number => r.ratio ?? (r.gridgate.msgsPerSec as number)
  const median = [...rounds].sort((a, b) => key(a) - key(b))[Math.floor((rounds.length - 1) / 2)]!
  ctx.charts.push(...median.charts)
  const ratios = rounds.map(r => r.ratio).filter((x): x is number => x !== null)
  const aedes = await baselineRun(ctx, load, 'plain')
  const aedesSqlite = await baselineRun(ctx, load, 'sqlite')
  return {
    load,
    loadAverage: loadAverage(),
    gridgate: median.gridgate,
    mosquitto: median.mosquitto,
    ratio: median.ratio,
    ratioRange: ratios.length === 0 ? null : [Math.min(...ratios), Math.max(...ratios)],
    rounds: rounds.map((r, i) => ({ round: i + 1, gridgateMsgsPerSec: r.gridgate.msgsPerSec, mosquittoMsgsPerSec: r.mosquitto?.msgsPerSec ?? null, ratio: r.ratio, loadAverage: r.loadAverage, median: r === median })),
    target: 'gridgate ≥ 0.5 × mosquitto (the median round)',
    baselines: { aedes, aedesSqlite, note: 'aedes without hooks; aedes committing each raw payload to SQLite (WAL, synchronous=FULL, group commit) before its PUBACK: scripts/bench/aedes-baseline.ts' },
  }
}

async function scenarioRate (ctx: Ctx): Promise<Record<string, unknown>> {
  const load: MqttLoad = { connections: 100, rate: 5000, duration: ctx.o.quick ? 10 : 30, window: 16, procs: 1 }
  log(`scenario 2: ${load.rate} msgs/s from ${load.connections} connections for ${load.duration} s`)
  const gridgate = await gatewayRun(ctx, 'scenario 2 (5,000 msgs/s)', load, true)
  const mosquitto = await mosquittoRun(ctx, load)
  return { load, loadAverage: loadAverage(), gridgate, mosquitto, targets: { pubackP99Ms: 20, deviceToCloudP99Ms: 50, eventLoopP99Ms: 10 } }
}

async function scenarioIdle (ctx: Ctx): Promise<Record<string, unknown>> {
  const n = ctx.o.quick ? 2000 : IDLE_CONNECTIONS
  log(`scenario 3: ${n} idle MQTT connections subscribed to their command topic`)
  const limit = nofile()
  if (limit.soft < n + FD_MARGIN) throw new Error(`scenario 3 needs RLIMIT_NOFILE ≥ ${n + FD_MARGIN} (have ${limit.soft}, hard ${limit.hard}); raise the hard limit (ulimit -Hn) and run again`)
  await ctx.rx.reset()
  const gw = await startGateway(ctx.o, 'idle', ctx.rx.url)
  try {
    await sleep(2000)
    const idle = procSample(gw.pid)
    // V8 gives back the heap its start-up grew (the memory reducer runs some seconds after allocation
    // stops): an idle gateway's RSS is the settled one, the start-up figure is kept beside it.
    await sleep(SETTLE_MS)
    const idleSettled = procSample(gw.pid)
    const gwLimit = nofile(gw.pid)
    let connectedAt = 0
    const t0 = performance.now()
    const lg = runNode<LoadgenResult>(script('loadgen.js'), [
      '--port', String(gw.proc.mqttPort), '--connections', String(n), '--window', '1', '--subscribe', '--hold=-1',
      '--devices', String(DEVICES), '--client-prefix', 'idle-',
    ], { onLine: (line) => { if (line.includes('"connected"')) connectedAt = performance.now() } })
    while (connectedAt === 0) {
      if (lg.child.exitCode !== null) await lg.result
      await sleep(100)
    }
    // Let allocation settle, then sample a few times.
    await sleep(3000)
    const m = await scrape(gw.admin)
    const held = procSample(gw.pid)
    await sleep(2000)
    const held2 = procSample(gw.pid)
    await sleep(SETTLE_MS)
    const heldSettled = procSample(gw.pid)
    const loadgenSample = procSample(lg.pid)
    lg.child.kill('SIGTERM')
    const r = await lg.result
    return {
      connections: n,
      connectSeconds: Number(((connectedAt - t0) / 1000).toFixed(2)),
      gatewayConnectionsMetric: m?.get('gridgate_connections') ?? null,
      idleRssMiB: MiB(idleSettled?.rss ?? 0),
      idleRssAtStartMiB: MiB(idle?.rss ?? 0),
      rssMiB: MiB(Math.max(held?.rss ?? 0, held2?.rss ?? 0)),
      rssSettledMiB: MiB(heldSettled?.rss ?? 0),
      peakRssMiB: MiB(heldSettled?.hwm ?? 0),
      rssPerConnectionKiB: Number((((held2?.rss ?? 0) - (idleSettled?.rss ?? 0)) / n / 1024).toFixed(1)),
      note: `idleRssMiB: ${SETTLE_MS / 1000} s after start-up (idleRssAtStartMiB: 2 s after ready); rssMiB: 3-5 s after the last connection, rssSettledMiB: ${SETTLE_MS / 1000} s later`,
      loadgenRssMiB: MiB(loadgenSample?.rss ?? 0),
      errors: r.errors,
      rlimitNofile: { bench: limit, gateway: gwLimit },
      loadAverage: loadAverage(),
      targets: { rssMiB: 250, idleRssMiB: 80 },
    }
  } finally {
    await gw.stop()
  }
}

async function scenarioDrain (ctx: Ctx): Promise<Record<string, unknown>> {
  log(`scenario 4: drain of a ${ctx.o.drainEvents}-event backlog (scripts/drain-measure.ts) with 1000 msgs/s live traffic`)
  // drain-measure makes its temp dir under TMPDIR: point it at the checked data dir.
  // Its gateway's RSS with an empty store, sampled when it logs its pid (before the backlog is built).
  let emptyStoreRssMiB: number | null = null
  const r = await runNode<Record<string, unknown>>(path.join(repoRoot, 'dist', 'scripts', 'drain-measure.js'), ['--events', String(ctx.o.drainEvents), '--settle', String(SETTLE_MS / 1000)], {
    // drain-measure hands NODE_OPTIONS on to its gateway.
    env: { ...process.env, TMPDIR: ctx.o.dataDir, ...(ctx.o.nodeOptions === null ? {} : { NODE_OPTIONS: ctx.o.nodeOptions }) },
    onErrLine: (line) => {
      const pid = /^gateway pid (\d+)/.exec(line)?.[1]
      if (pid !== undefined) emptyStoreRssMiB = MiB(procSample(Number(pid))?.rss ?? 0)
      else if (line.trim() !== '') log(`  ${line.trim()}`)
    },
  }).result
  return {
    ...r,
    emptyStoreRssMiB,
    loadAverage: loadAverage(),
    note: 'emptyStoreRssMiB: the same gateway just started (empty store); gatewayRssMiB.emptyStoreSettled: it, left alone for settleSeconds; .afterBacklog: with the whole backlog stored, right after the ingest that built it; .backlogSettled: that gateway left alone for settleSeconds; .backlogSettledAfterRestart: a gateway restarted on the backlog (uplink still down), left alone as long; .end: after the drain (backlog gone, same traffic history)',
  }
}

async function otherProtocol (ctx: Ctx, label: string, file: string, args: string[], listener: string): Promise<Record<string, unknown>> {
  await ctx.rx.reset()
  const gw = await startGateway(ctx.o, label, ctx.rx.url)
  try {
    await sleep(1000)
    const port = gw.proc.ports[listener]
    if (port === undefined) throw new Error(`the gateway reported no ${listener} listener`)
    const g0 = procSample(gw.pid)
    const m0 = await scrape(gw.admin)
    const lg = await runNode<LoadgenResult>(script(file), ['--port', String(port), '--devices', String(DEVICES), ...args]).result
    const allDelivered = await ctx.rx.waitFor(lg.acked, 120_000)
    const g1 = procSample(gw.pid)
    const m1 = await scrape(gw.admin)
    const report = await ctx.rx.report()
    const gu = usage(g0, g1)
    const commits = commitsBetween(m0, m1)
    return {
      loadgen: lg,
      msgsPerSec: lg.msgsPerSec,
      ackMs: lg.ackMs,
      deviceToCloudMs: report.latencyMs,
      delivered: report.events,
      allDelivered,
      gateway: { ...gu, cpuPerMessageUs: perMessageUs(gu.cpuSeconds, lg.acked), commits, eventsPerCommit: commits === null || commits === 0 ? null : Number((lg.acked / commits).toFixed(1)) },
      loadAverage: loadAverage(),
    }
  } finally {
    await gw.stop()
  }
}

async function scenarioCoap (ctx: Ctx): Promise<Record<string, unknown>> {
  const per = ctx.o.quick ? 500 : 5000
  log(`scenario 5: CoAP CON POST at saturation, 20 endpoints × ${per}, window 16`)
  return otherProtocol(ctx, 'coap', 'coap-loadgen.js', ['--connections', '20', '--messages', String(per), '--window', '16'], 'coap')
}

async function scenarioWs (ctx: Ctx): Promise<Record<string, unknown>> {
  const per = ctx.o.quick ? 1000 : 10_000
  log(`scenario 6: WebSocket JSON at saturation, 10 connections × ${per}, window 16`)
  return otherProtocol(ctx, 'ws', 'ws-loadgen.js', ['--connections', '10', '--messages', String(per), '--window', '16'], 'websocket')
}

/** strace -c summary: calls per syscall. */
function straceCalls (file: string): Record<string, number> {
  const out: Record<string, number> = {}
  let text = ''
  try { text = fs.readFileSync(file, 'utf8') } catch { return out }
  for (const line of text.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line)
    if (m !== null && m[2] !== 'total') out[m[2]!] = Number(m[1])
  }
  return out
}

function hasStrace (): boolean {
  return spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0
}

interface FlashPass { events: number, late: number, wall: number, trafficSeconds: number, writeBytes: number, commits: number | null, fsyncs: number | null, syscalls: Record<string, number>, pubackMs: Percentiles }

/** One paced run against a fresh gateway with the given store.sync; with strace, fsyncs are counted. */
async function flashPass (ctx: Ctx, sync: 'full' | 'normal', rate: number, seconds: number, trace: boolean, commitDelay: string | null): Promise<FlashPass> {
  await ctx.rx.reset()
  const gw = await startGateway(ctx.o, `flash-${sync}-${rate}${trace ? '-strace' : ''}`, ctx.rx.url, commitDelay === null ? { sync } : { sync, commitDelay })
  try {
    await sleep(1500)
    const traceFile = path.join(gw.dir, 'strace.txt')
    let tracer: ChildProcess | null = null
    let tracerExited: Promise<void> = Promise.resolve()
    if (trace) {
      // -f with -p attaches every thread of the process (the SQLite writer is a worker thread).
      tracer = spawn('strace', ['-c', '-f', '-e', 'trace=fsync,fdatasync,sync_file_range', '-o', traceFile, '-p', String(gw.pid)], { stdio: 'ignore' })
      tracerExited = new Promise((resolve) => tracer!.on('exit', () => resolve()))
      await sleep(500)
    }
    const g0 = procSample(gw.pid)
    const m0 = await scrape(gw.admin)
    const t0 = performance.now()
    const lg = await mqttLoad(gw.proc.mqttPort, { connections: 10, rate, duration: seconds, window: 16, procs: 1 })
    await ctx.rx.waitFor(lg.acked, 60_000)
    // The uplink's cursor moves are committed too: let the last ones land.
    await sleep(1500)
    const wall = (performance.now() - t0) / 1000
    const g1 = procSample(gw.pid)
    const m1 = await scrape(gw.admin)
    if (tracer !== null) { tracer.kill('SIGINT'); await tracerExited }
    const calls = trace ? straceCalls(traceFile) : {}
    return {
      events: lg.acked, late: lg.late, wall, trafficSeconds: lg.seconds, writeBytes: (g1?.writeBytes ?? 0) - (g0?.writeBytes ?? 0), commits: commitsBetween(m0, m1),
      fsyncs: trace ? (calls.fsync ?? 0) + (calls.fdatasync ?? 0) : null, syscalls: calls, pubackMs: lg.ackMs,
    }
  } finally {
    await gw.stop()
  }
}

async function scenarioFlash (ctx: Ctx): Promise<Record<string, unknown>> {
  const seconds = ctx.o.quick ? 5 : 20
  const strace = hasStrace()
  log(`scenario 7: flash wear, ${seconds} s at 100 and 5000 msgs/s, store.sync full and normal${strace ? '; fsyncs counted with strace in a second pass' : '; fsyncs not counted (no strace)'}`)
  const rows: Array<Record<string, unknown>> = []
  const variants: Array<{ sync: 'full' | 'normal', commitDelay: string | null }> = [{ sync: 'full', commitDelay: null }, { sync: 'normal', commitDelay: null }]
  if (ctx.o.flashCommitDelay !== null) variants.push({ sync: 'full', commitDelay: ctx.o.flashCommitDelay })
  for (const { sync, commitDelay } of variants) {
    for (const rate of [100, 5000]) {
      // Bytes and latency without a tracer (ptrace stops every syscall of the gateway), then the
      // same load under strace to count fsyncs.
      const a = await flashPass(ctx, sync, rate, seconds, false, commitDelay)
      const b = strace ? await flashPass(ctx, sync, rate, Math.min(seconds, 10), true, commitDelay) : null
      rows.push({
        sync, commitDelay: commitDelay ?? '0ms (default)', rate, seconds: Number(a.wall.toFixed(1)), events: a.events, late: a.late, achievedMsgsPerSec: Math.round(a.events / a.trafficSeconds),
        writeBytes: a.writeBytes,
        bytesPerEvent: a.events === 0 ? 0 : Math.round(a.writeBytes / a.events),
        writeBytesPerSecond: Math.round(a.writeBytes / a.wall),
        commits: a.commits,
        fsyncs: b?.fsyncs ?? null,
        fsyncsPerSecond: b === null || b.fsyncs === null ? null : Number((b.fsyncs / b.wall).toFixed(1)),
        fsyncsPerEvent: b === null || b.fsyncs === null || b.events === 0 ? null : Number((b.fsyncs / b.events).toFixed(3)),
        stracePass: b === null ? null : { seconds: Number(b.wall.toFixed(1)), events: b.events, late: b.late, syscalls: b.syscalls, writeBytes: b.writeBytes },
        pubackMs: a.pubackMs,
        loadAverage: loadAverage(),
      })
    }
  }
  return {
    method: `write_bytes from /proc/<pid>/io over the run (traffic plus 1.5 s for the last cursor commits), per acknowledged event. ${strace ? 'fsync+fdatasync counted by strace -c -f attached to the gateway in a separate pass of the same load (ptrace slows the gateway; the events in that pass are reported with it).' : 'fsyncs not counted: strace is not installed.'}`,
    rows,
  }
}

// ---- report --------------------------------------------------------------------------------------

function fmtMs (p: Percentiles | undefined | null): string {
  return p === undefined || p === null ? '-' : `${p.p50} / ${p.p99} / ${p.max}`
}

function slowCommits (c: Record<string, number> | null | undefined): string {
  if (c === null || c === undefined) return ''
  return `taking over 25/50/100/250 ms: ${c.over25ms} / ${c.over50ms} / ${c.over100ms} / ${c.over250ms}`
}

function table (results: Record<string, Record<string, unknown>>, meta: Record<string, unknown>): string {
  const lines: string[] = []
  const row = (...cols: string[]): void => { lines.push(`${cols[0]!.padEnd(44)} ${cols.slice(1).join('  ')}`) }
  lines.push('', `gridgate bench ${String(meta.startedAt)}  (${String(meta.mode)}; load average at start ${JSON.stringify(meta.loadAverageAtStart)}, end ${JSON.stringify(meta.loadAverageAtEnd)})`)
  lines.push(`data dir on ${String((meta.dataDirFs as { mount: { fsType: string } }).mount.fsType)}; fdatasync p50/p99 ${JSON.stringify(meta.fdatasyncMs)}; store.sync ${String(meta.storeSync)}; SQLite cache_size ${String(meta.sqliteCacheSize)}; node ${String(meta.node)}; CPU cores for spinning threads at start ${JSON.stringify(meta.cpuCores)}, end ${JSON.stringify(meta.cpuCoresAtEnd)}; RLIMIT_NOFILE ${JSON.stringify(meta.rlimitNofile)}${meta.gatewayNodeOptions === null ? '' : `; gateway NODE_OPTIONS ${String(meta.gatewayNodeOptions)} (not the default)`}`)
  lines.push('')
  for (const [name, r] of Object.entries(results)) if ('error' in r) row(`${name}: FAILED`, String(r.error).split('\n')[0]!)
  const ok = (r: Record<string, unknown> | undefined): Record<string, unknown> | undefined => r === undefined || 'error' in r ? undefined : r
  const s1 = ok(results.ingest)
  if (s1 !== undefined) {
    const g = s1.gridgate as Record<string, any>
    const m = s1.mosquitto as Record<string, any> | null
    const rounds = s1.rounds as Array<{ round: number, gridgateMsgsPerSec: number, mosquittoMsgsPerSec: number | null, ratio: number | null }> | undefined
    const range = s1.ratioRange as [number, number] | null | undefined
    row('1 saturated QoS1 ingest (10 × 200 B)', `gridgate ${g.msgsPerSec} msgs/s`, m === null ? '' : `mosquitto ${m.msgsPerSec} msgs/s`, `ratio ${String(s1.ratio)} (target ≥ 0.5)`)
    if (rounds !== undefined && rounds.length > 1) {
      row(`  ${rounds.length} rounds, the median one shown`, rounds.map(r => r.ratio === null ? `${r.gridgateMsgsPerSec}` : `${r.gridgateMsgsPerSec}/${r.mosquittoMsgsPerSec} ${r.ratio}`).join('; '), range === null || range === undefined ? '' : `ratio ${range[0]}–${range[1]}`)
    }
    row('  PUBACK ms p50/p99/max', `gridgate ${fmtMs(g.pubackMs)}`, m === null ? '' : `mosquitto ${fmtMs(m.pubackMs)}`)
    row('  device→cloud ms p50/p99/max', fmtMs(g.deviceToCloudMs), `delivered ${g.delivered}${g.allDelivered === true ? '' : ' (NOT ALL)'}`)
    row('  CPU µs/msg gateway / loadgen / receiver', `${g.gateway.cpuPerMessageUs} / ${g.loadgenCpuPerMessageUs} / ${g.receiver.cpuPerMessageUs}`, m === null ? '' : `mosquitto ${m.broker.cpuPerMessageUs}`, `loadgen CPU ${g.loadgen.cpuUtilisation}`)
    const b = s1.baselines as Record<string, any> | undefined
    if (b !== undefined) {
      const vs = (x: Record<string, any>): string => m === null ? '' : `${(x.msgsPerSec / m.msgsPerSec).toFixed(2)} × mosquitto`
      row('  aedes alone (no hooks)', `${b.aedes.msgsPerSec} msgs/s, ${b.aedes.broker.cpuPerMessageUs} µs/msg`, `PUBACK p99 ${b.aedes.pubackMs.p99} ms`, vs(b.aedes))
      row('  aedes + SQLite commit before PUBACK', `${b.aedesSqlite.msgsPerSec} msgs/s, ${b.aedesSqlite.broker.cpuPerMessageUs} µs/msg`, `PUBACK p99 ${b.aedesSqlite.pubackMs.p99} ms`, vs(b.aedesSqlite))
    }
    row('  gateway RSS idle / end / peak MiB', `${g.gateway.idleRssMiB} / ${g.gateway.rssMiB} / ${g.gateway.peakRssMiB}`, `bytes written/event ${g.gateway.writeBytesPerEvent}`)
    row('  gateway CPU s: main thread / others', `${g.gateway.threadCpuSeconds.mainSeconds} / ${g.gateway.threadCpuSeconds.otherThreadsSeconds.join(', ')}`, `main thread busy ${g.gateway.mainThreadBusy} of the run`)
    row('  store commits (the writer thread)', `${g.gateway.commits} commits, ${g.gateway.eventsPerCommit} events each`, slowCommits(g.gateway.slowCommits))
    if (g.allocatedKiBPerMessage !== undefined) row('  main thread allocated per message', `${g.allocatedKiBPerMessage} KiB (--profile: V8 sampling heap profiler)`)
  }
  const s2 = ok(results.rate)
  if (s2 !== undefined) {
    const g = s2.gridgate as Record<string, any>
    const m = s2.mosquitto as Record<string, any> | null
    row('2 fixed 5000 msgs/s, 100 connections', `achieved ${g.msgsPerSec} msgs/s`, `late ${g.loadgen.late}`)
    row('  PUBACK ms p50/p99/max (target p99 ≤ 20)', `gridgate ${fmtMs(g.pubackMs)}`, m === null ? '' : `mosquitto ${fmtMs(m.pubackMs)}`)
    row('  device→cloud ms p50/p99/max (p99 ≤ 50)', fmtMs(g.deviceToCloudMs))
    row('  event-loop delay p99 ms (≤ 10)', `max of 1 s windows ${g.eventLoopP99Ms.max}`, `median ${g.eventLoopP99Ms.median}`, '(beyond the 10 ms sampling interval)')
    const w = g.afterWarmup
    row(`  without the first ${w.seconds} s: PUBACK`, fmtMs(w.pubackMs), `device→cloud ${fmtMs(w.deviceToCloudMs)}`, `event loop max ${w.eventLoopP99Ms.max} median ${w.eventLoopP99Ms.median}`)
    row('  gateway CPU µs/msg, RSS end/peak MiB', `${g.gateway.cpuPerMessageUs}`, `${g.gateway.rssMiB} / ${g.gateway.peakRssMiB}`)
    row('  store commits (the writer thread)', `${g.gateway.commits} commits, ${g.gateway.eventsPerCommit} events each`, slowCommits(g.gateway.slowCommits))
  }
  const s3 = ok(results.idle)
  if (s3 !== undefined) {
    row(`3 ${String(s3.connections)} idle subscribed connections`, `RSS ${String(s3.rssMiB)} MiB, settled ${String(s3.rssSettledMiB)} (target ≤ 250)`, `idle RSS settled ${String(s3.idleRssMiB)} MiB (target ≤ 80), at start ${String(s3.idleRssAtStartMiB)}`, `${String(s3.rssPerConnectionKiB)} KiB/connection`)
  }
  const s4 = ok(results.drain)
  if (s4 !== undefined) {
    const r = s4.gatewayRssMiB as Record<string, number> | undefined
    const live = s4.livePubackMsDuringDrain as Percentiles | undefined
    row(`4 drain of ${String(s4.backlogEvents)} events`, `${String(s4.drainRateEventsPerSec)} events/s`, `live PUBACK p50/p99 during drain ${String(live?.p50)} / ${String(live?.p99)} ms`)
    if (s4.gatewayCpuMicrosPerEvent !== undefined) {
      const th = s4.gatewayThreadCpuSecondsDuringDrain as { mainSeconds: number, otherThreadsSeconds: number[] }
      row('  gateway CPU during the drain', `${String(s4.gatewayCpuSecondsDuringDrain)} s, ${String(s4.gatewayCpuMicrosPerEvent)} µs/event`, `main thread ${th.mainSeconds} s, others ${th.otherThreadsSeconds.join(', ')} s`)
    }
    if (s4.receiverCpuMicrosPerEvent !== undefined) row('  receiver CPU (its own process)', `${String(s4.receiverCpuSecondsDuringDrain)} s`, `${String(s4.receiverCpuMicrosPerEvent)} µs/event`)
    if (s4.slowCommitsDuringDrain !== undefined) row('  store commits during the drain', slowCommits(s4.slowCommitsDuringDrain as Record<string, number> | null))
    row('  gateway RSS MiB', `empty store ${String(s4.emptyStoreRssMiB)}`, `with the backlog ${String(r?.afterBacklog)}`, `drain peak ${String(r?.peakDuringDrain)}`, `after the drain ${String(r?.end)}`)
    row('  settled RSS MiB (target: backlog within 20 of empty)', `empty store ${String(r?.emptyStoreSettled)}`, `with the backlog ${String(r?.backlogSettled)}`, `restarted on the backlog ${String(r?.backlogSettledAfterRestart)}`)
  }
  for (const [key, name] of [['coap', '5 CoAP CON POST at saturation'], ['ws', '6 WebSocket JSON at saturation']] as const) {
    const s = ok(results[key]) as Record<string, any> | undefined
    if (s !== undefined) row(name, `${s.msgsPerSec} msgs/s`, `ack ms ${fmtMs(s.ackMs)}`, `CPU ${s.gateway.cpuPerMessageUs} µs/msg`, `delivered ${s.delivered}${s.allDelivered === true ? '' : ' (NOT ALL)'}`)
  }
  const s7 = ok(results.flash)
  if (s7 !== undefined) {
    for (const r of s7.rows as Array<Record<string, any>>) {
      row(`7 flash wear sync=${r.sync}${String(r.commitDelay).startsWith('0ms') ? '' : ` commitDelay=${r.commitDelay}`} at ${r.rate} msgs/s`, `${r.bytesPerEvent} B/event`, `${Math.round(r.writeBytesPerSecond / 1024)} KiB/s written`, `fsyncs/s ${r.fsyncsPerSecond ?? '-'}`, `achieved ${r.achievedMsgsPerSec} msgs/s`)
    }
  }
  const stalls = Object.entries(results).flatMap(([name, r]) => {
    const p = r.pressure as { cpuSomePercent: number, ioSomePercent: number, ioFullPercent: number } | null | undefined
    return p === null || p === undefined ? [] : [`${name} ${p.cpuSomePercent} / ${p.ioSomePercent} / ${p.ioFullPercent}`]
  })
  if (stalls.length > 0) {
    lines.push('')
    row('pressure stalls, % of each scenario (PSI)', 'cpu some / io some / io full:', stalls.join(';  '))
  }
  return `${lines.join('\n')}\n`
}

function chartOf (ctx: Ctx, meta: Record<string, unknown>): string {
  return renderSvg({
    title: 'gridgate bench',
    subtitle: `${String(meta.startedAt)}, ${String(meta.mode)}, node ${String(meta.node)}, load average ${JSON.stringify(meta.loadAverageAtStart)}`,
    panels: ctx.charts.flat(),
  })
}

function mosquittoVersion (bin: string | null): string | null {
  if (bin === null) return null
  // `mosquitto -h` prints its version first and exits non-zero.
  const r = spawnSync(bin, ['-h'], { encoding: 'utf8' })
  return `${r.stdout}${r.stderr}`.split('\n')[0]?.trim() || bin
}

// ---- main ----------------------------------------------------------------------------------------

/** Re-runs this process under a shell that raised RLIMIT_NOFILE, when scenario 3 needs more descriptors. */
function raiseNofile (o: Options): boolean {
  if (!o.scenarios.includes(3) || process.env.BENCH_NOFILE_RAISED === '1') return false
  const want = (o.quick ? 2000 : IDLE_CONNECTIONS) + FD_MARGIN
  const { soft, hard } = nofile()
  if (soft >= want) return false
  if (hard < want) throw new Error(`scenario 3 needs RLIMIT_NOFILE ≥ ${want}; the hard limit is ${hard}. Raise it (limits.conf, systemd LimitNOFILE, docker --ulimit nofile=...) or leave scenario 3 out.`)
  const r = spawnSync('sh', ['-c', `ulimit -n ${want} && exec "$0" "$@"`, process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, BENCH_NOFILE_RAISED: '1' } })
  process.exit(r.status ?? 1)
}

async function main (): Promise<void> {
  const o = options()
  if (raiseNofile(o)) return
  fs.mkdirSync(o.dataDir, { recursive: true })
  const dataDirFs = assertDiskBacked(o.dataDir)
  fs.mkdirSync(o.out, { recursive: true })
  const startedAt = new Date().toISOString()
  const runId = startedAt.replace(/[:.]/g, '-')
  log(`gridgate bench: scenarios ${o.scenarios.join(',')}${o.quick ? ' (quick)' : ''}; data dir ${o.dataDir} (${dataDirFs.mount.fsType}); load average ${loadAverage().join(' ')}`)
  const meta: Record<string, unknown> = {
    startedAt,
    mode: o.quick ? 'quick' : 'full',
    scenarios: o.scenarios.map(n => `${n} ${SCENARIOS[n]}`),
    command: process.argv.length > 2 ? `npm run bench -- ${process.argv.slice(2).join(' ')}` : 'npm run bench',
    ...machine(),
    loadAverageAtStart: loadAverage(),
    dataDir: o.dataDir,
    dataDirFs,
    fdatasyncMs: fdatasyncMs(o.dataDir, o.quick ? 50 : 200),
    cpuCores: { oneSpinningThread: await cpuCapacity(1, 1000), twoSpinningThreads: await cpuCapacity(2, 1000), of: os.cpus().length },
    storeSync: 'full (default)',
    gatewayNodeOptions: o.nodeOptions,
    sqliteCacheSize: '-4096 (4 MiB, store-forward/sqlite-worker.ts configure())',
    rlimitNofile: nofile(),
    mosquitto: mosquittoVersion(o.mosquitto),
    loadgenProcesses: o.procs,
    note: 'Measured on whatever else the machine was running: compare runs only with their load averages.',
  }
  log(`fdatasync on the data dir: ${JSON.stringify(meta.fdatasyncMs)} ms; CPU a spinning thread gets: ${JSON.stringify(meta.cpuCores)} cores`)
  const rx = await Receiver.start()
  const ctx: Ctx = { o, rx, rxPid: rx.child.pid!, charts: [] }
  const results: Record<string, Record<string, unknown>> = {}
  const runners: Record<number, (c: Ctx) => Promise<Record<string, unknown>>> = { 1: scenarioIngest, 2: scenarioRate, 3: scenarioIdle, 4: scenarioDrain, 5: scenarioCoap, 6: scenarioWs, 7: scenarioFlash }
  const failures: string[] = []
  const t0 = performance.now()
  try {
    for (const n of o.scenarios) {
      const name = SCENARIOS[n]!
      const started = performance.now()
      const p0 = pressure()
      try {
        const r = await runners[n]!(ctx)
        results[name] = { ...r, seconds: Number(((performance.now() - started) / 1000).toFixed(1)), pressure: pressureBetween(p0, pressure()) }
      } catch (err) {
        failures.push(`scenario ${n} (${name}): ${(err as Error).message}`)
        results[name] = { error: (err as Error).message }
        log(`scenario ${n} failed: ${(err as Error).stack ?? String(err)}`)
      }
    }
  } finally {
    rx.close()
  }
  meta.loadAverageAtEnd = loadAverage()
  meta.cpuCoresAtEnd = { oneSpinningThread: await cpuCapacity(1, 1000), twoSpinningThreads: await cpuCapacity(2, 1000) }
  meta.seconds = Number(((performance.now() - t0) / 1000).toFixed(1))
  const file = path.join(o.out, `${runId}.json`)
  fs.writeFileSync(file, `${JSON.stringify({ meta, results }, null, 2)}\n`)
  if (ctx.charts.length > 0) fs.writeFileSync(file.replace(/\.json$/, '.svg'), chartOf(ctx, meta))
  process.stdout.write(table(results, meta))
  process.stdout.write(`\nresults: ${path.relative(process.cwd(), file)}${ctx.charts.length > 0 ? ` and ${path.relative(process.cwd(), file.replace(/\.json$/, '.svg'))}` : ''}\n`)
  process.stdout.write('Figures depend on the machine and on everything else it runs at the time: see the load averages above.\n')
  if (failures.length > 0) {
    process.stderr.write(`\n${failures.join('\n')}\n`)
    process.exitCode = 1
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
