// Admin API on a loopback port: health, readiness, Prometheus metrics and the uplinks' state.
import Fastify, { type FastifyInstance } from 'fastify'
import { noSchemaCompilers } from './no-schemas.js'
import type { Store } from '../store-forward/store.js'
import type { Forwarder } from '../store-forward/forwarder.js'
import type { Metrics } from './metrics.js'
import { GridgateError } from './errors.js'
import type { FaultSlot } from '../store-forward/protocol.js'
import { listDeadLetters } from '../store-forward/dead-letters.js'
import type { DeviceManager } from './devices.js'

export interface AdminDeps {
  store: Store
  forwarders: ReadonlyMap<string, Forwarder>
  metrics: Metrics
  /** True once every listener is up and until shutdown starts. */
  accepting: () => boolean
  clockSynced: () => boolean
  faults: boolean
  /** The device registry (GET/POST/PATCH/DELETE /api/v1/devices); absent = no such routes. */
  devices?: DeviceManager
}

/** HTTP status of a device registry error. */
const DEVICE_STATUS: Record<string, number> = {
  GG_ERR_DEVICE_INVALID: 400,
  GG_ERR_USAGE: 400,
  GG_ERR_DEVICE_NOT_FOUND: 404,
  GG_ERR_DEVICE_EXISTS: 409,
  GG_ERR_DEVICE_IN_CONFIG: 409,
  GG_ERR_STORE_UNAVAILABLE: 503,
}

async function deviceCall<T> (fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    const status = DEVICE_STATUS[(err as { code?: string }).code ?? '']
    throw status === undefined ? err : Object.assign(err as Error, { statusCode: status })
  }
}

export function uplinkReport (store: Store, forwarders: ReadonlyMap<string, Forwarder>, now = Date.now()) {
  return [...store.uplinks.values()].map((u) => {
    const f = forwarders.get(u.name)
    const oldest = u.backlogEvents === 0 ? null : (f?.oldestPendingMs ?? u.oldestMs)
    return {
      name: u.name,
      state: f?.state ?? 'stopped',
      cursor: Math.max(u.cursor, f?.position ?? 0),
      backlogEvents: u.backlogEvents,
      backlogBytes: u.backlogBytes,
      oldestAgeSeconds: oldest === null || u.backlogEvents === 0 ? 0 : Math.max(0, (now - oldest) / 1000),
      deadLetters: u.deadLetters,
      lastError: f?.lastError ?? null,
      dropped: { ...u.dropped },
      deadLettersDropped: u.deadLettersDropped,
      endpoints: f?.endpoints() ?? [],
    }
  })
}

