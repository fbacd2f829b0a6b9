// MQTT device adapter: aedes 2.x on TCP, TLS (`mqtt.tls`) and WebSocket streams. Devices authenticate with username = device id and
// password = secret; sessions are keyed by device; a publish is acknowledged (PUBACK/PUBREC) only
// after its event committed, because aedes writes the ack right after authorizePublish returns.
import fs from 'node:fs'
import net from 'node:net'
import tls from 'node:tls'
import type { Duplex } from 'node:stream'
import type { AddressInfo } from 'node:net'
import { Aedes } from 'aedes'
import mqttPacket from 'mqtt-packet'
import type { Client, AedesOptions, PublishPacket } from 'aedes'
import type { Logger } from 'pino'
import { LRUCache } from 'lru-cache'
import { GridgateError, isGridgateError } from '../../gateway/errors.js'
import { isCommandTopic, type DeviceRecord, type DeviceRegistry } from '../../gateway/identity.js'
import { dedupKey, dedupScope, type Ingest } from '../../gateway/ingest.js'
import { InFlight } from '../../gateway/in-flight.js'
import type { Metrics } from '../../gateway/metrics.js'
import { BrokerPersistence, type RetainedBackend } from './persistence.js'
import { GridgateBroker } from './broker.js'
import type { Presence } from '../../gateway/devices.js'

export interface MqttAdapterOptions {
  host: string
  port: number
  maxPacketSize: number
  /** MQTT over TLS on a second port of the same broker (`mqtt.tls`); PEM file paths. */
  tls?: { port: number, cert: string, key: string, ca?: string | undefined, requireClientCert: boolean } | undefined
  allowAnonymous: boolean
  registry: DeviceRegistry
  ingest: Ingest
  metrics: Metrics
  log: Logger
  /** store.rejectWait: how long an MQTT 3.1.1 ack may be withheld while the store is full. */
  rejectWaitMs?: number
  /** Last seen and open connections per device (GET /api/v1/devices). */
  presence?: Pick<Presence, 'seen' | 'connected' | 'disconnected'> | undefined
  /** Broker state that is not events: retained messages (kept in the store), queues and sessions. */
  state: MqttStateOptions
}

export interface MqttStateOptions {
  retained: RetainedBackend
  maxRetained: number
  maxOfflineMessages: number
  /** mqtt.sessionExpiry (ms; aedes counts whole seconds, so it is rounded up). */
  sessionExpiryMs: number
  maxSessions: number
  now: () => number
}

export interface DeviceAdapter {
  start (): Promise<void>
  /** Stops accepting, lets publishes whose commit is under way finish, then closes connections. */
  stop (): Promise<void>
}

export const ANONYMOUS_DEVICE = 'anonymous'

// mqtt-packet's writer, which aedes serializes every packet with, by default builds a table of all
// 65,536 two-byte packet identifiers on its first write: 6.7 MiB of heap for as long as the process
// lives (15 MiB of RSS while it is built) and a 100 ms pause of the event loop when the first device
// connects. Without the table each PUBACK writes a fresh two-byte slice of Node's buffer pool.
mqttPacket.writeToStream.cacheNumbers = false
/** How often one source address may produce an auth-failure log line (ms). */
const AUTH_LOG_INTERVAL = 10_000
/** How often each broker-state limit (retained, queue, sessions) may produce a log line (ms). */
const STATE_LOG_INTERVAL = 60_000

interface Session {
  device: DeviceRecord
  /** Whether the connection is gone (for a publish waiting for store space); one closure per connection. */
  abandoned: () => boolean
  /** Counted as an open connection of its device in presence (from clientReady to clientDisconnect). */
  online?: boolean
}

/** MQTT 5 DISCONNECT reason for a device disabled or removed from the registry: Administrative action. */
const ADMINISTRATIVE_ACTION = 0x98

type AuthError = Error & { returnCode: number }

function authError (returnCode: 4 | 5, code: 'GG_ERR_AUTH_FAILED' | 'GG_ERR_AUTH_REQUIRED' | 'GG_ERR_FORBIDDEN_TOPIC'): AuthError {
  return Object.assign(new GridgateError(code), { returnCode })
}

