// `npm run demo`: the whole pipeline on one laptop, with nothing to install.
//
//   simulated devices ──MQTT──► gridgate (the real CLI, child process) ──HTTP──► demo cloud receiver
//
// 1. starts the demo receiver (scripts/demo-receiver.ts) on a free port;
// 2. writes ./data/demo/gridgate.yaml (fresh device tokens every run) and spawns
//    `gridgate --config ./data/demo/gridgate.yaml`, waiting for its "gridgate ready" log line;
// 3. connects three simulated devices over MQTT and prints every event the cloud receives;
// 4. after a few seconds takes the cloud down for a few seconds (503), shows the gateway buffering,
//    then brings it back and shows the backlog draining in order.
// Runs until Ctrl-C, or for --duration <seconds> (counted from the moment the gateway is ready).
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type MqttClient } from 'mqtt'
import { stringify } from 'yaml'
import { startDemoReceiver, type DemoReceiver } from './demo-receiver.js'
import { spawnGatewayProcess, type GatewayProcess } from './gateway-process.js'


const OUTAGE_AT_MS = 5_500
const OUTAGE_FOR_MS = 4_000
const READY_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 15_000

const DEVICES = ['sensor-1', 'sensor-2', 'phone-7'] as const
type DeviceId = typeof DEVICES[number]

const say = (line = ''): void => { process.stdout.write(`${line}\n`) }

interface UplinkState { name: string, state: string, backlogEvents: number, lastError: string | null }

type Gateway = GatewayProcess

function parseCli (): { duration: number | undefined } {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', short: 'd' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help === true) {
    say('Usage: npm run demo [-- --duration <seconds>]')
    process.exit(0)
  }
  if (values.duration === undefined) return { duration: undefined }
  const duration = Number(values.duration)
  if (!Number.isFinite(duration) || duration <= 0) {
    process.stderr.write(`--duration: expected a positive number of seconds, got ${values.duration}\n`)
    process.exit(2)
  }
  return { duration }
}

function writeDemoConfig (dataDir: string, receiverUrl: string, tokens: Record<DeviceId, string>): string {
  fs.mkdirSync(dataDir, { recursive: true })
  const config = {
    gateway: { id: 'demo-gw', dataDir, logLevel: 'info' },
    mqtt: { host: '127.0.0.1', port: 0 },
    coap: { host: '127.0.0.1', port: 0 },
    websocket: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    // Tokens in clear are fine for a demo; on a real box use tokenHash (gridgate hash-token).
    devices: DEVICES.map(id => ({ id, token: tokens[id] })),
    uplinks: [{
      name: 'cloud',
      type: 'http',
      url: receiverUrl,
      // A short maximum backoff so that the demo recovers promptly (the default is 30s).
      retry: { initialDelay: '100ms', maxDelay: '2s' },
    }],
  }
  const file = path.join(dataDir, 'gridgate.yaml')
  fs.writeFileSync(file, `# Written by \`npm run demo\` on every run, with new device tokens. Edit scripts/demo.ts instead.\n${stringify(config)}`)
  return file
}

// ---- the gateway ------------------------------------------------------------------------------------

const LEVELS: Record<number, string> = { 40: 'warn', 50: 'error', 60: 'fatal' }

