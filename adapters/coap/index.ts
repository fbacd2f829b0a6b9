// CoAP device adapter (RFC 7252) on UDP. A device POSTs or PUTs an event to the URI path that is its
// topic (`/devices/sensor-1/temp` → `devices/sensor-1/temp`) with `?auth=<deviceId>:<secret>`; the
// 2.04 Changed is sent only after the event committed: piggybacked in the ACK when the commit is
// quick, otherwise an empty ACK first and a separate confirmable 2.04 once committed.
//
// The datagrams are parsed and generated with coap-packet (node `coap`'s codec); the exchange layer is
// the adapter's own rather than node `coap`'s server, because every part of that server's pipeline
// gridgate depends on had to be replaced: its response cache keeps every response ~247 s whatever its
// size cap says (100k requests → ~570 MB), it reassembles Block1 by token (libcoap uses a new token per
// block), and its piggyback timer does not know about commits. Here everything that lives between
// datagrams is bounded: the message-ID dedup LRU (TTL store.dedupWindow), Block1 uploads (count, size,
// age), separate responses awaiting their ACK, and the auth-failure log limiter.
import dgram from 'node:dgram'
import type { AddressInfo } from 'node:net'
import { randomInt } from 'node:crypto'
import { generate, parse, type ParsedPacket, type Option } from 'coap-packet'
import { encodeBare, type MessageType } from './encode.js'
import type { Logger } from 'pino'
import { LRUCache } from 'lru-cache'
import { GridgateError, isGridgateError, type ErrorCode } from '../../gateway/errors.js'
import { isCommandTopic, type DeviceRecord, type DeviceRegistry } from '../../gateway/identity.js'
import { dedupKey, dedupScope, type Ingest } from '../../gateway/ingest.js'
import { InFlight } from '../../gateway/in-flight.js'
import { parseMediaType, type DecoderRegistry } from '../../gateway/decoders/index.js'
import type { Metrics } from '../../gateway/metrics.js'
import type { Presence } from '../../gateway/devices.js'
import { ANONYMOUS_DEVICE, type DeviceAdapter } from '../mqtt/index.js'
import { Block1Reassembly, encodeBlock, parseBlock, type BlockOption } from './blockwise.js'
import { CONTENT_FORMATS, LINK_FORMAT, mediaTypeOf } from './content-format.js'

export interface CoapAdapterOptions {
  host: string
  port: number
  maxPayloadSize: number
  maxBlockwiseTransfers: number
  maxBlockwisePerEndpoint: number
  blockwiseTimeoutMs: number
  /** store.dedupWindow: how long a message ID's outcome is remembered. */
  dedupWindowMs: number
  allowAnonymous: boolean
  registry: DeviceRegistry
  ingest: Ingest
  /** The registry Ingest decodes with: a Content-Format without a decoder there is 4.15. */
  decoders: DecoderRegistry
  metrics: Metrics
  log: Logger
  /** How long a CON request waits for its commit before the empty ACK goes out (ms). */
  piggybackMs?: number
  /** Last seen per device (GET /api/v1/devices), updated on every successful authentication. */
  presence?: Pick<Presence, 'seen'> | undefined
}

/** How often one source address may produce an auth-failure log line (ms). */
const AUTH_LOG_INTERVAL = 10_000
/**
 * Message IDs remembered at once (endpoint and MID; ~0.4 KiB each). A retransmission comes within
 * MAX_TRANSMIT_SPAN (45 s, RFC 7252 §4.8.2); one whose entry was evicted is still stored only once,
 * by the dedup key committed with the event.
 */
const DEDUP_ENTRIES = 20_000
/** Separate responses awaiting the device's ACK at once; beyond that they are sent once, unretried. */
const MAX_PENDING_SEPARATE = 10_000
/** Seconds a device should wait before retrying when the store refuses (Max-Age of a 5.03). */
const RETRY_AFTER_S = 5
const DEFAULT_PIGGYBACK_MS = 200
// RFC 7252 §4.8 transmission parameters for the separate response.
const ACK_TIMEOUT_MS = 2000
const ACK_RANDOM_FACTOR = 1.5
const MAX_RETRANSMIT = 4

