// Starting a gateway for a test: in-process (fast, for behaviour) or as a child process (for
// crashes, signals and exit codes). Both go through the real config loader.
import fs from 'node:fs'
import path from 'node:path'
import type { TestContext } from 'node:test'
import { stringify } from 'yaml'
import { pino } from 'pino'
import { loadConfig } from '../../config/load.js'
import { Gateway, type GatewayOptions } from '../../gateway/gateway.js'
import { defer } from './util.js'
import { spawnGatewayProcess, type GatewayProcess as BaseProcess } from '../../scripts/gateway-process.js'

export const TOKENS = { 'sensor-1': 'sensor-1-secret', 'sensor-2': 'sensor-2-secret', controller: 'controller-secret' } as const

/** A config with two devices, MQTT, CoAP and admin on port 0, and the given uplink URLs. */
/** A config with two devices, MQTT, WebSocket/HTTP and admin on port 0, and the given uplink URLs. */
export function baseConfig (dataDir: string, uplinks: Record<string, string>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    gateway: { id: 'gw-test', dataDir, logLevel: 'warn', shutdownTimeout: '10s' },
    mqtt: { host: '127.0.0.1', port: 0 },
    coap: { host: '127.0.0.1', port: 0 },
    websocket: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    devices: [
      ...(['sensor-1', 'sensor-2'] as const).map(id => ({ id, token: TOKENS[id] })),
      // An application that sends commands to every device and listens to all telemetry.
      { id: 'controller', token: TOKENS.controller, publish: ['devices/+/commands/#'], subscribe: ['devices/#'] },
    ],
    uplinks: Object.entries(uplinks).map(([name, url]) => ({
      name, type: 'http', url, batchMaxDelay: '5ms', timeout: '2s', retry: { initialDelay: '10ms', maxDelay: '200ms' },
    })),
    ...extra,
  }
}

export function writeConfig (dir: string, config: Record<string, unknown>, name = 'gridgate.yaml'): string {
  const file = path.join(dir, name)
  fs.writeFileSync(file, stringify(config))
  return file
}

export async function startInProcess (t: TestContext, config: Record<string, unknown>, opts: { faults?: boolean, gateway?: Omit<GatewayOptions, 'log' | 'faults'> } = {}): Promise<Gateway> {
  const dir = path.dirname(String((config.gateway as { dataDir: string }).dataDir))
  const file = writeConfig(dir, config, `gridgate-${Math.random().toString(36).slice(2)}.yaml`)
  const gw = new Gateway(loadConfig({ path: file, env: {} }), { ...opts.gateway, log: pino({ level: 'silent' }), faults: opts.faults ?? false })
  await gw.start()
  defer(t, () => gw.stop().catch(() => {}))
  return gw
}

export interface GatewayProcess extends BaseProcess {
  admin (pathname: string, init?: RequestInit): Promise<Response>
}

/** Spawns `gridgate --config file` (fault hooks on) and resolves once it logged "gridgate ready". */
export async function spawnGateway (t: TestContext | null, configFile: string, env: Record<string, string> = {}): Promise<GatewayProcess> {
  const gw = await spawnGatewayProcess({
    configFile,
    // The ready line is logged at info: make sure the level lets it through.
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', GRIDGATE_TEST_FAULTS: '1', GRIDGATE_GATEWAY_LOG_LEVEL: 'info', ...env },
  })
  if (t !== null) {
    defer(t, async () => {
      if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL')
      await gw.exited
    })
  }
  return { ...gw, admin: (p, init) => fetch(`http://127.0.0.1:${gw.adminPort}${p}`, init) }
}