/** One readable line for a gateway warn/error log record; info and below are not shown. */
function summarise (rec: Record<string, unknown>): string | undefined {
  const level = typeof rec.level === 'number' ? rec.level : 0
  if (level < 40) return undefined
  const skip = new Set(['level', 'time', 'pid', 'hostname', 'gatewayId', 'msg', 'code'])
  const fields = Object.entries(rec).filter(([k]) => !skip.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ')
  const code = typeof rec.code === 'string' ? `${rec.code}: ` : ''
  const line = `gateway ${(LEVELS[level] ?? 'error').padEnd(5)} ${code}${String(rec.msg ?? '')}${fields === '' ? '' : ` (${fields})`}`
  return line.length > 200 ? `${line.slice(0, 199)}…` : line
}

function spawnGateway (configFile: string): Promise<Gateway> {
  return spawnGatewayProcess({
    configFile,
    // GRIDGATE_* variables would override (or, when unknown, reject) the demo config: leave them out.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GRIDGATE_'))),
    // Its own process group: a Ctrl-C in the terminal reaches only the demo, which then stops the
    // gateway with one SIGTERM (a second signal would make the gateway exit at once).
    detached: true,
    readyTimeoutMs: READY_TIMEOUT_MS,
    onLog: (rec) => {
      const summary = summarise(rec)
      if (summary !== undefined) say(summary)
    },
  })
}

async function uplinks (adminPort: number): Promise<UplinkState[]> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/api/v1/uplinks`, { signal: AbortSignal.timeout(2000) })
  if (!res.ok) throw new Error(`GET /api/v1/uplinks answered ${res.status}`)
  return ((await res.json()) as { uplinks: UplinkState[] }).uplinks
}

async function cloudUplink (adminPort: number): Promise<UplinkState | undefined> {
  try {
    return (await uplinks(adminPort)).find(u => u.name === 'cloud')
  } catch {
    return undefined
  }
}

// ---- simulated devices ------------------------------------------------------------------------------

interface Device { client: MqttClient, timer: NodeJS.Timeout | undefined }

function startDevices (port: number, tokens: Record<DeviceId, string>): Device[] {
  const reported = new Set<string>()
  const report = (id: string, err: Error): void => {
    const key = `${id}:${err.message}`
    if (reported.has(key)) return
    reported.add(key)
    say(`device  ${id.padEnd(8)} ${err.message}`)
  }

  function device (id: DeviceId, protocolVersion: 4 | 5, every: number, publish: (c: MqttClient, tick: number) => void): Device {
    const client = mqtt.connect({
      host: '127.0.0.1',
      port,
      protocolVersion,
      clientId: `demo-${id}`,
      username: id,
      password: tokens[id],
      reconnectPeriod: 1000,
    })
    client.on('error', (err) => report(id, err))
    let tick = 0
    const d: Device = { client, timer: undefined }
    client.on('connect', () => {
      if (d.timer !== undefined) return
      d.timer = setInterval(() => { if (client.connected) publish(client, tick++) }, every)
    })
    return d
  }

  const done = (id: string) => (err?: Error): void => { if (err) report(id, err) }
  return [
    // A temperature sensor: JSON, MQTT 3.1.1, QoS 1, every 500 ms.
    device('sensor-1', 4, 500, (c, i) => {
      const celsius = Math.round((21 + 2 * Math.sin(i / 8) + Math.random() * 0.2) * 10) / 10
      c.publish('devices/sensor-1/temp', JSON.stringify({ c: celsius }), { qos: 1 }, done('sensor-1'))
    }),
    // A humidity sensor that just sends the number as text: MQTT 5 with a content type. The
    // gateway turns a text/plain number into {"value": n}.
    device('sensor-2', 5, 1000, (c, i) => {
      const humidity = (42 + 3 * Math.cos(i / 5) + Math.random() * 0.5).toFixed(1)
      c.publish('devices/sensor-2/humidity', humidity, { qos: 1, properties: { contentType: 'text/plain' } }, done('sensor-2'))
    }),
    // A phone reporting its position at QoS 2 (exactly once within the gateway's dedup window).
    device('phone-7', 4, 1500, (c, i) => {
      const lat = Math.round((48.8566 + i * 0.0003) * 1e5) / 1e5
      const lon = Math.round((2.3522 + i * 0.0002) * 1e5) / 1e5
      c.publish('devices/phone-7/location', JSON.stringify({ lat, lon }), { qos: 2 }, done('phone-7'))
    }),
  ]
}

async function stopDevices (devices: Device[]): Promise<void> {
  for (const d of devices) if (d.timer !== undefined) clearInterval(d.timer)
  // end() lets publishes in flight finish their handshake first.
  await Promise.all(devices.map(d => Promise.race([d.client.endAsync().catch(() => {}), sleep(3000)])))
}

// ---- the story ----------------------------------------------------------------------------------------

function header (gw: Gateway, rx: DemoReceiver, dataDir: string, configFile: string, tokens: Record<DeviceId, string>, duration: number | undefined): void {
  const admin = `http://127.0.0.1:${gw.adminPort}`
  const lines = [
    '',
    'gridgate demo: 3 simulated devices → MQTT → gridgate → HTTP → a demo cloud receiver',
    '',
    `  MQTT broker    127.0.0.1:${gw.mqttPort}   devices: sensor-1 (JSON, QoS1), sensor-2 (text, MQTT 5), phone-7 (JSON, QoS2)`,
    `  admin API      ${admin}`,
    `  cloud          ${rx.url}   (scripts/demo-receiver.ts, one line per event received)`,
    `  data dir       ${dataDir}   (SQLite store; kept between runs)`,
    `  config         ${configFile}`,
    '',
    '  Look around while it runs:',
    `    curl ${admin}/metrics`,
    `    curl ${admin}/api/v1/uplinks`,
    '  Send your own message as sensor-1:',
    `    mosquitto_pub -h 127.0.0.1 -p ${gw.mqttPort} -u sensor-1 -P '${tokens['sensor-1']}' -q 1 -t devices/sensor-1/temp -m '{"c":30}'`,
    '',
    `  In ${OUTAGE_AT_MS / 1000} s the cloud goes down for ${OUTAGE_FOR_MS / 1000} s: watch the gateway buffer, then drain in order.`,
    duration === undefined ? '  Ctrl-C to stop.' : `  Stopping after ${duration} s.`,
    '',
  ]
  for (const l of lines) say(l)
}