const OPT_REQUEST_TAG = 292
/** Critical options (odd numbers, RFC 7252 §5.4.1) the adapter understands; any other is 4.02. */
const KNOWN_CRITICAL = new Set(['If-Match', 'Uri-Host', 'If-None-Match', 'Uri-Port', 'Uri-Path', 'Uri-Query', 'Accept', 'Block2', 'Block1'])
const WELL_KNOWN_CORE = '.well-known/core'

type Reply = { code: string, options?: Option[], payload?: Buffer }

interface Exchange {
  /** The reply a duplicate of this request gets (as an ACK for CON); null while the request is processed. */
  reply: Buffer | null
  /** The empty ACK went out: a duplicate CON while pending gets it again. */
  emptyAcked: boolean
}

interface PendingSeparate {
  buf: Buffer
  timer: NodeJS.Timeout
  tries: number
}

/** A request as the adapter sees it after parsing. */
interface Request {
  packet: ParsedPacket
  endpoint: string
  /** The exchange's key in the message-ID table. */
  key: string
  address: string
  port: number
  exchange: Exchange
  path: string[]
  query: string[]
}

const errorReply = (code: string, gg: ErrorCode, extra: Option[] = []): Reply => ({ code, options: extra, payload: Buffer.from(gg) })

/** Receive buffer asked for on the CoAP socket (the kernel doubles it for bookkeeping and caps it). */
const RECV_BUFFER_BYTES = 4 * 1024 * 1024
/** Endpoints whose dedup scope is kept hashed. */
const MAX_SCOPES = 4096

export class CoapAdapter implements DeviceAdapter {
  private socket: dgram.Socket | null = null
  private accepting = false
  private readonly exchanges: LRUCache<string, Exchange>
  private readonly separate = new Map<string, PendingSeparate>()
  private readonly inflight = new InFlight()
  private readonly scopes = new Map<string, Uint8Array>()
  /** Datagrams handed to the socket and not yet sent: closing the socket would cancel them, so stop() waits. */
  private unsent = 0
  private onSent: (() => void) | null = null
  // One callback for every send: a promise per datagram cost more than encoding it.
  private readonly sent = (): void => {
    if (--this.unsent === 0) this.onSent?.()
  }
  private readonly blocks: Block1Reassembly
  private readonly authLogAt = new LRUCache<string, number>({ max: 1000 })
  private nextMid = randomInt(0x10000)
  private readonly piggybackMs: number
  private readonly anonymous: DeviceRecord = {
    id: ANONYMOUS_DEVICE,
    publish: [`devices/${ANONYMOUS_DEVICE}/#`],
    subscribe: [`devices/${ANONYMOUS_DEVICE}/commands/#`],
    enabled: true,
  }

  constructor (private readonly o: CoapAdapterOptions) {
    this.exchanges = new LRUCache({ max: DEDUP_ENTRIES, ttl: Math.max(1, o.dedupWindowMs), ttlAutopurge: false })
    this.blocks = new Block1Reassembly({
      maxPayloadSize: o.maxPayloadSize,
      maxTransfers: o.maxBlockwiseTransfers,
      maxPerEndpoint: o.maxBlockwisePerEndpoint,
      timeoutMs: o.blockwiseTimeoutMs,
    })
    this.piggybackMs = o.piggybackMs ?? DEFAULT_PIGGYBACK_MS
  }

  address (): AddressInfo | null { return this.socket?.address() ?? null }

  /** Internal state sizes, for tests and the memory script. */
  stats (): { exchanges: number, separate: number, blockwise: number } {
    return { exchanges: this.exchanges.size, separate: this.separate.size, blockwise: this.blocks.size }
  }

  /** An endpoint's dedup scope, hashed once while it keeps sending (bounded: cleared when full). */
  private scopeOf (endpoint: string): Uint8Array {
    let scope = this.scopes.get(endpoint)
    if (scope === undefined) {
      if (this.scopes.size >= MAX_SCOPES) this.scopes.clear()
      scope = dedupScope('coap', endpoint)
      this.scopes.set(endpoint, scope)
    }
    return scope
  }