/** The broker-side client id: `<deviceId>:<clientId>`, left as is when it already has that prefix. */
export function brokerClientId (deviceId: string, clientId: string): string {
  return clientId.startsWith(`${deviceId}:`) ? clientId : `${deviceId}:${clientId}`
}

export class MqttAdapter implements DeviceAdapter {
  private broker!: Aedes
  private persistence!: BrokerPersistence
  private readonly stateLogAt = new Map<string, { at: number, count: number }>()
  private server!: net.Server
  private tlsServer: tls.Server | null = null
  private closed = false
  private readonly sessions = new WeakMap<Client, Session>()
  private readonly inflight = new InFlight()
  /** Each connection's dedup scope, hashed once (its client id does not change). */
  private readonly scopes = new WeakMap<Client, Uint8Array>()
  private readonly sockets = new Set<Duplex>()
  private readonly authLogAt = new LRUCache<string, number>({ max: 1000 })
  private readonly anonymous: DeviceRecord = {
    id: ANONYMOUS_DEVICE,
    publish: [`devices/${ANONYMOUS_DEVICE}/#`],
    subscribe: [`devices/${ANONYMOUS_DEVICE}/commands/#`],
    enabled: true,
  }

  constructor (private readonly o: MqttAdapterOptions) {}

  private scopeOf (client: Client): Uint8Array {
    let scope = this.scopes.get(client)
    if (scope === undefined) {
      scope = dedupScope('mqtt', client.id)
      this.scopes.set(client, scope)
    }
    return scope
  }

  address (): AddressInfo { return this.server.address() as AddressInfo }
  tlsAddress (): AddressInfo | null { return (this.tlsServer?.address() as AddressInfo | null) ?? null }
  get maxPacketSize (): number { return this.o.maxPacketSize }

