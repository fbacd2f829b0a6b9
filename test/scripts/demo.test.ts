// `npm run demo` end to end (the real CLI in a child process, real MQTT devices, a real receiver),
// and the demo receiver on its own.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { repoRoot, tempDir, waitFor } from '../helpers/util.js'
import { startDemoReceiver } from '../../scripts/demo-receiver.js'

const demoScript = path.join(repoRoot, 'dist', 'scripts', 'demo.js')
const receiverScript = path.join(repoRoot, 'dist', 'scripts', 'demo-receiver.js')

interface Run { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

function run (args: string[], cwd: string, timeoutMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd, env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`timed out after ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`))
    }, timeoutMs)
    child.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }) })
  })
}

/** The `cloud ←` lines: sequence, device and the line itself. */
function cloudLines (stdout: string): Array<{ seq: bigint, device: string, line: string }> {
  return stdout.split('\n').filter(l => l.startsWith('cloud ←')).map((line) => {
    const m = /^cloud ← #(\d{20}) .*\((\S+) via mqtt/.exec(line)
    assert.ok(m, `unexpected cloud line: ${line}`)
    return { seq: BigInt(m[1]!), device: m[2]!, line }
  })
}

test('the demo runs for --duration, shows every device, an outage and its drain, and exits 0', async (t) => {
  const cwd = tempDir(t, 'gg-demo-')
  const r = await run([demoScript, '--duration', '12'], cwd, 120_000)
  const context = `\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`
  assert.equal(r.code, 0, `exit code${context}`)

  // The config went under the working directory, with an absolute dataDir.
  const config = fs.readFileSync(path.join(cwd, 'data', 'demo', 'gridgate.yaml'), 'utf8')
  assert.match(config, /id: demo-gw/)
  assert.ok(config.includes(`dataDir: ${path.join(fs.realpathSync(cwd), 'data', 'demo')}`) || config.includes(`dataDir: ${path.join(cwd, 'data', 'demo')}`), config)

  // The header names the real ports and a paste-able mosquitto_pub line.
  const mqttPort = /MQTT broker\s+127\.0\.0\.1:(\d+)/.exec(r.stdout)?.[1]
  assert.ok(mqttPort !== undefined, `MQTT port in the header${context}`)
  assert.match(r.stdout, new RegExp(`mosquitto_pub -h 127\\.0\\.0\\.1 -p ${mqttPort} -u sensor-1 -P '[A-Za-z0-9_-]{16,}'`))
  assert.match(r.stdout, /curl http:\/\/127\.0\.0\.1:\d+\/metrics/)
  assert.match(r.stdout, /curl http:\/\/127\.0\.0\.1:\d+\/api\/v1\/uplinks/)

  const lines = cloudLines(r.stdout)
  for (const device of ['sensor-1', 'sensor-2', 'phone-7']) {
    assert.ok(lines.some(l => l.device === device), `no event from ${device} reached the receiver${context}`)
  }
  assert.ok(lines.some(l => l.device === 'sensor-2' && l.line.includes('{"value":')), 'sensor-2\'s text/plain number arrives as {"value": n}')

  // Outage, buffering with a backlog, recovery and drain, in that order.
  const outage = r.stdout.indexOf('*** cloud outage')
  const buffering = /\*\*\* buffering:\s+(\d+) events waiting/.exec(r.stdout)
  const back = r.stdout.indexOf('*** cloud is back')
  const drained = r.stdout.indexOf('*** drained: backlog 0')
  assert.ok(outage > 0, `the outage was printed${context}`)
  assert.ok(buffering !== null && Number(buffering[1]) > 0, `a non-empty backlog was printed during the outage${context}`)
  assert.ok(back > outage, `the recovery was printed${context}`)
  assert.ok(drained > back, `the drain was printed${context}`)
  const drainedLines = cloudLines(r.stdout.slice(back, drained))
  assert.ok(drainedLines.length > 0, 'buffered events arrived after the recovery')

  // Every sequence printed is strictly increasing: order kept, nothing printed twice.
  for (let i = 1; i < lines.length; i++) {
    assert.ok(lines[i]!.seq > lines[i - 1]!.seq, `sequence not increasing:\n${lines[i - 1]!.line}\n${lines[i]!.line}`)
  }
  assert.doesNotMatch(r.stdout, /duplicate, skipped/)
  assert.match(r.stdout, new RegExp(`done: the cloud received ${lines.length} events`))
})

async function startStandalone (t: { after: (fn: () => void) => void }): Promise<{ child: ChildProcess, url: string, output: () => string }> {
  const child = spawn(process.execPath, [receiverScript, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout!.on('data', (c: Buffer) => { out += c.toString() })
  const url = await waitFor(() => /POST CloudEvents batches to (http:\/\/\S+)/.exec(out)?.[1], 'the receiver\'s listening line', 10_000)
  return { child, url, output: () => out }
}

const event = {
  specversion: '1.0',
  id: '0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b',
  source: '/gateways/demo-gw/devices/sensor-1',
  type: 'gridgate.telemetry',
  subject: 'devices/sensor-1/temp',
  datacontenttype: 'application/json',
  deviceid: 'sensor-1',
  protocol: 'mqtt',
  storeid: '5f0c6d2e-1111-4222-8333-444455556666',
  sequence: '00000000000000000042',
  data: { c: 21.5 },
}

test('the standalone receiver answers a batch with 204 and prints one line per event', async (t) => {
  const rx = await startStandalone(t)
  const res = await fetch(rx.url, { method: 'POST', headers: { 'content-type': 'application/cloudevents-batch+json' }, body: JSON.stringify([event]) })
  assert.equal(res.status, 204)
  const line = await waitFor(() => rx.output().split('\n').find(l => l.startsWith('cloud ←')), 'the printed event line', 5_000)
  assert.match(line, /^cloud ← #00000000000000000042 devices\/sensor-1\/temp\s+\{"c":21\.5\}\s+\(sensor-1 via mqtt, id 0193a1b2…4a5b\)$/)
  rx.child.kill('SIGTERM')
  const code = await new Promise(resolve => rx.child.on('exit', resolve))
  assert.equal(code, 0)
})

test('the standalone receiver answers bad JSON with 400 and a JSON error body', async (t) => {
  const rx = await startStandalone(t)
  const res = await fetch(rx.url, { method: 'POST', headers: { 'content-type': 'application/cloudevents-batch+json' }, body: '[{"id": ' })
  assert.equal(res.status, 400)
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/)
  const body = await res.json() as { code: unknown, message: unknown }
  assert.equal(typeof body.code, 'string')
  assert.equal(typeof body.message, 'string')
  assert.ok(!rx.output().includes('cloud ←'), 'nothing was printed for the bad batch')
})

test('during an outage the receiver answers 503 with Retry-After, and a redelivered event is marked as a duplicate', async (t) => {
  const printed: string[] = []
  const rx = await startDemoReceiver({ port: 0, print: (l) => printed.push(l) })
  t.after(() => rx.close())
  const post = (): Promise<Response> => fetch(rx.url, { method: 'POST', headers: { 'content-type': 'application/cloudevents-batch+json' }, body: JSON.stringify([event]) })
  rx.outage = true
  const refused = await post()
  assert.equal(refused.status, 503)
  assert.equal(refused.headers.get('retry-after'), '1')
  assert.equal(rx.refused, 1)
  assert.equal(printed.length, 0)
  rx.outage = false
  assert.equal((await post()).status, 204)
  assert.equal((await post()).status, 204)
  assert.equal(rx.count, 1)
  assert.equal(printed.length, 2)
  assert.match(printed[1]!, /duplicate, skipped$/)
})