  async start (): Promise<void> {
    const socket = dgram.createSocket({ type: this.o.host.includes(':') ? 'udp6' : 'udp4' })
    socket.on('message', (msg, rinfo) => {
      try {
        this.onDatagram(msg, rinfo)
      } catch (err) {
        this.o.log.error({ err }, 'coap datagram handling failed')
      }
    })
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(err.code === 'EADDRINUSE' || err.code === 'EACCES'
          ? new GridgateError('GG_ERR_PORT_IN_USE', `coap cannot listen on ${this.o.host}:${this.o.port}: ${err.code}`, { cause: err })
          : err)
      }
      socket.once('error', onError)
      socket.bind(this.o.port, this.o.host, () => {
        socket.off('error', onError)
        resolve()
      })
    })
    socket.on('error', (err) => this.o.log.warn({ err: err.message }, 'coap socket error'))
    // The kernel's default receive buffer (net.core.rmem_default, 208 KiB here) holds about 90 small
    // datagrams: a few hundred confirmable requests in flight overflow it while a commit is under way,
    // and every datagram lost costs its device a 2 s retransmission. Linux caps this at
    // net.core.rmem_max without an error; the size granted is logged.
    try {
      socket.setRecvBufferSize(RECV_BUFFER_BYTES)
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'coap: could not enlarge the socket receive buffer')
    }
    this.o.log.debug({ recvBufferBytes: socket.getRecvBufferSize() }, 'coap socket receive buffer')
    this.socket = socket
    this.accepting = true
  }

  async stop (): Promise<void> {
    if (this.socket === null) return
    // Stop accepting; requests whose commit is under way finish and get their response.
    this.accepting = false
    await this.inflight.idle()
    for (const p of this.separate.values()) clearTimeout(p.timer)
    this.separate.clear()
    this.blocks.clear()
    this.exchanges.clear()
    if (this.unsent > 0) await new Promise<void>((resolve) => { this.onSent = resolve })
    const socket = this.socket
    this.socket = null
    await new Promise<void>((resolve) => socket.close(() => resolve()))
  }

  private send (buf: Buffer, address: string, port: number): void {
    if (this.socket === null) return
    this.unsent++
    this.socket.send(buf, port, address, this.sent)
  }

  private onDatagram (msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const endpoint = `${rinfo.address}:${rinfo.port}`
    let packet: ParsedPacket
    try {
      packet = parse(msg)
    } catch {
      // A message format error: a CON is rejected with a Reset, anything else ignored (RFC 7252 §4.2/4.3).
      if (msg.length >= 4 && (msg[0]! >> 6) === 1 && (msg[0]! & 0x30) === 0) this.send(generate({ reset: true, code: '0.00', messageId: msg.readUInt16BE(2), token: Buffer.alloc(0) }), rinfo.address, rinfo.port)
      return
    }
    if (packet.ack || packet.reset) {
      // The device acknowledged (or rejected) a separate response.
      const key = `${endpoint}/${packet.messageId}`
      const p = this.separate.get(key)
      if (p !== undefined) {
        clearTimeout(p.timer)
        this.separate.delete(key)
      }
      return
    }
    if (packet.code === '0.00' || !packet.code.startsWith('0.')) {
      // A CoAP ping (empty CON) or a response sent to a server: Reset (RFC 7252 §4.3).
      if (packet.confirmable) this.send(generate({ reset: true, code: '0.00', messageId: packet.messageId, token: Buffer.alloc(0) }), rinfo.address, rinfo.port)
      return
    }
    if (!this.accepting) return
    const xkey = `${endpoint}/${packet.messageId}`
    const seen = this.exchanges.get(xkey)
    if (seen !== undefined) {
      // A retransmission: the original outcome, never a second event (DESIGN.md "Deduplication at ingest").
      this.o.metrics.dedupHits.inc({ protocol: 'coap' })
      if (!packet.confirmable) return
      if (seen.reply !== null) this.send(seen.reply, rinfo.address, rinfo.port)
      else if (seen.emptyAcked) this.send(generate({ ack: true, code: '0.00', messageId: packet.messageId, token: Buffer.alloc(0) }), rinfo.address, rinfo.port)
      return
    }
    const exchange: Exchange = { reply: null, emptyAcked: false }
    this.exchanges.set(xkey, exchange)
    const path: string[] = []
    const query: string[] = []
    for (const o of packet.options) {
      if (o.name === 'Uri-Path') path.push(o.value.toString('utf8'))
      else if (o.name === 'Uri-Query') query.push(o.value.toString('utf8'))
    }
    const req: Request = { packet, endpoint, key: xkey, address: rinfo.address, port: rinfo.port, exchange, path, query }
    const bad = packet.options.find(o => isCritical(o.name) && !KNOWN_CRITICAL.has(String(o.name)))
    if (bad !== undefined) return this.respond(req, { code: '4.02', payload: Buffer.from(`unsupported critical option ${String(bad.name)}`) })
    const p = this.handle(req).then((reply) => this.respond(req, reply), (err: unknown) => {
      this.o.log.error({ err }, 'unexpected coap request failure')
      this.respond(req, errorReply('5.00', 'GG_ERR_INTERNAL'))
    })
    this.inflight.begin()
    void p.finally(() => this.inflight.end())
    if (packet.confirmable) {
      const timer = setTimeout(() => {
        if (exchange.reply !== null) return
        exchange.emptyAcked = true
        this.send(generate({ ack: true, code: '0.00', messageId: packet.messageId, token: Buffer.alloc(0) }), rinfo.address, rinfo.port)
      }, this.piggybackMs)
      void p.finally(() => clearTimeout(timer))
    }
  }

  private async handle (req: Request): Promise<Reply | null> {
    const { packet } = req
    const joined = req.path.join('/')
    if (joined === WELL_KNOWN_CORE) {
      if (packet.code !== '0.01') return { code: '4.05', payload: Buffer.from('only GET') }
      return { code: '2.05', options: [{ name: 'Content-Format', value: uint(LINK_FORMAT) }], payload: Buffer.from(this.linkFormat()) }
    }
    // Every other path is a topic; events are created with POST or PUT.
    if (packet.code !== '0.02' && packet.code !== '0.03') return { code: '4.05', payload: Buffer.from('POST or PUT an event') }

    const device = await this.authenticate(req)
    if (isGridgateError(device)) return errorReply('4.01', device.code)
    const topic = joined
    if (!this.o.registry.canPublish(device, topic) || isCommandTopic(topic)) {
      // Command topics go device to device over MQTT; they are never events.
      return this.refused({ code: '4.03', payload: Buffer.from('GG_ERR_FORBIDDEN_TOPIC') })
    }
    const cfOption = packet.options.find(o => o.name === 'Content-Format')
    const contentFormat = cfOption === undefined ? undefined : readUint(cfOption.value)
    let contentType: string | undefined
    if (contentFormat !== undefined) {
      contentType = mediaTypeOf(contentFormat)
      const essence = contentType === undefined ? undefined : parseMediaType(contentType)?.essence
      if (essence === undefined || this.o.decoders.decoderFor(essence) === undefined) {
        return this.refused({ code: '4.15', payload: Buffer.from(`Content-Format ${contentFormat} is not supported`) })
      }
    }
    const tooLarge = (): Reply => this.refused({ code: '4.13', options: [{ name: 'Size1', value: uint(this.o.maxPayloadSize) }], payload: Buffer.from(`at most ${this.o.maxPayloadSize} bytes`) })
    let payload = packet.payload
    let block1: BlockOption | undefined
    const block1Option = packet.options.find(o => o.name === 'Block1')
    if (block1Option !== undefined) {
      block1 = parseBlock(block1Option.value)
      if (block1 === undefined) return this.refused({ code: '4.00', payload: Buffer.from('malformed Block1 option') })
      const tag = packet.options.find(o => o.name === String(OPT_REQUEST_TAG))?.value.toString('hex') ?? ''
      const size1Option = packet.options.find(o => o.name === 'Size1')
      const size1 = size1Option === undefined ? undefined : readUint(size1Option.value)
      const r = this.blocks.add(req.endpoint, `${req.endpoint}\u0000${device.id}\u0000${packet.code}\u0000${topic}\u0000${tag}`, block1, payload, contentFormat, size1)
      const echo: Option = { name: 'Block1', value: encodeBlock(block1) }
      switch (r.kind) {
        case 'continue': return { code: '2.31', options: [echo] }
        case 'too-large': return tooLarge()
        case 'incomplete': return this.refused({ code: '4.08', payload: Buffer.from(r.reason) })
        case 'bad': return this.refused({ code: '4.00', payload: Buffer.from(r.reason) })
        case 'busy': return this.refused({ code: '5.03', options: [{ name: 'Max-Age', value: uint(RETRY_AFTER_S) }], payload: Buffer.from('too many blockwise uploads at once') })
        case 'complete': payload = r.payload
      }
    }
    if (payload.length > this.o.maxPayloadSize) return tooLarge()

    try {
      const p = this.o.ingest.ingest({
        deviceId: device.id,
        protocol: 'coap',
        topic,
        payload,
        contentType,
        canRefuse: true,
        // Retransmissions after a restart or beyond the LRU: (endpoint, message ID, payload) in the store.
        dedupKey: dedupKey(this.scopeOf(req.endpoint), packet.messageId),
        dedupPayload: payload,
        dedupCheck: packet.confirmable,
      })
      await p
      return { code: '2.04', options: block1 === undefined ? [] : [{ name: 'Block1', value: encodeBlock(block1) }] }
    } catch (err) {
      if (!isGridgateError(err)) {
        this.o.log.error({ err }, 'unexpected ingest failure')
        return errorReply('5.00', 'GG_ERR_INTERNAL')
      }
      switch (err.code) {
        case 'GG_ERR_PAYLOAD_INVALID': return errorReply('4.00', err.code)
        case 'GG_ERR_STORE_FULL':
        case 'GG_ERR_STORE_UNAVAILABLE':
        case 'GG_ERR_STORE_COMMIT':
          return errorReply('5.03', err.code, [{ name: 'Max-Age', value: uint(RETRY_AFTER_S) }])
        default: return errorReply('5.00', err.code)
      }
    }
  }

  private refused (reply: Reply): Reply {
    this.o.metrics.ingress.inc({ protocol: 'coap', outcome: 'refused' })
    return reply
  }

  private async authenticate (req: Request): Promise<DeviceRecord | GridgateError> {
    const auth = req.query.find(q => q.startsWith('auth='))?.slice(5)
    if (auth === undefined || auth === '') {
      if (this.o.allowAnonymous) return this.anonymous
      return this.authFailed(req.address, undefined, 'GG_ERR_AUTH_REQUIRED')
    }
    const colon = auth.indexOf(':')
    const id = colon === -1 ? auth : auth.slice(0, colon)
    const device = colon === -1 ? undefined : await this.o.registry.authenticate(id, auth.slice(colon + 1))
    if (device !== undefined) this.o.presence?.seen(device.id, 'coap')
    return device ?? this.authFailed(req.address, id, 'GG_ERR_AUTH_FAILED')
  }

  private authFailed (source: string, deviceId: string | undefined, code: ErrorCode): GridgateError {
    this.o.metrics.authFailures.inc({ protocol: 'coap' })
    this.o.metrics.ingress.inc({ protocol: 'coap', outcome: 'refused' })
    const now = Date.now()
    const last = this.authLogAt.get(source)
    if (last === undefined || now - last >= AUTH_LOG_INTERVAL) {
      this.authLogAt.set(source, now)
      this.o.log.warn({ code, deviceId, source }, 'coap authentication refused')
    }
    return new GridgateError(code)
  }

  /** Sends the outcome: piggybacked in the ACK, as a separate CON after an empty ACK, or as NON. */
  private respond (req: Request, reply: Reply | null): void {
    const { packet, exchange } = req
    if (reply === null || this.socket === null) return
    // After a server error (the store refused), a retransmission is processed again, so it can be
    // stored (DESIGN.md "Deduplication at ingest": if the first commit failed, the retry is stored).
    if (reply.code.startsWith('5.') && this.exchanges.get(req.key) === exchange) this.exchanges.delete(req.key)
    const base = { code: reply.code, token: packet.token, options: reply.options ?? [], payload: reply.payload ?? Buffer.alloc(0) }
    const encode = (type: MessageType, messageId: number): Buffer =>
      (base.options.length === 0 ? encodeBare(type, base.code, messageId, base.token, base.payload) : null) ??
      generate({ ...base, messageId, ack: type === 'ack', confirmable: type === 'con', reset: type === 'reset' })
    // The reply a retransmission of this request gets: the outcome piggybacked in an ACK.
    const asAck = encode('ack', packet.messageId)
    if (!packet.confirmable) {
      exchange.reply = asAck
      // NON requests are stored without a reply; an error is worth a NON response (RFC 7252 §5.2.3).
      if (!reply.code.startsWith('2.')) this.send(encode('non', this.mid()), req.address, req.port)
      return
    }
    if (!exchange.emptyAcked) {
      exchange.reply = asAck
      this.send(asAck, req.address, req.port)
      return
    }
    exchange.reply = asAck
    const mid = this.mid()
    const buf = encode('con', mid)
    this.send(buf, req.address, req.port)
    if (this.separate.size >= MAX_PENDING_SEPARATE) return
    const key = `${req.endpoint}/${mid}`
    const pending: PendingSeparate = { buf, tries: 0, timer: undefined as unknown as NodeJS.Timeout }
    const schedule = (ms: number): void => {
      pending.timer = setTimeout(() => {
        if (this.separate.get(key) !== pending) return
        if (pending.tries >= MAX_RETRANSMIT) { this.separate.delete(key); return }
        pending.tries++
        this.send(buf, req.address, req.port)
        schedule(ms * 2)
      }, ms)
      pending.timer.unref()
    }
    const old = this.separate.get(key)
    if (old !== undefined) clearTimeout(old.timer)
    this.separate.set(key, pending)
    schedule(ACK_TIMEOUT_MS * (1 + Math.random() * (ACK_RANDOM_FACTOR - 1)))
  }

  private mid (): number {
    this.nextMid = (this.nextMid + 1) & 0xffff
    return this.nextMid
  }

  /** /.well-known/core (RFC 6690): where events go and which Content-Formats are decoded. */
  private linkFormat (): string {
    const formats = [...CONTENT_FORMATS.entries()]
      .filter(([, type]) => { const e = parseMediaType(type)?.essence; return e !== undefined && this.o.decoders.decoderFor(e) !== undefined })
      .map(([n]) => n)
    return `</devices>;rt="gridgate.events";title="POST or PUT /devices/<id>/<topic>?auth=<id>:<secret>";ct="${formats.join(' ')}";sz=${this.o.maxPayloadSize}`
  }
}

function isCritical (name: string | number): boolean {
  const n = typeof name === 'number' ? name : /^\d+$/.test(name) ? Number(name) : NaN
  // Named options are the registered ones; their criticality is checked against KNOWN_CRITICAL by name.
  if (Number.isNaN(n)) return CRITICAL_BY_NAME.has(String(name))
  return (n & 1) === 1
}

const CRITICAL_BY_NAME = new Set(['If-Match', 'Uri-Host', 'If-None-Match', 'Uri-Port', 'Uri-Path', 'OSCORE', 'Uri-Query', 'Accept', 'Q-Block1', 'Block2', 'Block1', 'Q-Block2', 'Proxy-Uri', 'Proxy-Scheme'])

function readUint (b: Buffer): number {
  let n = 0
  for (const x of b) n = n * 256 + x
  return n
}

function uint (n: number): Buffer {
  if (n === 0) return Buffer.alloc(0)
  const bytes: number[] = []
  while (n > 0) { bytes.unshift(n & 0xff); n = Math.floor(n / 256) }
  return Buffer.from(bytes)
}
