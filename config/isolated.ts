// Loads the config in a thread of its own that ends once it has answered. The YAML parser and the
// schema library (with the schema built from it) are needed once, at start-up; loaded by the main
// thread they would stay in its heap for the life of the process (module code is never unloaded).
// On an idle gateway: main heap in use 20.6 → 15.1 MB (README, Benchmarks, "Memory"). `check-config`,
// `dlq` and `device` load the config in-process (they exit when done); the running gateway uses this.
import { Worker } from 'node:worker_threads'
import { GridgateError, ErrorCodes, type ErrorCode } from '../gateway/errors.js'
import { compactArrays, deepFreeze } from './freeze.js'
import type { LoadOptions } from './load.js'
import type { Config } from './schema.js'

export type LoadReply =
  | { ok: true, config: Config }
  | { ok: false, error: { code?: ErrorCode, message: string, details?: string[], stack?: string } }

let source: string | null = null

/** The single executable has no load-worker.js file to start: it registers the bundled source. */
export function setConfigWorkerSource (bundled: string): void {
  source = bundled
}

function rebuild (e: Extract<LoadReply, { ok: false }>['error']): Error {
  if (e.code !== undefined && e.code in ErrorCodes) return new GridgateError(e.code, e.message, { details: e.details ?? [] })
  const err = new Error(e.message)
  if (e.stack !== undefined) err.stack = e.stack
  return err
}

/** loadConfig(opts) in a short-lived worker thread; resolves after the thread has ended. */
export function loadConfigIsolated (opts: LoadOptions = {}): Promise<Config> {
  const workerData: LoadOptions = { path: opts.path, env: { ...(opts.env ?? process.env) }, cwd: opts.cwd ?? process.cwd() }
  return new Promise((resolve, reject) => {
    const worker = source === null
      ? new Worker(new URL('./load-worker.js', import.meta.url), { workerData })
      : new Worker(source, { eval: true, workerData })
    let answer: LoadReply | undefined
    let failure: Error | undefined
    worker.on('message', (m: LoadReply) => { answer = m })
    worker.on('error', (err) => { failure = err })
    worker.on('exit', (code) => {
      if (answer?.ok === true) resolve(deepFreeze(compactArrays(answer.config)))
      else if (answer !== undefined) reject(rebuild(answer.error))
      else reject(failure ?? new Error(`the config loader thread exited with code ${code} without an answer`))
    })
  })
}