export function createAdmin (deps: AdminDeps): FastifyInstance {
  const app = Fastify({ logger: false, schemaController: noSchemaCompilers })
  app.setErrorHandler((err: Error & { statusCode?: number, code?: string, details?: readonly string[] }, _req, reply) => {
    const status = err.statusCode ?? 500
    void reply.code(status).send({ code: err.code ?? 'GG_ERR_INTERNAL', message: err.message, ...(err.details !== undefined && err.details.length > 0 ? { details: err.details } : {}) })
  })
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ code: 'GG_ERR_NOT_FOUND', message: `no route ${req.method} ${req.url}` })
  })

  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const store = deps.store.ready
    const accepting = deps.accepting()
    const ready = store && accepting
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', store: store ? 'ok' : 'unavailable', accepting })
  })
  app.get('/metrics', async (_req, reply) => {
    deps.metrics.storeReady.set(deps.store.ready ? 1 : 0)
    deps.metrics.clockSynced.set(deps.clockSynced() ? 1 : 0)
    const body = await deps.metrics.registry.metrics()
    return reply.type(deps.metrics.registry.contentType).send(body)
  })
  app.get('/api/v1/uplinks', async () => ({ uplinks: uplinkReport(deps.store, deps.forwarders) }))
  app.get('/api/v1/store', async () => ({
    storeId: deps.store.info.storeId,
    file: deps.store.file,
    lastSequence: deps.store.lastSeq,
    synchronous: deps.store.info.synchronous === 2 ? 'full' : deps.store.info.synchronous === 1 ? 'normal' : String(deps.store.info.synchronous),
    ...(await deps.store.stats()),
  }))

  // Dead letters: list, replay (original id, new sequence, own uplink only), purge.
  const selector = (uplink: unknown, ids: unknown): { uplink: string | null, ids: number[] | null } => {
    if (uplink !== undefined && uplink !== null && (typeof uplink !== 'string' || !deps.store.uplinks.has(uplink))) {
      throw Object.assign(new GridgateError('GG_ERR_USAGE', `no uplink ${JSON.stringify(uplink)}; configured: ${[...deps.store.uplinks.keys()].join(', ')}`), { statusCode: 400 })
    }
    if (ids !== undefined && ids !== null && (!Array.isArray(ids) || !ids.every(i => Number.isSafeInteger(i) && i > 0))) {
      throw Object.assign(new GridgateError('GG_ERR_USAGE', 'ids must be a list of dead-letter ids'), { statusCode: 400 })
    }
    return { uplink: (uplink as string | undefined) ?? null, ids: (ids as number[] | undefined) ?? null }
  }
  app.get<{ Querystring: { uplink?: string, after?: string, limit?: string } }>('/api/v1/dead-letters', async (req) => {
    const { uplink } = selector(req.query.uplink, undefined)
    const after = Number(req.query.after ?? 0)
    const limit = Number(req.query.limit ?? 100)
    if (!Number.isSafeInteger(after) || after < 0 || !Number.isSafeInteger(limit) || limit < 1) {
      throw Object.assign(new GridgateError('GG_ERR_USAGE', 'after and limit must be non-negative integers'), { statusCode: 400 })
    }
    return listDeadLetters(deps.store, uplink, after, limit)
  })
  app.post<{ Body: { uplink?: string, ids?: number[] } | null }>('/api/v1/dead-letters/replay', async (req) => {
    const s = selector(req.body?.uplink, req.body?.ids)
    return deps.store.replayDeadLetters(s.uplink, s.ids)
  })
  app.post<{ Body: { uplink?: string, ids?: number[] } | null }>('/api/v1/dead-letters/purge', async (req) => {
    const s = selector(req.body?.uplink, req.body?.ids)
    return deps.store.purgeDeadLetters(s.uplink, s.ids)
  })

  // The device registry (gateway/devices.ts): `gridgate device` goes through these on the lock socket.
  const devices = deps.devices
  if (devices !== undefined) {
    app.get('/api/v1/devices', async () => ({ devices: devices.list() }))
    app.get<{ Params: { id: string } }>('/api/v1/devices/:id', async (req) => {
      const d = devices.get(req.params.id)
      if (d === undefined) throw Object.assign(new GridgateError('GG_ERR_DEVICE_NOT_FOUND', `no device ${req.params.id}`), { statusCode: 404 })
      return { device: d }
    })
    app.post('/api/v1/devices', async (req, reply) => {
      const r = await deviceCall(() => devices.add(req.body ?? {}))
      return reply.code(201).send(r)
    })
    app.patch<{ Params: { id: string }, Body: { enabled?: unknown } | null }>('/api/v1/devices/:id', async (req) => {
      const enabled = req.body?.enabled
      if (typeof enabled !== 'boolean' || Object.keys(req.body ?? {}).length !== 1) {
        throw Object.assign(new GridgateError('GG_ERR_USAGE', 'PATCH takes {"enabled": true|false}'), { statusCode: 400 })
      }
      return { device: await deviceCall(() => devices.setEnabled(req.params.id, enabled)) }
    })
    app.delete<{ Params: { id: string } }>('/api/v1/devices/:id', async (req) => deviceCall(() => devices.remove(req.params.id)))
  }

  if (deps.faults) {
    // Test-only fault switches; this route exists only when GRIDGATE_TEST_FAULTS=1 under NODE_ENV=test.
    app.post<{ Body: Partial<Record<keyof typeof FaultSlot, number>> }>('/api/v1/test/faults', async (req) => {
      const body = req.body ?? {}
      for (const [k, v] of Object.entries(body)) {
        if (!['holdBeforeCommit', 'failCommits', 'killWriter', 'diskFull'].includes(k) || typeof v !== 'number') {
          throw Object.assign(new GridgateError('GG_ERR_USAGE', `unknown fault ${k}`), { statusCode: 400 })
        }
        deps.store.fault(k as keyof typeof FaultSlot, v)
      }
      return { holding: deps.store.faultValue('holding'), holdBeforeCommit: deps.store.faultValue('holdBeforeCommit'), failCommits: deps.store.faultValue('failCommits') }
    })
  }
  return app
}