  async start (): Promise<void> {
    const st = this.o.state
    this.persistence = new BrokerPersistence({
      retained: st.retained,
      maxRetained: st.maxRetained,
      maxOfflineMessages: st.maxOfflineMessages,
      now: st.now,
      onOfflineDropped: (_clientId, count) => {
        this.o.metrics.mqttOfflineDropped.inc(count)
        this.stateLog('GG_ERR_MQTT_QUEUE_DROPPED', count, { maxOfflineMessages: st.maxOfflineMessages }, 'persistent session queues passed mqtt.maxOfflineMessages; their oldest messages were dropped')
      },
      onRetainedRefused: () => this.retainedRefused(),
    })
    const opts: AedesOptions = {
      maximumPacketSize: this.o.maxPacketSize,
      persistence: this.persistence,
      // Every persistent session (MQTT 5 and, through GridgateBroker, 3.1.1) ends this long after
      // its client left; MQTT 5 clients may ask for less, never more. Whole seconds, at least 1.
      sessionExpiryIntervalLimit: Math.max(1, Math.ceil(st.sessionExpiryMs / 1000)),
      // Disconnected persistent sessions held at once; beyond it a leaving session ends at once.
      pendingSessionsLimit: st.maxSessions,
      authenticate: (client, username, password, done) => { this.authenticate(client, username, password).then(() => done(null, true), (err: AuthError) => done(err, false)) },
      authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => {
        const s = this.sessions.get(client)
        // A refused filter gets a failure return code in SUBACK (0x80 / MQTT 5 0x87), not a disconnect.
        done(null, s !== undefined && this.o.registry.canSubscribe(s.device, sub.topic) ? sub : null)
      },
    }
    const broker = new GridgateBroker(opts)
    await broker.listen()
    this.broker = broker
    this.o.metrics.setMqttSource(() => ({ retained: this.persistence.retainedCount, queuedMessages: this.persistence.queuedMessages, offlineSessions: broker.offlineSessions }))
    this.broker.on('sessionExpired', () => this.o.metrics.mqttSessionsEnded.inc({ reason: 'expired' }))
    // [MQTT-3.1.2-6] a clean session's state ends with its connection (aedes leaves QoS 2 receive state behind).
    this.broker.on('clientDisconnect', (client) => { if (client.clean) this.persistence.forgetSession(client.id) })
    this.broker.on('sessionLimitReached', (_client, info) => {
      if (info.reason !== 'sessionExpiry') return
      this.o.metrics.mqttSessionsEnded.inc({ reason: 'limit' })
      this.stateLog('GG_ERR_MQTT_SESSION_LIMIT', 1, { maxSessions: st.maxSessions }, 'mqtt.maxSessions disconnected persistent sessions are held; sessions that disconnected beyond it ended at once')
    })
    this.broker.on('clientReady', () => this.o.metrics.connections.inc({ protocol: 'mqtt' }))
    this.broker.on('clientDisconnect', (client) => { if (client.connected || this.sessions.has(client)) this.o.metrics.connections.dec({ protocol: 'mqtt' }) })
    // Device registry: a device disabled or removed while its CONNECT was being authenticated is
    // closed as soon as the broker registered it (disconnectDevice may have run before).
    this.broker.on('clientReady', (client) => {
      const s = this.sessions.get(client)
      if (s === undefined || s.device === this.anonymous) return
      const current = this.o.registry.get(s.device.id)
      if (current === undefined || !current.enabled) {
        client.disconnect({ reasonCode: ADMINISTRATIVE_ACTION })
        return
      }
      s.online = true
      this.o.presence?.connected(s.device.id, 'mqtt')
    })
    this.broker.on('clientDisconnect', (client) => {
      const s = this.sessions.get(client)
      if (s?.online !== true) return
      s.online = false
      this.o.presence?.disconnected(s.device.id, 'mqtt')
    })
    this.broker.on('clientError', (client, err) => this.o.log.debug({ clientId: client.id, err: err.message }, 'mqtt client error'))
    this.broker.on('connectionError', (_client, err) => this.o.log.debug({ err: err.message }, 'mqtt connection error'))
    this.server = net.createServer({ noDelay: true }, (socket) => this.handleStream(socket))
    await listen(this.server, this.o.port, this.o.host)
    const t = this.o.tls
    if (t !== undefined) {
      this.tlsServer = tls.createServer({
        cert: readPem('mqtt.tls.cert', t.cert),
        key: readPem('mqtt.tls.key', t.key),
        ...(t.ca === undefined ? {} : { ca: readPem('mqtt.tls.ca', t.ca) }),
        // With a CA, a client may present a certificate (its CN names the device); without
        // requireClientCert a client without one authenticates with its password as on TCP.
        requestCert: t.ca !== undefined || t.requireClientCert,
        rejectUnauthorized: t.requireClientCert,
      }, (socket) => { socket.setNoDelay(true); this.handleStream(socket) })
      this.tlsServer.on('tlsClientError', (err) => this.o.log.debug({ err: err.message }, 'mqtt tls handshake failed'))
      await listen(this.tlsServer, t.port, this.o.host)
    }
  }

  /**
   * Serves one MQTT connection over any duplex stream: TCP, TLS, or a WebSocket stream from the
   * websocket adapter (`remoteAddress` names its source in auth logs). Closed at stop like the others.
   */
  handleStream (stream: Duplex, remoteAddress?: string): void {
    stream.on('error', () => {})
    if (this.closed) { stream.destroy(); return }
    if (remoteAddress !== undefined && !(stream instanceof net.Socket)) Object.assign(stream, { remoteAddress })
    this.sockets.add(stream)
    stream.once('close', () => this.sockets.delete(stream))
    this.broker.handle(stream as net.Socket)
  }

