// The benchmark's own parts: the load generators against a real gateway (tiny counts; every publish
// must be acknowledged and the JSON report must have its shape; no timing assertions), the send stamp
// round trip, and the SVG writer's output (parsed by a real XML parser when python3 is there).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { repoRoot, tempDir, hasCommand } from '../helpers/util.js'
import { baseConfig, spawnGateway, writeConfig } from '../helpers/gateway.js'
import { renderSvg } from '../../scripts/bench/svg.js'
import { payloadTemplate, stampsIn, writeStamp, summarize } from '../../scripts/bench/stats.js'
import { cpuCapacity } from '../../scripts/bench/sys.js'
import os from 'node:os'
import type { LoadgenResult } from '../../scripts/bench/loadgen.js'

const benchDir = path.join(repoRoot, 'dist', 'scripts', 'bench')

function runJson (file: string, args: string[]): Promise<LoadgenResult & Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(benchDir, file), ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (c: Buffer) => { out += c.toString() })
    child.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${file} timed out\n${err}`)) }, 60_000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      if (code !== 0) { reject(new Error(`${file} exited ${code}\n${err}`)); return }
      try { resolve(JSON.parse(out.trim().split('\n').at(-1)!)) } catch (e) { reject(new Error(`${file}: no JSON on stdout: ${out}\n${err} ${String(e)}`)) }
    })
  })
}

function assertReport (r: LoadgenResult, protocol: string, expected: number): void {
  assert.equal(r.protocol, protocol)
  assert.deepEqual(r.errors, [])
  assert.equal(r.sent, expected)
  assert.equal(r.acked, expected, 'every message acknowledged')
  assert.equal(r.ackMs.count, expected)
  for (const k of ['p50', 'p99', 'max', 'mean'] as const) assert.equal(typeof r.ackMs[k], 'number')
  assert.ok(r.ackMs.p50 <= r.ackMs.p99 && r.ackMs.p99 <= r.ackMs.max)
  assert.equal(typeof r.msgsPerSec, 'number')
  assert.equal(typeof r.cpuSeconds, 'number')
  assert.ok(Array.isArray(r.timeline))
  assert.equal(r.timeline.reduce((a, p) => a + p.count, 0), expected, 'the timeline accounts for every ack')
}

test('the load generators publish over MQTT, CoAP and WebSocket and every message is acknowledged', async (t) => {
  const dir = tempDir(t, 'gg-bench-')
  const config = baseConfig(path.join(dir, 'data'), {})
  config.devices = [0, 1].map(i => ({ id: `bench-${i}`, token: `bench-token-${i}` }))
  const gw = await spawnGateway(t, writeConfig(dir, config))
  const common = ['--devices', '2', '--size', '120']

  const mqtt = await runJson('loadgen.js', ['--port', String(gw.mqttPort), '--connections', '3', '--messages', '40', '--window', '8', ...common])
  assertReport(mqtt, 'mqtt', 120)
  assert.equal(mqtt.connections, 3)
  assert.equal(mqtt.late, 0)

  const paced = await runJson('loadgen.js', ['--port', String(gw.mqttPort), '--connections', '2', '--rate', '50', '--duration', '1', ...common])
  assert.equal(paced.acked + paced.late, 50)
  assert.equal(paced.acked, paced.sent)

  const coap = await runJson('coap-loadgen.js', ['--port', String(gw.ports.coap), '--connections', '2', '--messages', '20', '--window', '4', ...common])
  assertReport(coap, 'coap', 40)

  const ws = await runJson('ws-loadgen.js', ['--port', String(gw.ports.websocket), '--connections', '2', '--messages', '20', '--window', '4', ...common])
  assertReport(ws, 'ws', 40)

  // Every one of them was stored: the gateway counts its ingress by protocol.
  const metrics = await (await gw.admin('/metrics')).text()
  for (const [protocol, n] of [['mqtt', 120 + paced.acked], ['coap', 40], ['ws', 40]] as const) {
    const m = new RegExp(`^gridgate_ingress_total\\{protocol="${protocol}",outcome="stored"\\} (\\d+)`, 'm').exec(metrics)
    assert.equal(Number(m?.[1]), n, `${protocol} events stored`)
  }
})

test('idle mode holds subscribed connections until SIGTERM', async (t) => {
  const dir = tempDir(t, 'gg-bench-')
  const config = baseConfig(path.join(dir, 'data'), {})
  config.devices = [0, 1].map(i => ({ id: `bench-${i}`, token: `bench-token-${i}` }))
  const gw = await spawnGateway(t, writeConfig(dir, config))
  const child = spawn(process.execPath, [path.join(benchDir, 'loadgen.js'), '--port', String(gw.mqttPort), '--connections', '5', '--devices', '2', '--subscribe', '--hold=-1', '--window', '1'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.after(() => child.kill('SIGKILL'))
  const deadline = Date.now() + 20_000
  while (!out.includes('"connected"') && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
  assert.match(out, /"event":"connected","connections":5/)
  const metrics = await (await gw.admin('/metrics')).text()
  assert.match(metrics, /^gridgate_connections\{protocol="mqtt"\} 5$/m)
  child.kill('SIGTERM')
  assert.equal(await exited, 0)
  const r = JSON.parse(out.trim().split('\n').at(-1)!) as LoadgenResult
  assert.deepEqual(r.errors, [])
  assert.equal(r.sent, 0)
})

test('the aedes reference brokers acknowledge every publish, the SQLite one after committing it', async (t) => {
  for (const mode of ['plain', 'sqlite'] as const) {
    const dir = tempDir(t, 'gg-bench-baseline-')
    const broker = spawn(process.execPath, [path.join(benchDir, 'aedes-baseline.js'), '--mode', mode, '--data-dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] })
    t.after(() => broker.kill('SIGKILL'))
    let out = ''
    broker.stdout.on('data', (c: Buffer) => { out += c.toString() })
    const exited = new Promise<number | null>((resolve) => broker.on('exit', resolve))
    const deadline = Date.now() + 20_000
    while (!out.includes('"listening"') && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
    const { port } = JSON.parse(out.split('\n')[0]!) as { port: number }
    const r = await runJson('loadgen.js', ['--port', String(port), '--connections', '3', '--messages', '200', '--window', '8', '--devices', '3'])
    assertReport(r, 'mqtt', 600)
    broker.kill('SIGTERM')
    assert.equal(await exited, 0)
    const done = JSON.parse(out.trim().split('\n').at(-1)!) as { mode: string, committed: number, commits: number }
    assert.equal(done.mode, mode)
    if (mode === 'sqlite') {
      assert.equal(done.committed, 600, 'every acknowledged publish was committed')
      assert.ok(done.commits >= 1 && done.commits <= 600)
    } else {
      assert.equal(done.committed, 0)
    }
    // Its database goes with it.
    assert.deepEqual(fs.readdirSync(dir), [])
  }
})

test('the send stamp is written in place and found again in a batch of events', () => {
  const { buf, tOffset } = payloadTemplate(200)
  assert.equal(buf.length, 200)
  writeStamp(buf, tOffset, 1_763_791_200_123_456)
  const parsed = JSON.parse(buf.toString('latin1')) as { t: number, p: string }
  assert.equal(parsed.t, 1_763_791_200_123_456)
  const batch = JSON.stringify([{ time: '2026-01-01T00:00:00Z', data: parsed }, { data: { ...parsed, t: 1_763_791_200_123_999 } }])
  const found: number[] = []
  stampsIn(batch, n => found.push(n))
  assert.deepEqual(found, [1_763_791_200_123_456, 1_763_791_200_123_999])
  assert.throws(() => payloadTemplate(10), /at least/)
  assert.deepEqual(summarize(new Float64Array([3, 1, 2, 4])), { count: 4, p50: 2, p99: 4, max: 4, mean: 2.5 })
})

test('the SVG writer produces well-formed SVG with one line per series', () => {
  const svg = renderSvg({
    title: 'throughput & latency <test>',
    subtitle: 'a "quoted" subtitle',
    panels: [
      { title: 'throughput', unit: 'msgs/s', series: [{ name: 'acked', points: [[1, 100], [2, 250], [3, 90]] }, { name: 'delivered', points: [[1, 80], [2, 260]] }] },
      { title: 'latency', unit: 'ms', series: [{ name: 'p99', points: [[1, 3.5], [2, Number.NaN], [3, 4]] }] },
      { title: 'empty', unit: 'MiB', series: [{ name: 'none', points: [] }] },
    ],
  })
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" /)
  assert.match(svg, /<\/svg>\n$/)
  assert.equal(svg.match(/<polyline /g)?.length, 3)
  assert.ok(svg.includes('throughput &amp; latency &lt;test&gt;'))
  assert.ok(svg.includes('a &quot;quoted&quot; subtitle'))
  assert.ok(!svg.includes('NaN'), 'non-finite points are left out')
  // Every element is closed in order.
  const stack: string[] = []
  for (const m of svg.matchAll(/<(\/?)([a-z]+)[^>]*?(\/?)>/g)) {
    if (m[3] === '/') continue
    if (m[1] === '/') assert.equal(stack.pop(), m[2])
    else stack.push(m[2]!)
  }
  assert.deepEqual(stack, [])
  if (hasCommand('python3')) {
    const r = spawnSync('python3', ['-c', 'import sys, xml.dom.minidom as m; d = m.parseString(sys.stdin.read()); print(d.documentElement.tagName)'], { input: svg, encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'svg')
  }
})

test('the CPU probe reports the cores spinning threads got: more than none, at most the machine has', async () => {
  for (const threads of [1, 2]) {
    const cores = await cpuCapacity(threads, 200)
    assert.ok(cores > 0, `${threads} spinning thread(s) got some CPU (${cores})`)
    // A little over the thread count at most: worker start-up is counted in the CPU, not in the spin.
    assert.ok(cores <= Math.min(threads, os.cpus().length) * 1.1 + 0.05, `${threads} spinning thread(s) got at most their share (${cores})`)
  }
})