async function outage (rx: DemoReceiver, adminPort: number, stopped: () => boolean): Promise<void> {
  const before = rx.count
  rx.outage = true
  say('')
  say(`*** cloud outage: the receiver answers 503 for the next ${OUTAGE_FOR_MS / 1000} s.`)
  say('*** devices are still acknowledged: each event is committed to the store first and buffered there.')
  const until = Date.now() + OUTAGE_FOR_MS
  while (!stopped() && Date.now() < until) {
    await sleep(Math.min(1000, until - Date.now()))
    const u = await cloudUplink(adminPort)
    if (u !== undefined) {
      const error = u.lastError === null ? '' : `, last error ${u.lastError.replace(/^(HTTP \d+).*/, '$1')}`
      const refused = `${rx.refused} ${rx.refused === 1 ? 'request' : 'requests'}`
      say(`*** buffering: ${String(u.backlogEvents).padStart(3)} events waiting for uplink "cloud" (state ${u.state}${error}); the cloud refused ${refused} so far`)
    }
  }
  rx.outage = false
  if (stopped()) return
  const backlog = (await cloudUplink(adminPort))?.backlogEvents ?? 0
  say(`*** cloud is back: the receiver answers 204 again; the gateway retries and drains ${backlog} buffered events in order.`)
  say('')
  const started = Date.now()
  while (!stopped()) {
    await sleep(200)
    const u = await cloudUplink(adminPort)
    if (u !== undefined && u.backlogEvents === 0 && u.state !== 'backoff') {
      say('')
      say(`*** drained: backlog 0 after ${Date.now() - started} ms; ${rx.count - before} events reached the cloud since the outage began.`)
      say('')
      return
    }
  }
}

async function main (): Promise<void> {
  const { duration } = parseCli()
  const dataDir = path.resolve('data', 'demo')
  const tokens = Object.fromEntries(DEVICES.map(id => [id, randomBytes(18).toString('base64url')])) as Record<DeviceId, string>

  const rx = await startDemoReceiver({ port: 0, print: (line) => say(line) })
  const configFile = writeDemoConfig(dataDir, rx.url, tokens)

  let gw: Gateway
  try {
    gw = await spawnGateway(configFile)
  } catch (err) {
    await rx.close()
    process.stderr.write(`demo: ${(err as Error).message}\n`)
    process.exit(1)
  }
  // Never leave the gateway behind (it runs in its own process group).
  process.on('exit', () => { if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL') })

  header(gw, rx, dataDir, configFile, tokens, duration)
  const devices = startDevices(gw.mqttPort, tokens)

  let stopping = false
  let crashed = false
  let wakeMain: () => void = () => {}
  const finished = new Promise<void>((resolve) => { wakeMain = resolve })
  const stop = (): void => {
    if (stopping) return
    stopping = true
    wakeMain()
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  void gw.exited.then(({ code, signal }) => {
    if (stopping) return
    crashed = true
    process.stderr.write(`demo: the gateway exited unexpectedly (${signal ?? `exit code ${code}`})\n${gw.stderr.join('')}`)
    stop()
  })
  const timers: NodeJS.Timeout[] = []
  if (duration !== undefined) timers.push(setTimeout(stop, duration * 1000))
  timers.push(setTimeout(() => { void outage(rx, gw.adminPort, () => stopping) }, OUTAGE_AT_MS))

  await finished
  for (const t of timers) clearTimeout(t)
  rx.outage = false
  say('')
  say('stopping: devices, then the gateway (SIGTERM, graceful drain), then the receiver…')
  await stopDevices(devices)
  if (!crashed) {
    const backlog = (await cloudUplink(gw.adminPort))?.backlogEvents
    gw.child.kill('SIGTERM')
    const exit = await Promise.race([gw.exited, sleep(STOP_TIMEOUT_MS).then(() => null)])
    if (exit === null) {
      process.stderr.write(`demo: the gateway did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it\n`)
      gw.child.kill('SIGKILL')
      await gw.exited
    } else if (exit.code !== 0) {
      process.stderr.write(`demo: the gateway exited with ${exit.signal ?? `code ${exit.code}`}\n${gw.stderr.join('')}`)
    }
    if (backlog !== undefined && backlog > 0) say(`${backlog} events were still buffered; they stay in ${dataDir} and go out on the next run.`)
  }
  await rx.close()
  say(`done: the cloud received ${rx.count} events.`)
  process.exit(crashed ? 1 : 0)
}

main().catch((err: unknown) => {
  process.stderr.write(`demo: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
