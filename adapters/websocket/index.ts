// WebSocket device adapter on the shared HTTP(S) listener:
//   - `websocket.eventsPath` (/ws): JSON events. The device authenticates at the upgrade (Bearer header or
//     `?auth=<deviceId>:<secret>`); a frame carries one event or an array of them; the valid ones are
//     committed together and answered `{"ack": [{"id", "eventId"}, …]}`; each invalid one gets its own
//     `{"nack": <id>, "code", "message"}`.
//   - `websocket.mqttPath` (/mqtt): MQTT over WebSocket (subprotocol `mqtt`), fed to the MQTT adapter's
//     broker, so auth, ACL and ack semantics are the TCP ones and messages cross between transports.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocketServer, createWebSocketStream, type WebSocket, type RawData } from 'ws'
import type { Logger } from 'pino'
import { isGridgateError, type ErrorCode } from '../../gateway/errors.js'
import { isCommandTopic, type DeviceRecord } from '../../gateway/identity.js'
import { dedupKey, dedupScope, type Ingest, type IngestResult } from '../../gateway/ingest.js'
import { parseMediaType, type DecoderRegistry } from '../../gateway/decoders/index.js'
import type { Metrics } from '../../gateway/metrics.js'
import { bearerCredential, parseCredential, supportsContentType, type Credential, type DeviceAuth } from '../http/auth.js'
import { errorBody, rejectUpgrade } from '../http/index.js'

export interface WebSocketAdapterOptions {
  eventsPath: string
  mqttPath: string
  maxFrameSize: number
  maxBatch: number
  maxInflight: number
  maxBufferedBytes: number
  pingIntervalMs: number
  auth: DeviceAuth
  ingest: Ingest
  decoders: DecoderRegistry
  metrics: Metrics
  log: Logger
  /** The MQTT broker to hand MQTT-over-WebSocket streams to; null when MQTT is disabled. */
  mqtt: { handleStream (stream: Duplex, remoteAddress: string): void, maxPacketSize: number } | null
}

/** Longest client message id (characters). */
const MAX_ID = 256
/** How long a closing connection may take to finish its close handshake before it is dropped (ms). */
const CLOSE_GRACE = 1000

export interface Ack { id: string, eventId: string }
export interface Nack { id: string | null, code: ErrorCode, message: string }
export interface Answer { ack?: Ack[], nack?: Nack[] }

interface Conn {
  ws: WebSocket
  device: DeviceRecord
  inflight: number
  alive: boolean
}

type Item = { id: string, run: () => Promise<IngestResult> } | Nack

function nack (id: string | null, code: ErrorCode, message?: string): Nack {
  return { id, ...errorBody(code, message) }
}

function isJsonType (contentType: string): boolean {
  const essence = parseMediaType(contentType)?.essence
  return essence === 'application/json' || essence === 'text/json' || (essence?.endsWith('+json') ?? false)
}

export class WebSocketAdapter {
  private readonly events: WebSocketServer
  private readonly mqttWss: WebSocketServer
  private readonly conns = new Set<Conn>()
  private readonly frames = new Set<Promise<void>>()
  private timer: NodeJS.Timeout | null = null
  private stopping = false

  constructor (private readonly o: WebSocketAdapterOptions) {
    this.events = new WebSocketServer({ noServer: true, maxPayload: o.maxFrameSize, perMessageDeflate: false, clientTracking: false })
    this.mqttWss = new WebSocketServer({
      noServer: true,
      // An MQTT packet travels in one binary frame (MQTT 5.0 §6.0): allow the broker's largest packet.
      maxPayload: Math.max(o.maxFrameSize, (o.mqtt?.maxPacketSize ?? 0) + 16),
      perMessageDeflate: false,
      clientTracking: false,
      // MQTT 5.0 §6.0: the client offers "mqtt"; older clients offer "mqttv3.1".
      handleProtocols: (offered) => offered.has('mqtt') ? 'mqtt' : offered.has('mqttv3.1') ? 'mqttv3.1' : false,
    })
  }