  private async authenticate (client: Client, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const source = remoteAddress(client)
    let device: DeviceRecord | undefined
    if (username === undefined && password !== undefined) {
      // [MQTT-3.1.2-22] If the User Name Flag is 0, the Password Flag MUST be 0.
      throw this.authFailed(source, undefined, authError(4, 'GG_ERR_AUTH_FAILED'))
    }
    const certDevice = certificateDevice(client)
    if (certDevice !== undefined) {
      // A verified client certificate names the device by its CN; no password is needed, and a user
      // name that names another device is refused.
      if (username !== undefined && username !== '' && username !== certDevice) throw this.authFailed(source, username, authError(5, 'GG_ERR_AUTH_FAILED'))
      device = this.o.registry.get(certDevice)
      if (device === undefined || !device.enabled) throw this.authFailed(source, certDevice, authError(5, 'GG_ERR_AUTH_FAILED'))
    } else if (username === undefined || username === '') {
      if (!this.o.allowAnonymous) throw this.authFailed(source, undefined, authError(5, 'GG_ERR_AUTH_REQUIRED'))
      device = this.anonymous
    } else {
      device = password === undefined ? undefined : await this.o.registry.authenticate(username, password.toString('utf8'))
      if (device === undefined) throw this.authFailed(source, username, authError(4, 'GG_ERR_AUTH_FAILED'))
    }
    // The will is published in the device's name: it must lie in the device's namespace too.
    const will = (client as unknown as { _will?: { topic: string } | null })._will
    if (will?.topic !== undefined && !this.o.registry.canPublish(device, will.topic)) {
      throw this.authFailed(source, device.id, authError(5, 'GG_ERR_FORBIDDEN_TOPIC'))
    }
    // Sessions are keyed by device: one device can never take over another device's session.
    const c = client as unknown as { id: string, _assignedClientId?: string }
    c.id = brokerClientId(device.id, c.id)
    if (c._assignedClientId !== undefined) c._assignedClientId = c.id
    this.sessions.set(client, { device, abandoned: () => (client as unknown as { closed?: boolean }).closed === true })
    if (device !== this.anonymous) this.o.presence?.seen(device.id, 'mqtt')
  }

  /**
   * Closes every live session of a device (disabled or removed from the registry): MQTT 5 clients get
   * DISCONNECT 0x98 (administrative action) first. Their next CONNECT is refused. Returns the count.
   */
  disconnectDevice (deviceId: string): number {
    const clients = (this.broker as unknown as { clients: Record<string, Client> } | undefined)?.clients ?? {}
    let n = 0
    for (const client of Object.values(clients)) {
      if (this.sessions.get(client)?.device.id !== deviceId || client.closed) continue
      client.disconnect({ reasonCode: ADMINISTRATIVE_ACTION })
      n++
    }
    if (n > 0) this.o.log.info({ deviceId, sessions: n }, 'closed the live mqtt sessions of a device disabled or removed')
    return n
  }

  private authFailed (source: string, deviceId: string | undefined, err: AuthError): AuthError {
    this.o.metrics.authFailures.inc({ protocol: 'mqtt' })
    const now = Date.now()
    const last = this.authLogAt.get(source)
    if (last === undefined || now - last >= AUTH_LOG_INTERVAL) {
      this.authLogAt.set(source, now)
      this.o.log.warn({ code: (err as unknown as GridgateError).code, deviceId, source }, 'mqtt authentication refused')
    }
    return err
  }

