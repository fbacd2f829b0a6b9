// Prometheus metrics (prom-client). Labels are bounded sets (protocol, outcome, uplink name from the
// config, reason codes) — never a device id (an unbounded label would grow memory with the fleet).
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client'

export type Protocol = 'mqtt' | 'coap' | 'ws' | 'http'

export interface UplinkGaugeSource {
  name: string
  backlogEvents: number
  backlogBytes: number
  oldestAgeSeconds: number
  state: string
  endpoints?: ReadonlyArray<{ endpoint: string, breaker: string }>
}

export interface StoreGaugeSource {
  usedBytes: number
  walBytes: number
  full: boolean
  diskFree: number | null
  uplinks: ReadonlyMap<string, { deadLetters: number }>
}
/** MQTT broker state that is not events (adapters/mqtt/persistence.ts). */
export interface MqttGaugeSource {
  retained: number
  queuedMessages: number
  offlineSessions: number
}
/** gridgate_uplink_breaker_state values. */
export const BREAKER_STATES = { closed: 0, open: 1, 'half-open': 2 } as const

export const UPLINK_STATES = ['idle', 'sending', 'backoff', 'rejected', 'stopped'] as const

export class Metrics {
  readonly registry = new Registry()
  readonly ingress: Counter<'protocol' | 'outcome'>
  readonly authFailures: Counter<'protocol'>
  readonly normalizeFailures: Counter<'protocol'>
  readonly dedupHits: Counter<'protocol'>
  readonly connections: Gauge<'protocol'>
  readonly websocketCloses: Counter<'reason'>
  readonly uplinkSends: Counter<'uplink' | 'outcome'>
  readonly uplinkEvents: Counter<'uplink'>
  readonly uplinkLatency: Histogram<'uplink'>
  readonly deadLetters: Counter<'uplink' | 'reason'>
  readonly idleCollections: Counter
  readonly idleMallocTrims: Counter
  readonly commits: Counter
  readonly commitSeconds: Histogram
  readonly commitFailures: Counter<'code'>
  readonly storeSync: Gauge
  readonly storeReady: Gauge
  readonly clockSynced: Gauge
  readonly dropped: Counter<'uplink' | 'reason'>
  readonly mqttRetainedRefused: Counter
  readonly mqttOfflineDropped: Counter
  readonly mqttSessionsEnded: Counter<'reason'>
  /** Stored messages per protocol since the last collection (the hot path's count: no label hashing). */
  private readonly storedSince = new Map<Protocol, number>()
  private mqttSource: () => MqttGaugeSource | null = () => null
  private storeSource: () => StoreGaugeSource | null = () => null
  private uplinkSources: () => UplinkGaugeSource[] = () => []

  /** gridgate_ingress_total{outcome="stored"} + 1, added to the counter when it is read. */
  countStored (protocol: Protocol): void {
    this.storedSince.set(protocol, (this.storedSince.get(protocol) ?? 0) + 1)
  }