  start (): void {
    this.timer = setInterval(() => this.keepalive(), this.o.pingIntervalMs)
    this.timer.unref()
  }

  /** The shared listener's upgrade handler. */
  handleUpgrade (req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const source = req.socket.remoteAddress ?? 'unknown'
    if (this.stopping) return rejectUpgrade(socket, 503, errorBody('GG_ERR_STORE_UNAVAILABLE', 'the gateway is stopping'), { 'Retry-After': '1' })
    if (url.pathname === this.o.mqttPath) {
      if (this.o.mqtt === null) return rejectUpgrade(socket, 404, errorBody('GG_ERR_NOT_FOUND', 'MQTT is disabled (mqtt.enabled: false)'))
      const mqtt = this.o.mqtt
      this.mqttWss.handleUpgrade(req, socket, head, (ws) => {
        const stream = createWebSocketStream(ws)
        stream.on('error', () => {})
        mqtt.handleStream(stream, source)
      })
      return
    }
    // `/ws` or `/ws/<deviceId>`; the second form must name the authenticated device (403 otherwise).
    let pathDevice: string | undefined
    if (url.pathname !== this.o.eventsPath) {
      const prefix = this.o.eventsPath.endsWith('/') ? this.o.eventsPath : `${this.o.eventsPath}/`
      if (!url.pathname.startsWith(prefix) || url.pathname.length === prefix.length || url.pathname.slice(prefix.length).includes('/')) {
        return rejectUpgrade(socket, 404, errorBody('GG_ERR_NOT_FOUND', 'no WebSocket endpoint on this path'))
      }
      pathDevice = decodeURIComponent(url.pathname.slice(prefix.length))
    }
    let cred: Credential | undefined | null = bearerCredential(req.headers.authorization)
    const query = url.searchParams.get('auth')
    if (cred === undefined && query !== null) cred = parseCredential(query) ?? null
    this.o.auth.authenticate(cred, 'ws', source).then((device) => {
      if (pathDevice !== undefined && pathDevice !== device.id) {
        return rejectUpgrade(socket, 403, errorBody('GG_ERR_FORBIDDEN_TOPIC', `the path names device ${pathDevice}, the credential ${device.id}`))
      }
      if (socket.destroyed) return
      if (this.stopping) return rejectUpgrade(socket, 503, errorBody('GG_ERR_STORE_UNAVAILABLE', 'the gateway is stopping'), { 'Retry-After': '1' })
      this.events.handleUpgrade(req, socket, head, (ws) => this.connected(ws, device))
    }, (err: unknown) => {
      const code = isGridgateError(err) ? err.code : 'GG_ERR_AUTH_FAILED'
      rejectUpgrade(socket, 401, errorBody(code), { 'WWW-Authenticate': 'Bearer' })
    })
  }

  /**
   * Closes every connection of a device disabled or removed from the registry (1008 policy violation);
   * its next upgrade is refused with 401. Returns the count.
   */
  disconnectDevice (deviceId: string): number {
    let n = 0
    for (const conn of this.conns) {
      if (conn.device.id !== deviceId || this.o.auth.isAnonymous(conn.device)) continue
      this.close(conn, 1008, 'device disabled or removed')
      n++
    }
    if (n > 0) this.o.log.info({ deviceId, connections: n }, 'closed the websocket connections of a device disabled or removed')
    return n
  }

