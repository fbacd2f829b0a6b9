// Runs the real `gridgate` CLI as a child process and resolves once it logged "gridgate ready",
// with the ports it bound. Used by the demo and by the tests that need a process to kill.
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

/** The compiled CLI, found from this module's own place (dist/scripts → dist/gateway), not from cwd. */
export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'gateway', 'cli.js')

export interface GatewayProcess {
  child: ChildProcess
  mqttPort: number
  adminPort: number
  /** Every listener's port by name (`mqtt`, `admin`, …) from the ready line. */
  ports: Record<string, number>
  /** Every pino line the gateway wrote to stdout, parsed. */
  logs: Array<Record<string, unknown>>
  stderr: string[]
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

export interface SpawnOptions {
  configFile: string
  env: NodeJS.ProcessEnv
  /** Its own process group, so a terminal's Ctrl-C reaches only the parent. */
  detached?: boolean
  readyTimeoutMs?: number
  onLog?: (rec: Record<string, unknown>) => void
}

const portOf = (address: unknown): number => Number(String(address).split(':').pop())

export function spawnGatewayProcess (o: SpawnOptions): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [CLI, '--config', o.configFile], { env: o.env, stdio: ['ignore', 'pipe', 'pipe'], detached: o.detached ?? false })
  const logs: Array<Record<string, unknown>> = []
  const stderr: string[] = []
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
    child.on('error', (err) => { stderr.push(`${err.message}\n`); resolve({ code: null, signal: null }) })
  })
  child.stderr!.on('data', (c: Buffer) => stderr.push(c.toString()))
  return new Promise((resolve, reject) => {
    let ready = false
    let buf = ''
    const timeoutMs = o.readyTimeoutMs ?? 30_000
    const timer = setTimeout(() => {
      if (ready) return
      child.kill('SIGKILL')
      reject(new Error(`the gateway did not report ready within ${timeoutMs / 1000} s\n${stderr.join('')}`))
    }, timeoutMs)
    child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString()
      let nl
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let rec: Record<string, unknown>
        try { rec = JSON.parse(line) as Record<string, unknown> } catch { continue }
        logs.push(rec)
        o.onLog?.(rec)
        if (!ready && rec.msg === 'gridgate ready') {
          ready = true
          clearTimeout(timer)
          const ports = Object.fromEntries(Object.entries((rec.listeners ?? {}) as Record<string, string>).map(([k, v]) => [k, portOf(v)]))
          resolve({ child, mqttPort: portOf(rec.mqtt), adminPort: portOf(rec.admin), ports, logs, stderr, exited })
        }
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      if (!ready) reject(new Error(`the gateway exited before it was ready (${signal ?? `exit code ${code}`}):\n${stderr.join('')}`))
    })
  })
}