  private authorizePublish (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const session = client === null ? undefined : this.sessions.get(client)
    if (client === null || session === undefined) return done(new GridgateError('GG_ERR_FORBIDDEN_TOPIC', 'publish without an authenticated device'))
    const violation = protocolViolation(packet)
    if (violation !== null) {
      // A "MUST close the Network Connection" rule that aedes does not enforce itself.
      this.o.log.debug({ clientId: client.id, violation }, 'mqtt protocol violation; closing the connection')
      client.conn.destroy()
      return done(new Error(violation))
    }
    const { device } = session
    const topic = packet.topic
    if (!this.o.registry.canPublish(device, topic)) {
      this.o.metrics.ingress.inc({ protocol: 'mqtt', outcome: 'refused' })
      // MQTT 3.1.1: the error closes the connection; MQTT 5: aedes answers 0x87 (not authorized).
      return done(new GridgateError('GG_ERR_FORBIDDEN_TOPIC', `${device.id} may not publish to ${topic}`))
    }
    const v5 = client.version === 5
    if (packet.retain && packet.payload.length > 0 && !this.persistence.admitsRetained(topic)) {
      // mqtt.maxRetained: MQTT 5 can refuse this one publish (0x97, nothing stored, nothing retained);
      // MQTT 3.1.1 cannot, so the message is stored and delivered as usual but not retained.
      this.retainedRefused()
      if (v5) {
        this.o.metrics.ingress.inc({ protocol: 'mqtt', outcome: 'refused' })
        return done(Object.assign(new GridgateError('GG_ERR_RETAINED_LIMIT', `${this.o.state.maxRetained} retained messages are held (mqtt.maxRetained)`), { reasonCode: ReasonCode.QUOTA_EXCEEDED }))
      }
      packet.retain = false
    }
    if (isCommandTopic(topic)) {
      // Commands go device to device through the broker; they are not events.
      this.o.metrics.ingress.inc({ protocol: 'mqtt', outcome: 'local' })
      if (device !== this.anonymous) this.o.presence?.seen(device.id, 'mqtt')
      return this.retainThenAck(packet, done)
    }
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload
    const props = (packet as { properties?: { contentType?: string, userProperties?: Record<string, string | string[]> } }).properties
    const traceparent = props?.userProperties?.traceparent
    // Counted before ingestWith, which answers a refused payload before it returns.
    this.inflight.begin()
    this.o.ingest.ingestWith({
      deviceId: device.id,
      protocol: 'mqtt',
      topic,
      payload,
      contentType: props?.contentType,
      canRefuse: v5,
      traceparent: typeof traceparent === 'string' ? traceparent : undefined,
      // Retransmissions: (broker client id, packet id, payload) within store.dedupWindow.
      dedupKey: packet.qos > 0 ? dedupKey(this.scopeOf(client), packet.messageId ?? 0) : undefined,
      dedupPayload: packet.qos > 0 ? payload : undefined,
      dedupCheck: packet.qos === 2 || packet.dup === true,
      // MQTT 3.1.1 cannot refuse one publish: while the store is full the ack is withheld up to
      // store.rejectWait, then the connection is closed without it. MQTT 5 answers 0x97 at once.
      fullWaitMs: !v5 && packet.qos > 0 ? (this.o.rejectWaitMs ?? 10_000) : 0,
      abandoned: session.abandoned,
    }, (err) => {
      if (err === null) {
        // A retained message is committed after its event: a refused event changes no retained state.
        if (device !== this.anonymous) this.o.presence?.seen(device.id, 'mqtt')
        // Its write begins before this publish ends: stop() never sees nothing under way in between.
        try {
          this.retainThenAck(packet, done)
        } finally {
          this.inflight.end()
        }
        return
      }
      this.inflight.end()
      if (!isGridgateError(err)) this.o.log.error({ err }, 'unexpected ingest failure')
      if (packet.qos === 0 && isGridgateError(err, 'GG_ERR_STORE_FULL')) {
        // QoS 0 has no ack to withhold: the message is dropped (counted), the connection stays.
        this.o.metrics.ingress.inc({ protocol: 'mqtt', outcome: 'dropped' })
        // Nothing of it is stored: not retained either.
        packet.retain = false
        return done()
      }
      // MQTT 3.1.1: the error closes the connection without an ack. MQTT 5: the reason code goes
      // into PUBACK/PUBREC (patches/aedes+2.0.0-beta.1.patch).
      done(Object.assign(err as Error, { reasonCode: reasonCodeFor(err) }))
    })
  }

  /**
   * A retained publish is acknowledged only once the retained message (or, for an empty payload, its
   * deletion) is committed too, so an acked retained message survives a restart. It shares the
   * store's group commit. Without the retain flag this is just done().
   */
  private retainThenAck (packet: PublishPacket, done: (err?: Error | null) => void): void {
    if (!packet.retain) return done()
    const p = this.persistence.persistRetained(packet)
    this.inflight.begin()
    p.then((retained) => {
      this.inflight.end()
      if (!retained) {
        // The cap was reached while this message's event committed: delivered, not retained.
        this.retainedRefused()
        packet.retain = false
      }
      done()
    }, (err: unknown) => {
      this.inflight.end()
      if (!isGridgateError(err)) this.o.log.error({ err }, 'unexpected retained-message write failure')
      done(Object.assign(err as Error, { reasonCode: reasonCodeFor(err) }))
    })
  }

  private retainedRefused (): void {
    this.o.metrics.mqttRetainedRefused.inc()
    this.stateLog('GG_ERR_RETAINED_LIMIT', 1, { maxRetained: this.o.state.maxRetained }, 'retained messages on new topics were not retained: mqtt.maxRetained is reached')
  }

