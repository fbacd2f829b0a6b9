// The one owner of start and stop order. Start: data dir → lock → store → forwarders → admin →
// device listeners (traffic is accepted last, when everything behind it is ready). Stop reverses it
// within gateway.shutdownTimeout: stop accepting, finish in-flight commits, let each forwarder
// finish its batch, close the store cleanly.
import fs from 'node:fs'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { pino, type Logger } from 'pino'
import type { Config, UplinkConfig } from '../config/schema.js'
import { GridgateError } from './errors.js'
import { lockDataDir, type DataDirLock } from './lock.js'
import { Metrics } from './metrics.js'
import { HeapTrim } from './heap-trim.js'
import { Clock, IdGenerator } from './clock.js'
import { defaultDecoders } from './decoders/index.js'
import { DeviceManager } from './devices.js'
import { Ingest } from './ingest.js'
import { Rules } from './rules.js'
import { createAdmin, uplinkReport } from './admin.js'
import { Store, type StoreOptions } from '../store-forward/store.js'
import { Forwarder } from '../store-forward/forwarder.js'
import type { Sink } from '../store-forward/sink.js'
import { EndpointSet, endpointLabel } from '../store-forward/endpoints.js'
import { createHttpSink } from '../adapters/uplink-http/index.js'
import type { createGrpcSink as CreateGrpcSink } from '../adapters/uplink-grpc/index.js'
import { MqttAdapter } from '../adapters/mqtt/index.js'
import { CoapAdapter } from '../adapters/coap/index.js'
import { HttpAdapter } from '../adapters/http/index.js'
import { DeviceAuth } from '../adapters/http/auth.js'
import { WebSocketAdapter } from '../adapters/websocket/index.js'

export interface GatewayOptions {
  log?: Logger
  /** Test-only fault hooks (GRIDGATE_TEST_FAULTS=1 under NODE_ENV=test). */
  faults?: boolean
  /** The wall clock (ms since the epoch); Date.now by default. A seam for clock-step tests. */
  wallClock?: () => number
  /** The monotonic clock (ms); performance.now by default. Moves with wallClock in tests where time passes. */
  monoClock?: () => number
  /** How often the store's maintenance (TTL, lag age, free disk, checkpoint) runs; 1 s by default. */
  maintainIntervalMs?: number
}

/**
 * The gRPC sink and @grpc/grpc-js (2.7 MiB of heap, with its HTTP/2 stack) are loaded only when an
 * uplink of type grpc is configured (loadSinkModules, before the forwarders start).
 */
let createGrpcSink: typeof CreateGrpcSink | null = null

async function loadSinkModules (uplinks: readonly UplinkConfig[]): Promise<void> {
  if (createGrpcSink === null && uplinks.some(u => u.type === 'grpc')) {
    createGrpcSink = (await import('../adapters/uplink-grpc/index.js')).createGrpcSink
  }
}

/** The config's `type` picks the sink factory; each endpoint gets its own sink. */
const sinkFactories: { [K in UplinkConfig['type']]: (u: Extract<UplinkConfig, { type: K }>, endpoint: string) => Sink } = {
  http: (u, url) => createHttpSink({ url, timeoutMs: u.timeout, ...deliveryOptions(u) }),
  grpc: (u, address) => createGrpcSink!({ address, timeoutMs: u.timeout, reconnectMaxMs: u.retry.maxDelay, ...deliveryOptions(u) }),
}

/** Endpoints, selection and circuit breakers around the per-endpoint sinks (store-forward/endpoints.ts). */
function createSink (u: UplinkConfig, log: Logger): Sink {
  const single = u.type === 'http' ? u.url : u.address
  const targets = u.endpoints ?? (single === undefined ? [] : [single])
  const factory = sinkFactories[u.type] as (u: UplinkConfig, endpoint: string) => Sink
  return new EndpointSet(targets.map(t => ({ label: endpointLabel(t), sink: factory(u, t) })), {
    uplink: u.name,
    selection: u.selection ?? 'failover',
    breaker: { failures: u.breaker?.failures ?? 5, halfOpenAfterMs: u.breaker?.halfOpenAfter ?? u.retry.maxDelay },
    log,
  })
}

