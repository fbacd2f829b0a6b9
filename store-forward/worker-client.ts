// A request/response channel to one SQLite worker thread.
import { Worker } from 'node:worker_threads'
import { EventEmitter } from 'node:events'
import type { WorkerInit, Request, Reply, Envelope } from './protocol.js'

/**
 * How store workers start when there is no worker file to point at (a single executable has none):
 * the worker's code as one CommonJS script run with `eval: true`, and the path of the better-sqlite3
 * addon each worker loads with process.dlopen(), asked for with the database path when a worker starts.
 * null (the default) = `sqlite-worker.js` next to this module and better-sqlite3's own addon lookup.
 */
export interface WorkerRuntime {
  source: string
  nativeBinding: (dbPath: string) => string
}

let runtime: WorkerRuntime | null = null

export function setWorkerRuntime (r: WorkerRuntime | null): void {
  runtime = r
}

export class WorkerExitedError extends Error {
  readonly code = 'GG_ERR_STORE_UNAVAILABLE'
}

export class WorkerClient extends EventEmitter<{ exit: [code: number] }> {
  private readonly worker: Worker
  private nextId = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void }>()
  private exited = false

  constructor (init: WorkerInit) {
    super()
    this.worker = runtime === null
      ? new Worker(new URL('./sqlite-worker.js', import.meta.url), { workerData: init })
      : new Worker(runtime.source, { eval: true, workerData: { ...init, nativeBinding: runtime.nativeBinding(init.path) } })
    this.worker.on('message', (reply: Reply) => {
      const p = this.pending.get(reply.id)
      if (p === undefined) return
      this.pending.delete(reply.id)
      if (reply.ok) p.resolve(reply.result)
      else p.reject(Object.assign(new Error(reply.error.message), reply.error.code === undefined ? {} : { code: reply.error.code }))
    })
    // An uncaught exception inside the worker arrives as 'error' and is followed by 'exit'.
    this.worker.on('error', () => {})
    this.worker.on('exit', (code) => {
      this.exited = true
      const err = new WorkerExitedError(`store worker exited with code ${code}`)
      for (const p of this.pending.values()) p.reject(err)
      this.pending.clear()
      this.emit('exit', code)
    })
  }

  get alive (): boolean { return !this.exited }

  request<T> (req: Request, transfer?: ArrayBuffer[]): Promise<T> {
    if (this.exited) return Promise.reject(new WorkerExitedError('store worker is not running'))
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      const env: Envelope = { id, req }
      this.worker.postMessage(env, transfer)
    })
  }

  async terminate (): Promise<void> {
    if (!this.exited) await this.worker.terminate()
  }
}
