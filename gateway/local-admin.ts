// Local commands that change the store (`gridgate dlq`, `gridgate device`) run in one of two ways, so
// that two processes never write the store at once: through the running gateway's admin API, served on
// the data dir's lock socket, or — when no gateway runs — on the store opened directly, holding the
// data dir's lock for the duration.
import fs from 'node:fs'
import http from 'node:http'
import { pino } from 'pino'
import type { Config } from '../config/schema.js'
import { ErrorCodes, GridgateError, isGridgateError, type ErrorCode } from './errors.js'
import { lockDataDir, lockSocketPath } from './lock.js'
import { Store } from '../store-forward/store.js'
import { storeOptions } from './gateway.js'

export type Via = 'gateway' | 'store'
export type Answer = Record<string, unknown>

/** One admin API request to the running gateway: resolves with the JSON answer of a 2xx. */
export type AdminCall = (method: string, path: string, body?: unknown) => Promise<Answer>

/**
 * Runs `onGateway` against the gateway that holds the data dir's lock, or `onStore` against the store
 * opened here when none does; `via` says which one answered.
 */
export async function viaGatewayOrStore<T> (config: Config, onGateway: (call: AdminCall) => Promise<T>, onStore: (store: Store) => Promise<T>): Promise<{ via: Via, result: T }> {
  let lock
  try {
    // A gateway that never ran has no data dir yet: `gridgate device add` before the first start is fine.
    fs.mkdirSync(config.gateway.dataDir, { recursive: true })
  } catch (err) {
    throw new GridgateError('GG_ERR_DATA_DIR', `data dir ${config.gateway.dataDir} cannot be created: ${(err as Error).message}`, { cause: err })
  }
  try {
    lock = await lockDataDir(config.gateway.dataDir)
  } catch (err) {
    if (!isGridgateError(err, 'GG_ERR_STORE_LOCKED')) throw err
    const socketPath = lockSocketPath(config.gateway.dataDir)
    return { via: 'gateway', result: await onGateway((method, path, body) => adminRequest(socketPath, method, path, body)) }
  }
  try {
    const store = new Store({ ...storeOptions(config), log: pino({ level: 'silent' }), faults: false, floorMs: () => 0, now: () => Date.now() })
    await store.open()
    try {
      return { via: 'store', result: await onStore(store) }
    } finally {
      await store.close()
    }
  } finally {
    await lock.release()
  }
}

/** An admin API request on the lock socket. A GG_ERR_* code in an error answer is kept. */
export function adminRequest (socketPath: string, method: string, path: string, body?: unknown): Promise<Answer> {
  const text = body === undefined ? undefined : JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const r = http.request({
      socketPath,
      method,
      path,
      headers: text === undefined ? {} : { 'content-type': 'application/json' },
      timeout: 30_000,
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        let parsed: Answer
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Answer
        } catch {
          reject(new GridgateError('GG_ERR_INTERNAL', `the running gateway answered ${res.statusCode} without JSON`))
          return
        }
        const status = res.statusCode ?? 500
        if (status >= 200 && status < 300) return resolve(parsed)
        const code = typeof parsed.code === 'string' && parsed.code in ErrorCodes ? parsed.code as ErrorCode : status === 400 ? 'GG_ERR_USAGE' : 'GG_ERR_INTERNAL'
        reject(new GridgateError(code, String(parsed.message ?? `HTTP ${status}`), { details: Array.isArray(parsed.details) ? parsed.details.map(String) : [] }))
      })
    })
    r.on('timeout', () => r.destroy(new Error('timed out')))
    r.on('error', (err) => reject(new GridgateError('GG_ERR_INTERNAL', `cannot reach the running gateway on ${socketPath}: ${err.message}`, { cause: err })))
    r.end(text)
  })
}