  /** One warn line per code per STATE_LOG_INTERVAL, with how many occurrences it stands for. */
  private stateLog (code: string, count: number, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now()
    const s = this.stateLogAt.get(code) ?? { at: -Infinity, count: 0 }
    s.count += count
    this.stateLogAt.set(code, s)
    if (now - s.at < STATE_LOG_INTERVAL) return
    this.o.log.warn({ code, ...fields, count: s.count }, msg)
    s.at = now
    s.count = 0
  }

  async stop (): Promise<void> {
    if (this.server === undefined) return
    this.closed = true
    // Stop accepting; the close callback fires only once every open connection is gone.
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    const tlsClosed = new Promise<void>((resolve) => { if (this.tlsServer === null) resolve(); else this.tlsServer.close(() => resolve()) })
    // Publishes whose commit is under way finish and are acknowledged before connections close
    // (a retained write starts only after its event committed: wait until nothing is left).
    await this.inflight.idle()
    await new Promise<void>((resolve) => this.broker.close(() => resolve()))
    // The broker closes the clients it registered; a connection still authenticating is not one.
    for (const socket of this.sockets) socket.destroy()
    await closed
    await tlsClosed
  }
}

/** MQTT 5 reason codes for a refused publish (MQTT 5.0 §3.4.2.1). */
export const ReasonCode = {
  UNSPECIFIED_ERROR: 0x80,
  NOT_AUTHORIZED: 0x87,
  QUOTA_EXCEEDED: 0x97,
  PAYLOAD_FORMAT_INVALID: 0x99,
} as const

export function reasonCodeFor (err: unknown): number {
  if (!isGridgateError(err)) return ReasonCode.UNSPECIFIED_ERROR
  switch (err.code) {
    case 'GG_ERR_FORBIDDEN_TOPIC': return ReasonCode.NOT_AUTHORIZED
    case 'GG_ERR_PAYLOAD_INVALID': return ReasonCode.PAYLOAD_FORMAT_INVALID
    case 'GG_ERR_STORE_FULL': return ReasonCode.QUOTA_EXCEEDED
    default: return ReasonCode.UNSPECIFIED_ERROR
  }
}

/** Rules of MQTT 3.1.1/5 that aedes 2.0.0-beta.1 does not enforce on PUBLISH. */
export function protocolViolation (packet: PublishPacket): string | null {
  // [MQTT-3.3.1-2] The DUP flag MUST be 0 for all QoS 0 messages.
  if (packet.qos === 0 && packet.dup === true) return 'DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]'
  // [MQTT-2.3.1-1] QoS > 0 PUBLISH packets MUST contain a non-zero Packet Identifier.
  if (packet.qos > 0 && (packet.messageId === undefined || packet.messageId === 0)) return 'QoS > 0 PUBLISH without a packet identifier [MQTT-2.3.1-1]'
  // [MQTT-1.5.3-2] A UTF-8 encoded string MUST NOT include U+0000.
  if (packet.topic.includes('\u0000')) return 'U+0000 in the topic name [MQTT-1.5.3-2]'
  return null
}

/** A certificate or key file named by the config; a missing file is a config error, not a crash. */
export function readPem (key: string, file: string): Buffer {
  try {
    return fs.readFileSync(file)
  } catch (err) {
    throw new GridgateError('GG_ERR_CONFIG_INVALID', `${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
  }
}

/** The device a verified client certificate names (its subject CN), on TLS connections only. */
function certificateDevice (client: Client): string | undefined {
  const conn = client.conn as unknown
  if (!(conn instanceof tls.TLSSocket) || !conn.authorized) return undefined
  const cn = conn.getPeerCertificate().subject?.CN
  return typeof cn === 'string' && cn !== '' ? cn : undefined
}

function remoteAddress (client: Client): string {
  const conn = client.conn as Partial<net.Socket>
  return conn.remoteAddress ?? 'unknown'
}

export function listen (server: net.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening)
      reject(err.code === 'EADDRINUSE' || err.code === 'EACCES'
        ? new GridgateError('GG_ERR_PORT_IN_USE', `cannot listen on ${host}:${port}: ${err.code}`, { cause: err })
        : err)
    }
    const onListening = (): void => {
      server.off('error', onError)
      resolve()
    }
    server.once('error', onError)
    server.once('listening', onListening)
    server.listen(port, host)
  })
}
