// `gridgate dlq list|replay|purge`: through the running gateway's admin API on the lock socket when
// it runs (two processes never write the store at once), directly on the store when it is stopped.
import http from 'node:http'
import { pino } from 'pino'
import type { Config } from '../config/schema.js'
import { GridgateError, isGridgateError } from './errors.js'
import { lockDataDir, lockSocketPath } from './lock.js'
import { Store } from '../store-forward/store.js'
import { listDeadLetters } from '../store-forward/dead-letters.js'
import { storeOptions } from './gateway.js'

export interface DlqArgs {
  action: 'list' | 'replay' | 'purge'
  uplink: string | null
  ids: number[] | null
  limit: number
  after: number
}

type Answer = Record<string, unknown>

/** Runs the action; `via` says whether the running gateway or the stopped store answered. */
export async function runDlq (config: Config, args: DlqArgs): Promise<{ via: 'gateway' | 'store', result: Answer }> {
  let lock
  try {
    lock = await lockDataDir(config.gateway.dataDir)
  } catch (err) {
    if (!isGridgateError(err, 'GG_ERR_STORE_LOCKED')) throw err
    return { via: 'gateway', result: await viaGateway(lockSocketPath(config.gateway.dataDir), args) }
  }
  try {
    return { via: 'store', result: await viaStore(config, args) }
  } finally {
    await lock.release()
  }
}

async function viaStore (config: Config, args: DlqArgs): Promise<Answer> {
  const store = new Store({ ...storeOptions(config), log: pino({ level: 'silent' }), faults: false, floorMs: () => 0, now: () => Date.now() })
  await store.open()
  try {
    if (args.uplink !== null && !store.uplinks.has(args.uplink)) {
      throw new GridgateError('GG_ERR_USAGE', `no uplink ${JSON.stringify(args.uplink)}; configured: ${[...store.uplinks.keys()].join(', ')}`)
    }
    switch (args.action) {
      case 'list': return await listDeadLetters(store, args.uplink, args.after, args.limit)
      case 'replay': return await store.replayDeadLetters(args.uplink, args.ids)
      case 'purge': return await store.purgeDeadLetters(args.uplink, args.ids)
    }
  } finally {
    await store.close()
  }
}

function viaGateway (socketPath: string, args: DlqArgs): Promise<Answer> {
  const q = new URLSearchParams({ after: String(args.after), limit: String(args.limit), ...(args.uplink === null ? {} : { uplink: args.uplink }) })
  const body = JSON.stringify({ ...(args.uplink === null ? {} : { uplink: args.uplink }), ...(args.ids === null ? {} : { ids: args.ids }) })
  const req = args.action === 'list'
    ? { method: 'GET', path: `/api/v1/dead-letters?${q.toString()}` }
    : { method: 'POST', path: `/api/v1/dead-letters/${args.action}`, body }
  return new Promise((resolve, reject) => {
    const r = http.request({
      socketPath,
      method: req.method,
      path: req.path,
      headers: req.body === undefined ? {} : { 'content-type': 'application/json' },
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
        if (res.statusCode === 200) resolve(parsed)
        else reject(new GridgateError(res.statusCode === 400 ? 'GG_ERR_USAGE' : 'GG_ERR_INTERNAL', String(parsed.message ?? `HTTP ${res.statusCode}`)))
      })
    })
    r.on('timeout', () => r.destroy(new Error('timed out')))
    r.on('error', (err) => reject(new GridgateError('GG_ERR_INTERNAL', `cannot reach the running gateway on ${socketPath}: ${err.message}`, { cause: err })))
    r.end(req.body)
  })
}