  private connected (ws: WebSocket, device: DeviceRecord): void {
    const anonymous = this.o.auth.isAnonymous(device)
    const current = this.o.auth.registry.get(device.id)
    if (!anonymous && (current === undefined || !current.enabled)) {
      // Disabled or removed while the upgrade was under way (disconnectDevice ran before it).
      ws.on('error', () => {})
      ws.close(1008, 'device disabled or removed')
      setTimeout(() => ws.terminate(), CLOSE_GRACE).unref()
      return
    }
    const conn: Conn = { ws, device, inflight: 0, alive: true }
    this.conns.add(conn)
    this.o.metrics.connections.inc({ protocol: 'ws' })
    if (!anonymous) this.o.auth.presence?.connected(device.id, 'ws')
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes with 1009 itself when a frame exceeds maxPayload.
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.o.metrics.websocketCloses.inc({ reason: 'frame_too_large' })
      this.o.log.debug({ deviceId: device.id, err: err.message }, 'websocket error')
    })
    ws.on('pong', () => { conn.alive = true })
    ws.on('close', () => {
      this.conns.delete(conn)
      this.o.metrics.connections.dec({ protocol: 'ws' })
      if (!anonymous) this.o.auth.presence?.disconnected(device.id, 'ws')
    })
    ws.on('message', (data: RawData) => {
      conn.alive = true
      const p = this.frame(conn, data)
      this.frames.add(p)
      void p.finally(() => this.frames.delete(p))
    })
  }

  private async frame (conn: Conn, data: RawData): Promise<void> {
    let parsed: unknown
    try {
      // Some clients send their JSON in binary frames; what counts is that it parses.
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data)
      parsed = JSON.parse(bytes.toString('utf8'))
    } catch {
      this.o.metrics.ingress.inc({ protocol: 'ws', outcome: 'refused' })
      return this.answer(conn, { nack: [nack(null, 'GG_ERR_PAYLOAD_INVALID', 'a frame is one JSON text: an event object or an array of them')] })
    }
    const list = Array.isArray(parsed) ? parsed : [parsed]
    if (list.length > this.o.maxBatch) {
      this.o.metrics.ingress.inc({ protocol: 'ws', outcome: 'refused' }, list.length)
      return this.answer(conn, { nack: [nack(null, 'GG_ERR_BATCH_TOO_LARGE', `${list.length} events in one frame; websocket.maxBatch is ${this.o.maxBatch}`)] })
    }
    // Validate every item, then start every ingest in the same tick: the store's group commit takes
    // them in one transaction, in frame order.
    const items = list.map((raw) => this.item(conn.device, raw))
    const results = items.map((it) => 'run' in it ? it.run() : Promise.resolve(it))
    conn.inflight++
    // Frames beyond the cap are left unread (TCP backpressure) until commits finish.
    if (conn.inflight >= this.o.maxInflight && !conn.ws.isPaused) conn.ws.pause()
    const settled = await Promise.allSettled(results)
    conn.inflight--
    if (conn.ws.isPaused && conn.inflight < this.o.maxInflight) conn.ws.resume()
    const answer: Required<Answer> = { ack: [], nack: [] }
    for (const [i, s] of settled.entries()) {
      const it = items[i]!
      if (!('run' in it)) {
        answer.nack.push(it)
      } else if (s.status === 'fulfilled') {
        answer.ack.push({ id: it.id, eventId: (s.value as IngestResult).eventId })
        if (!this.o.auth.isAnonymous(conn.device)) this.o.auth.presence?.seen(conn.device.id, 'ws')
      } else {
        const err = s.reason as unknown
        if (!isGridgateError(err)) this.o.log.error({ err }, 'unexpected ingest failure')
        answer.nack.push(isGridgateError(err) ? nack(it.id, err.code, err.message) : nack(it.id, 'GG_ERR_INTERNAL'))
      }
    }
    this.answer(conn, answer)
  }

  /** One item of a frame: its ingest, ready to start, or the reason it is refused. */
  private item (device: DeviceRecord, raw: unknown): Item {
    const refused = (id: string | null, code: ErrorCode, message?: string): Nack => {
      this.o.metrics.ingress.inc({ protocol: 'ws', outcome: 'refused' })
      return nack(id, code, message)
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return refused(null, 'GG_ERR_PAYLOAD_INVALID', 'an event is a JSON object')
    const m = raw as Record<string, unknown>
    if (typeof m.id !== 'string' || m.id === '' || m.id.length > MAX_ID) return refused(null, 'GG_ERR_PAYLOAD_INVALID', `id must be a string of 1 to ${MAX_ID} characters`)
    const id = m.id
    if (typeof m.topic !== 'string') return refused(id, 'GG_ERR_PAYLOAD_INVALID', 'topic must be a string')
    const topic = m.topic
    if (!this.o.auth.registry.canPublish(device, topic) || isCommandTopic(topic)) return refused(id, 'GG_ERR_FORBIDDEN_TOPIC', `${device.id} may not publish to ${topic}`)
    if (m.contentType !== undefined && typeof m.contentType !== 'string') return refused(id, 'GG_ERR_PAYLOAD_INVALID', 'contentType must be a string')
    let contentType = m.contentType
    if (!supportsContentType(this.o.decoders, contentType)) return refused(id, 'GG_ERR_CONTENT_TYPE_UNSUPPORTED', `no decoder for ${String(contentType)}`)
    const hasData = 'data' in m
    const hasBase64 = 'data_base64' in m
    if (hasData === hasBase64) return refused(id, 'GG_ERR_PAYLOAD_INVALID', 'give exactly one of data and data_base64')
    let payload: Buffer
    if (hasBase64) {
      const b64 = m.data_base64
      if (typeof b64 !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return refused(id, 'GG_ERR_PAYLOAD_INVALID', 'data_base64 is not base64')
      payload = Buffer.from(b64, 'base64')
    } else if (contentType === undefined || isJsonType(contentType)) {
      // `data` is JSON already; it is stored as the JSON it is.
      payload = Buffer.from(JSON.stringify(m.data))
      contentType ??= 'application/json'
    } else if (typeof m.data === 'string') {
      payload = Buffer.from(m.data, 'utf8')
    } else {
      return refused(id, 'GG_ERR_PAYLOAD_INVALID', `data for ${contentType} must be a string (or use data_base64)`)
    }
    const traceparent = typeof m.traceparent === 'string' ? m.traceparent : undefined
    return {
      id,
      run: () => this.o.ingest.ingest({
        deviceId: device.id,
        protocol: 'ws',
        topic,
        payload,
        contentType,
        canRefuse: true,
        traceparent,
        // A resent id within store.dedupWindow gets the original ack.
        dedupKey: dedupKey(dedupScope('ws', device.id), id),
        dedupCheck: true,
      }),
    }
  }

  private answer (conn: Conn, a: Answer): void {
    const { ws } = conn
    if (ws.readyState !== ws.OPEN) return
    if (ws.bufferedAmount > this.o.maxBufferedBytes) {
      // The client does not read its answers: drop it rather than buffer without bound. Events already
      // acknowledged stay stored; a client that reconnects resends unacknowledged ids (deduplicated).
      this.o.log.warn({ deviceId: conn.device.id, bufferedBytes: ws.bufferedAmount }, 'websocket client does not read its acks; closing')
      this.o.metrics.websocketCloses.inc({ reason: 'slow_consumer' })
      this.close(conn, 1008, 'slow consumer: acks are not read')
      return
    }
    // The valid items of a frame are acknowledged together; every refused one gets its own nack.
    if ((a.ack !== undefined && a.ack.length > 0) || (a.nack ?? []).length === 0) ws.send(JSON.stringify({ ack: a.ack ?? [] }))
    for (const n of a.nack ?? []) ws.send(JSON.stringify({ nack: n.id, code: n.code, message: n.message }))
  }

  private close (conn: Conn, code: number, reason: string): void {
    conn.ws.close(code, reason)
    setTimeout(() => conn.ws.terminate(), CLOSE_GRACE).unref()
  }

  private keepalive (): void {
    for (const conn of this.conns) {
      if (!conn.alive) {
        this.o.metrics.websocketCloses.inc({ reason: 'keepalive' })
        conn.ws.terminate()
        continue
      }
      conn.alive = false
      conn.ws.ping()
    }
  }

  /** Refuses new upgrades, answers the frames whose commit is under way, then closes (1001 going away). */
  async stop (): Promise<void> {
    this.stopping = true
    if (this.timer !== null) clearInterval(this.timer)
    await Promise.allSettled([...this.frames])
    const closed = [...this.conns].map((c) => new Promise<void>((resolve) => {
      c.ws.once('close', () => resolve())
      this.close(c, 1001, 'gateway stopping')
    }))
    await Promise.all(closed)
  }
}