  constructor () {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'gridgate_' })
    const stored = this.storedSince
    this.ingress = new Counter({
      name: 'gridgate_ingress_total', help: 'Device messages by protocol and outcome (stored, duplicate, refused, failed, local).', labelNames: ['protocol', 'outcome'], registers,
      collect () {
        for (const [protocol, n] of stored) if (n > 0) this.inc({ protocol, outcome: 'stored' }, n)
        stored.clear()
      },
    })
    this.authFailures = new Counter({ name: 'gridgate_auth_failures_total', help: 'Failed device authentications.', labelNames: ['protocol'], registers })
    this.normalizeFailures = new Counter({ name: 'gridgate_normalize_failures_total', help: 'Payloads kept as raw bytes because they did not parse as their declared type.', labelNames: ['protocol'], registers })
    this.dedupHits = new Counter({ name: 'gridgate_dedup_hits_total', help: 'Device retransmissions answered with the original outcome instead of being stored again.', labelNames: ['protocol'], registers })
    this.connections = new Gauge({ name: 'gridgate_connections', help: 'Open device connections.', labelNames: ['protocol'], registers })
    this.websocketCloses = new Counter({ name: 'gridgate_websocket_closes_total', help: 'WebSocket JSON connections closed by the gateway, by reason (slow_consumer, keepalive, frame_too_large).', labelNames: ['reason'], registers })
    this.uplinkSends = new Counter({ name: 'gridgate_uplink_sends_total', help: 'Batches sent to uplinks by outcome class.', labelNames: ['uplink', 'outcome'], registers })
    this.uplinkEvents = new Counter({ name: 'gridgate_uplink_events_total', help: 'Events delivered to uplinks.', labelNames: ['uplink'], registers })
    this.uplinkLatency = new Histogram({ name: 'gridgate_uplink_send_seconds', help: 'Time per batch send.', labelNames: ['uplink'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers })
    this.deadLetters = new Counter({ name: 'gridgate_dead_letters_total', help: 'Events moved to an uplink\'s dead letters, by reason.', labelNames: ['uplink', 'reason'], registers })
    this.idleCollections = new Counter({ name: 'gridgate_idle_gc_total', help: 'Full garbage collections run because the gateway was quiet and its heap had grown (gateway.gcWhenIdle).', registers })
    this.idleMallocTrims = new Counter({ name: 'gridgate_idle_malloc_trim_total', help: 'Times the quiet gateway handed freed C heap memory back to the system (glibc malloc_trim, gateway.gcWhenIdle).', registers })
    this.commitSeconds = new Histogram({ name: 'gridgate_store_commit_seconds', help: 'Store transactions from their hand-over to the writer thread until it answered (the commit and its fsync): a slow disk or SD card shows here before it shows in device acknowledgements.', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers })
    this.commits = new Counter({ name: 'gridgate_store_commits_total', help: 'Store transactions committed.', registers })
    this.commitFailures = new Counter({ name: 'gridgate_store_commit_failures_total', help: 'Store transactions rolled back, by error code.', labelNames: ['code'], registers })
    this.storeSync = new Gauge({ name: 'gridgate_store_synchronous', help: 'SQLite synchronous mode read back from the writer connection (2 = FULL, 1 = NORMAL).', registers })
    this.storeReady = new Gauge({ name: 'gridgate_store_ready', help: '1 while the store writer is running.', registers })
    this.clockSynced = new Gauge({ name: 'gridgate_clock_synced', help: '1 when the wall clock is at or past the persisted clock floor; 0 while time stamps use the floor.', registers })
    this.dropped = new Counter({ name: 'gridgate_dropped_events_total', help: 'Events removed by store policy before delivery, per uplink and reason (quota, ttl, lag).', labelNames: ['uplink', 'reason'], registers })
    const store = (): StoreGaugeSource | null => this.storeSource()
    new Gauge({
      name: 'gridgate_store_bytes', help: 'Database pages in use plus the WAL, in bytes (what store.maxBytes bounds).', registers,
      collect () { const s = store(); if (s !== null) this.set(s.usedBytes + s.walBytes) },
    })
    new Gauge({
      name: 'gridgate_store_wal_bytes', help: 'Size of the WAL file in bytes.', registers,
      collect () { const s = store(); if (s !== null) this.set(s.walBytes) },
    })
    new Gauge({
      name: 'gridgate_store_full', help: '1 while the store is full (reject-new refuses; drop-oldest drops to admit).', registers,
      collect () { const s = store(); if (s !== null) this.set(s.full ? 1 : 0) },
    })
    new Gauge({
      name: 'gridgate_store_disk_free_bytes', help: 'Free bytes on the data directory\'s file system (statfs).', registers,
      collect () { const s = store(); if (s !== null && s.diskFree !== null) this.set(s.diskFree) },
    })
    new Gauge({
      name: 'gridgate_dead_letters', help: 'Dead letters held per uplink.', labelNames: ['uplink'], registers,
      collect () { const s = store(); if (s !== null) for (const [name, u] of s.uplinks) this.set({ uplink: name }, u.deadLetters) },
    })
    const uplinkSources = (): UplinkGaugeSource[] => this.uplinkSources()
    new Gauge({
      name: 'gridgate_queue_events', help: 'Events waiting for each uplink.', labelNames: ['uplink'], registers,
      collect () { for (const u of uplinkSources()) this.set({ uplink: u.name }, u.backlogEvents) },
    })
    new Gauge({
      name: 'gridgate_queue_bytes', help: 'Stored bytes waiting for each uplink.', labelNames: ['uplink'], registers,
      collect () { for (const u of uplinkSources()) this.set({ uplink: u.name }, u.backlogBytes) },
    })
    new Gauge({
      name: 'gridgate_queue_oldest_age_seconds', help: 'Age of the oldest event waiting for each uplink (0 when caught up).', labelNames: ['uplink'], registers,
      collect () { for (const u of uplinkSources()) this.set({ uplink: u.name }, u.oldestAgeSeconds) },
    })
    new Gauge({
      name: 'gridgate_uplink_state', help: '1 for the state each uplink is in.', labelNames: ['uplink', 'state'], registers,
      collect () {
        for (const u of uplinkSources()) for (const s of UPLINK_STATES) this.set({ uplink: u.name, state: s }, u.state === s ? 1 : 0)
      },
    })
    new Gauge({
      name: 'gridgate_uplink_breaker_state', help: 'Circuit breaker of each uplink endpoint: 0 closed, 1 open, 2 half-open.', labelNames: ['uplink', 'endpoint'], registers,
      collect () {
        for (const u of uplinkSources()) {
          for (const e of u.endpoints ?? []) this.set({ uplink: u.name, endpoint: e.endpoint }, BREAKER_STATES[e.breaker as keyof typeof BREAKER_STATES] ?? 0)
        }
      },
    })
    // MQTT broker state that is not events: retained messages, session queues, sessions.
    this.mqttRetainedRefused = new Counter({ name: 'gridgate_mqtt_retained_refused_total', help: 'Retained messages on a new topic not retained because mqtt.maxRetained was reached (MQTT 5: refused with 0x97).', registers })
    this.mqttOfflineDropped = new Counter({ name: 'gridgate_mqtt_offline_dropped_total', help: 'Messages dropped from the head of a persistent session\'s queue beyond mqtt.maxOfflineMessages.', registers })
    this.mqttSessionsEnded = new Counter({ name: 'gridgate_mqtt_sessions_ended_total', help: 'Disconnected persistent sessions removed, by reason (expired: mqtt.sessionExpiry or the client\'s Session Expiry Interval; limit: mqtt.maxSessions).', labelNames: ['reason'], registers })
    const mqtt = (): MqttGaugeSource | null => this.mqttSource()
    new Gauge({
      name: 'gridgate_mqtt_retained_messages', help: 'Retained MQTT messages held (and stored in the SQLite file).', registers,
      collect () { const m = mqtt(); if (m !== null) this.set(m.retained) },
    })
    new Gauge({
      name: 'gridgate_mqtt_queued_messages', help: 'Messages in persistent sessions\' queues (offline, or sent and not yet acknowledged).', registers,
      collect () { const m = mqtt(); if (m !== null) this.set(m.queuedMessages) },
    })
    new Gauge({
      name: 'gridgate_mqtt_offline_sessions', help: 'Disconnected persistent MQTT sessions held until they expire.', registers,
      collect () { const m = mqtt(); if (m !== null) this.set(m.offlineSessions) },
    })
  }

  setMqttSource (fn: () => MqttGaugeSource | null): void { this.mqttSource = fn }
  setUplinkSource (fn: () => UplinkGaugeSource[]): void { this.uplinkSources = fn }
  setStoreSource (fn: () => StoreGaugeSource | null): void { this.storeSource = fn }
}