function deliveryOptions (u: UplinkConfig) {
  const tls: { ca?: Buffer, cert?: Buffer, key?: Buffer } = {}
  for (const k of ['ca', 'cert', 'key'] as const) {
    const file = u.tls?.[k]
    if (file === undefined) continue
    try {
      tls[k] = fs.readFileSync(file)
    } catch (err) {
      throw new GridgateError('GG_ERR_CONFIG_INVALID', `uplinks.${u.name}.tls.${k}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
    }
  }
  return {
    ...(u.headers === undefined ? {} : { headers: u.headers }),
    ...(u.bearerToken === undefined ? {} : { bearerToken: u.bearerToken }),
    ...(u.gzip === undefined ? {} : { gzip: u.gzip }),
    ...(u.tls === undefined ? {} : { tls }),
  }
}

/** The store's options that come from the config (shared with `gridgate dlq` on a stopped gateway). */
export function storeOptions (c: Config): Pick<StoreOptions, 'dataDir' | 'sync' | 'dedupWindowMs' | 'commitDelayMs' | 'uplinks' | 'quota'> {
  return {
    dataDir: c.gateway.dataDir,
    sync: c.store.sync,
    dedupWindowMs: c.store.dedupWindow,
    commitDelayMs: c.store.commitDelay,
    uplinks: c.uplinks.map(u => ({
      name: u.name,
      startFrom: u.startFrom,
      filter: u.filter,
      maxLag: u.maxLag === undefined ? undefined : { bytes: u.maxLag.bytes, ageMs: u.maxLag.age },
    })),
    quota: {
      maxBytes: c.store.maxBytes,
      walMaxBytes: c.store.walMaxBytes,
      minFreeDisk: c.store.minFreeDisk,
      reserveBytes: c.store.reserveBytes,
      whenFull: c.store.whenFull,
      ttlMs: c.store.ttl,
    },
  }
}

export class Gateway {
  readonly log: Logger
  readonly metrics = new Metrics()
  store!: Store
  clock!: Clock
  readonly forwarders = new Map<string, Forwarder>()
  private lock: DataDirLock | null = null
  private admin: FastifyInstance | null = null
  private mqtt: MqttAdapter | null = null
  private coap: CoapAdapter | null = null
  private web: HttpAdapter | null = null
  private ws: WebSocketAdapter | null = null
  private accepting = false
  private stopping: Promise<void> | null = null
  private heapTrim: HeapTrim | null = null
  /** Config and registry devices (gateway/devices.ts); set once the store is open. */
  devices: DeviceManager | null = null

  constructor (readonly config: Config, private readonly opts: GatewayOptions = {}) {
    this.log = opts.log ?? pino({ level: config.gateway.logLevel, base: { gatewayId: config.gateway.id } })
  }

  get mqttAddress (): AddressInfo | null { return this.mqtt?.address() ?? null }
  get coapAddress (): AddressInfo | null { return this.coap?.address() ?? null }
  get adminAddress (): AddressInfo | null { return (this.admin?.server.address() as AddressInfo | null) ?? null }

  /** Every bound listener by name (`mqtt`, `admin`, …), as `host:port`; logged in the ready line. */
  listeners (): Record<string, string> {
    const all: Record<string, AddressInfo | null> = {
      admin: this.adminAddress,
      mqtt: this.mqttAddress,
      coap: this.coapAddress,
      mqtts: this.mqtt?.tlsAddress() ?? null,
      websocket: this.web?.address() ?? null,
    }
    const out: Record<string, string> = {}
    for (const [name, a] of Object.entries(all)) if (a !== null) out[name] = `${a.address}:${a.port}`
    return out
  }

  async start (): Promise<void> {
    const c = this.config
    try {
      fs.mkdirSync(c.gateway.dataDir, { recursive: true })
      fs.accessSync(c.gateway.dataDir, fs.constants.W_OK)
    } catch (err) {
      throw new GridgateError('GG_ERR_DATA_DIR', `data dir ${c.gateway.dataDir} is not writable: ${(err as Error).message}`, { cause: err })
    }
    this.lock = await lockDataDir(c.gateway.dataDir)
    try {
      await this.startInner()
    } catch (err) {
      await this.stop().catch(() => {})
      throw err
    }
  }

  private async startInner (): Promise<void> {
    const c = this.config
    this.store = new Store({
      ...storeOptions(c),
      takeClockSteps: () => this.clock?.takeSteps() ?? [],
      ...(this.opts.maintainIntervalMs === undefined ? {} : { maintainIntervalMs: this.opts.maintainIntervalMs }),
      floorMs: () => this.clock?.floorMs ?? 0,
      now: () => this.clock?.now() ?? (this.opts.wallClock ?? Date.now)(),
      log: this.log,
      faults: this.opts.faults === true,
    })
    const info = await this.store.open()
    this.clock = new Clock({
      floorMs: info.floorMs,
      ...(this.opts.wallClock === undefined ? {} : { wall: this.opts.wallClock }),
      ...(this.opts.monoClock === undefined ? {} : { mono: this.opts.monoClock }),
    })
    if (info.movedAside !== null) {
      this.log.error({ code: 'GG_ERR_STORE_CORRUPT', movedTo: info.movedAside, storeId: info.storeId }, 'the store was corrupt; it was moved aside and a new store created')
    }
    if (info.uncleanShutdown) this.log.warn({ quickCheck: info.quickCheck }, 'the previous run did not stop cleanly; quick_check passed')
    for (const r of info.removedUplinks) {
      this.log.warn({ uplink: r.name, backlogEvents: r.backlogEvents }, 'uplink removed from the config; its cursor and backlog claim were dropped')
    }
    if (!this.clock.synced()) this.log.warn({ code: 'GG_ERR_CLOCK_UNSYNCED', floor: new Date(info.floorMs).toISOString() }, 'wall clock is behind the persisted clock floor')
    this.metrics.storeSync.set(info.synchronous)
    const wanted = c.store.sync === 'full' ? 2 : 1
    if (info.synchronous !== wanted) throw new GridgateError('GG_ERR_DATA_DIR', `SQLite synchronous reads back ${info.synchronous}, expected ${wanted}`)
    this.store.on('ready', (ready) => this.metrics.storeReady.set(ready ? 1 : 0))
    this.store.on('fatal', (err) => {
      this.log.fatal({ err, code: 'GG_ERR_STORE_UNAVAILABLE' }, 'the store cannot run; stopping')
      this.onFatal?.(err)
    })
    this.metrics.storeReady.set(1)

    await loadSinkModules(c.uplinks)
    for (const u of c.uplinks) {
      const state = this.store.uplinks.get(u.name)!
      const f = new Forwarder({
        name: u.name,
        slot: state.slot,
        sink: createSink(u, this.log),
        store: this.store,
        batchMaxEvents: u.batchMaxEvents,
        batchMaxBytes: u.batchMaxBytes,
        batchMaxDelayMs: u.batchMaxDelay,
        retryInitialMs: u.retry.initialDelay,
        retryMaxMs: u.retry.maxDelay,
        log: this.log,
        metrics: this.metrics,
      }, state.cursor)
      this.forwarders.set(u.name, f)
      f.start()
    }
    this.metrics.setUplinkSource(() => uplinkReport(this.store, this.forwarders))
    this.metrics.setStoreSource(() => this.store)
    const bySlot = new Map([...this.store.uplinks.values()].map(u => [u.slot, this.forwarders.get(u.name)]))
    this.store.on('skipped', (slot, cursor) => bySlot.get(slot)?.skipTo(cursor))
    // One log line per burst of drops, not per event (DESIGN.md "Operations").
    const dropLog = new Map<string, number>()
    this.store.on('dropped', (uplink, reason, events) => {
      this.metrics.dropped.inc({ uplink, reason }, events)
      const key = `${uplink}:${reason}`
      const now = Date.now()
      if ((dropLog.get(key) ?? 0) + 60_000 <= now) {
        dropLog.set(key, now)
        this.log.warn({ code: 'GG_ERR_EVENTS_DROPPED', uplink, reason, events }, 'store policy removed events before delivery (logged once a minute per uplink and reason)')
      }
    })
    this.store.on('committed', (ms: number) => {
      this.metrics.commits.inc()
      this.metrics.commitSeconds.observe(ms / 1000)
    })
    this.store.on('commitFailed', (code) => this.metrics.commitFailures.inc({ code }))
    this.store.on('full', () => this.log.warn({ code: 'GG_ERR_STORE_FULL', whenFull: c.store.whenFull, maxBytes: c.store.maxBytes }, 'the store is full'))
    this.store.on('space', () => this.log.info('the store admits new events again'))

    // One registry for every protocol: config devices and the registry table (config wins on an id in both).
    const devices = new DeviceManager({ configDevices: c.devices, store: this.store, log: this.log })
    await devices.load()
    this.devices = devices
    // A device disabled or removed at run time loses its live sessions at once.
    devices.on('revoked', (id) => {
      this.mqtt?.disconnectDevice(id)
      this.ws?.disconnectDevice(id)
    })

    this.admin = createAdmin({ store: this.store, forwarders: this.forwarders, metrics: this.metrics, accepting: () => this.accepting, clockSynced: () => this.clock.synced(), faults: this.opts.faults === true, devices })
    try {
      await this.admin.listen({ host: c.admin.host, port: c.admin.port })
    } catch (err) {
      throw new GridgateError('GG_ERR_PORT_IN_USE', `admin API cannot listen on ${c.admin.host}:${c.admin.port}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
    }
    // The lock socket in the data dir serves the admin API too: local CLI commands (gridgate dlq)
    // find the running gateway there without knowing its admin port.
    const adminServer = this.admin.server
    this.lock?.serve((socket) => adminServer.emit('connection', socket))

    const registry = devices.registry
    const presence = devices.presence
    const decoders = defaultDecoders()
    const ingest = new Ingest({
      gatewayId: c.gateway.id,
      store: this.store,
      decoders,
      clock: this.clock,
      ids: new IdGenerator(this.clock),
      metrics: this.metrics,
      rules: Rules.compile(c.rules),
    })
    if (c.mqtt.enabled) {
      this.mqtt = new MqttAdapter({
        host: c.mqtt.host,
        port: c.mqtt.port,
        maxPacketSize: c.mqtt.maxPacketSize,
        tls: c.mqtt.tls,
        allowAnonymous: c.auth.allowAnonymous,
        rejectWaitMs: c.store.rejectWait,
        state: {
          retained: {
            load: async (max) => {
              const r = await this.store.loadRetained(max)
              if (r.deleted > 0) this.log.warn({ code: 'GG_ERR_RETAINED_LIMIT', deleted: r.deleted, maxRetained: max }, 'more retained messages were stored than mqtt.maxRetained allows; the oldest were deleted')
              return r
            },
            write: (row) => this.store.writeRetained(row),
          },
          maxRetained: c.mqtt.maxRetained,
          maxOfflineMessages: c.mqtt.maxOfflineMessages,
          sessionExpiryMs: c.mqtt.sessionExpiry,
          maxSessions: c.mqtt.maxSessions,
          now: () => this.clock.now(),
        },
        presence,
        registry,
        ingest,
        metrics: this.metrics,
        log: this.log,
      })
      await this.mqtt.start()
    }
    if (c.coap.enabled) {
      this.coap = new CoapAdapter({
        host: c.coap.host,
        port: c.coap.port,
        maxPayloadSize: c.coap.maxPayloadSize,
        maxBlockwiseTransfers: c.coap.maxBlockwiseTransfers,
        maxBlockwisePerEndpoint: c.coap.maxBlockwisePerEndpoint,
        blockwiseTimeoutMs: c.coap.blockwiseTimeout,
        dedupWindowMs: c.store.dedupWindow,
        allowAnonymous: c.auth.allowAnonymous,
        presence,
        registry,
        ingest,
        decoders,
        metrics: this.metrics,
        log: this.log,
      })
      await this.coap.start()
    }
    if (c.websocket.enabled || c.http.enabled) {
      const auth = new DeviceAuth({ registry, allowAnonymous: c.auth.allowAnonymous, metrics: this.metrics, log: this.log, presence })
      const ws = c.websocket
      if (ws.enabled) {
        this.ws = new WebSocketAdapter({
          eventsPath: ws.eventsPath,
          mqttPath: ws.mqttPath,
          maxFrameSize: ws.maxFrameSize,
          maxBatch: ws.maxBatch,
          maxInflight: ws.maxInflight,
          maxBufferedBytes: ws.maxBufferedBytes,
          pingIntervalMs: ws.pingInterval,
          auth,
          ingest,
          decoders,
          metrics: this.metrics,
          log: this.log,
          mqtt: this.mqtt,
        })
        this.ws.start()
      }
      const wsAdapter = this.ws
      this.web = new HttpAdapter({
        host: ws.host,
        port: ws.port,
        tls: ws.tls,
        ingestEnabled: c.http.enabled,
        maxBodySize: c.http.maxBodySize,
        pubsubName: c.http.pubsubName,
        auth,
        ingest,
        decoders,
        metrics: this.metrics,
        log: this.log,
        onUpgrade: wsAdapter === null ? undefined : (req, socket, head) => wsAdapter.handleUpgrade(req, socket, head),
      })
      await this.web.start()
    }
    this.accepting = true
    this.log.info({
      storeId: info.storeId,
      dataDir: c.gateway.dataDir,
      sync: c.store.sync,
      mqtt: this.mqttAddress === null ? null : `${this.mqttAddress.address}:${this.mqttAddress.port}`,
      admin: `${this.adminAddress?.address}:${this.adminAddress?.port}`,
      uplinks: c.uplinks.map(u => u.name),
      lastSequence: info.lastSeq,
      listeners: this.listeners(),
    }, 'gridgate ready')
    if (c.gateway.gcWhenIdle) {
      this.heapTrim = new HeapTrim({
        log: this.log,
        onTrim: () => this.metrics.idleCollections.inc(),
        onMallocTrim: (r) => { if (r.released) this.metrics.idleMallocTrims.inc() },
      })
      this.heapTrim.start()
    }
  }

  /** Called when the store cannot continue; the CLI exits non-zero. */
  onFatal: ((err: Error) => void) | undefined

  stop (): Promise<void> {
    this.stopping ??= this.stopInner()
    return this.stopping
  }

  private async stopInner (): Promise<void> {
    const deadline = Date.now() + this.config.gateway.shutdownTimeout
    const remaining = (): number => Math.max(0, deadline - Date.now())
    this.accepting = false
    this.heapTrim?.stop()
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['websocket', async () => Promise.all([this.web?.stopAccepting(), this.ws?.stop()])],
      ['mqtt', async () => this.mqtt?.stop()],
      ['coap', async () => this.coap?.stop()],
      ['websocket-close', async () => this.web?.stop()],
      ['forwarders', async () => Promise.all([...this.forwarders.values()].map(f => f.stop(remaining())))],
      ['admin', async () => this.admin?.close()],
      ['store', async () => this.store?.close()],
      ['lock', async () => this.lock?.release()],
    ]
    let timedOut = false
    for (const [name, step] of steps) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), remaining()) })
      const r = await Promise.race([step().then(() => 'ok' as const, (err: unknown) => { this.log.error({ err, step: name }, 'shutdown step failed'); return 'ok' as const }), timeout])
      clearTimeout(timer)
      if (r === 'timeout') {
        timedOut = true
        this.log.error({ code: 'GG_ERR_SHUTDOWN_TIMEOUT', step: name }, 'shutdown step did not finish in time')
        break
      }
    }
    if (timedOut) throw new GridgateError('GG_ERR_SHUTDOWN_TIMEOUT')
    this.log.info('gridgate stopped')
  }
}
