// HTTP ingest, and the one HTTP(S) listener on the websocket port that WebSocket JSON and MQTT over
// WebSocket upgrade from. A POST is answered 202 only after its event committed; every error is the
// JSON shape `{ code, message }` with a GG_ERR_* code, never a framework default page.
//
//   POST /v1/devices/{id}/events/{rest…}      → topic devices/{id}/{rest}   ({id} must be the caller)
//   POST /v1.0/publish/{pubsub}/{topic…}       → topic devices/{caller}/{topic}   (Dapr-style)
//
// One request is one event: the body, whatever its type (a JSON array included), is the event's data.
import type { IncomingMessage } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { noSchemaCompilers } from '../../gateway/no-schemas.js'
import type { Logger } from 'pino'
import { ErrorCodes, GridgateError, isGridgateError, type ErrorCode } from '../../gateway/errors.js'
import { isCommandTopic, type DeviceRecord } from '../../gateway/identity.js'
import { dedupKey, dedupScope, type Ingest } from '../../gateway/ingest.js'
import { InFlight } from '../../gateway/in-flight.js'
import type { DecoderRegistry } from '../../gateway/decoders/index.js'
import type { Metrics } from '../../gateway/metrics.js'
import { readPem } from '../mqtt/index.js'
import { bearerCredential, supportsContentType, type DeviceAuth } from './auth.js'

export interface HttpAdapterOptions {
  host: string
  port: number
  /** PEM files for https:// and wss:// on this port. */
  tls?: { cert: string, key: string } | undefined
  /** Serve the ingest routes (`http.enabled`); the listener runs for WebSocket alone too. */
  ingestEnabled: boolean
  maxBodySize: number
  pubsubName: string
  auth: DeviceAuth
  ingest: Ingest
  decoders: DecoderRegistry
  metrics: Metrics
  log: Logger
  /** WebSocket upgrades; without it every upgrade is answered 404. */
  onUpgrade?: ((req: IncomingMessage, socket: Duplex, head: Buffer) => void) | undefined
}

/** Seconds a client should wait before retrying when the store refuses (503). */
export const RETRY_AFTER_SECONDS = 1
/** Longest Idempotency-Key accepted (characters). */
const MAX_IDEMPOTENCY_KEY = 256

export const STATUS: Partial<Record<ErrorCode, number>> = {
  GG_ERR_PAYLOAD_INVALID: 400,
  GG_ERR_AUTH_REQUIRED: 401,
  GG_ERR_AUTH_FAILED: 401,
  GG_ERR_FORBIDDEN_TOPIC: 403,
  GG_ERR_NOT_FOUND: 404,
  GG_ERR_METHOD_NOT_ALLOWED: 405,
  GG_ERR_PAYLOAD_TOO_LARGE: 413,
  GG_ERR_CONTENT_TYPE_UNSUPPORTED: 415,
  GG_ERR_STORE_FULL: 503,
  GG_ERR_STORE_UNAVAILABLE: 503,
  GG_ERR_STORE_COMMIT: 500,
}

export function errorBody (code: ErrorCode, message?: string): { code: ErrorCode, message: string } {
  return { code, message: message ?? ErrorCodes[code] }
}

/** A framework or parser error as one of ours. */
function toGridgateError (err: unknown): GridgateError {
  if (isGridgateError(err)) return err
  const e = err as { code?: string, statusCode?: number, message?: string }
  switch (e.statusCode) {
    case 413: return new GridgateError('GG_ERR_PAYLOAD_TOO_LARGE', undefined, { cause: err })
    case 415: return new GridgateError('GG_ERR_CONTENT_TYPE_UNSUPPORTED', undefined, { cause: err })
    case 404: return new GridgateError('GG_ERR_NOT_FOUND', 'no such route', { cause: err })
    case 405: return new GridgateError('GG_ERR_METHOD_NOT_ALLOWED', undefined, { cause: err })
  }
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new GridgateError('GG_ERR_PAYLOAD_INVALID', e.message ?? 'bad request', { cause: err })
  }
  return new GridgateError('GG_ERR_INTERNAL', undefined, { cause: err })
}

interface Authed { device?: DeviceRecord }

export class HttpAdapter {
  private app!: FastifyInstance
  private closing: Promise<void> | null = null
  private readonly inflight = new InFlight()
  private readonly upgraded = new Set<Duplex>()

  constructor (private readonly o: HttpAdapterOptions) {}

  address (): AddressInfo | null { return (this.app?.server.address() as AddressInfo | null) ?? null }

  async start (): Promise<void> {
    const o = this.o
    const options: Record<string, unknown> = {
      logger: false,
      schemaController: noSchemaCompilers,
      bodyLimit: o.maxBodySize,
      exposeHeadRoutes: false,
      // Requests that arrive while stopping are answered below in our shape, not fastify's.
      return503OnClosing: false,
      // Malformed request lines and headers: our JSON shape, not fastify's.
      clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
        if (!socket.writable) return socket.destroy()
        const body = JSON.stringify(errorBody('GG_ERR_PAYLOAD_INVALID', `malformed HTTP request: ${err.code ?? err.message}`))
        socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
      },
      frameworkErrors: (err: Error, _req: FastifyRequest, reply: FastifyReply) => {
        void reply.code(400).type('application/json').send(errorBody('GG_ERR_PAYLOAD_INVALID', err.message))
      },
    }
    if (o.tls !== undefined) options.https = { cert: readPem('websocket.tls.cert', o.tls.cert), key: readPem('websocket.tls.key', o.tls.key) }
    this.app = Fastify(options) as unknown as FastifyInstance
    const app = this.app

    // Every body arrives as bytes, whatever its type; the decoders decide what it means. Fastify
    // enforces bodyLimit on Content-Length before reading and while streaming, so nothing larger is buffered.
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })

    app.setErrorHandler((err, _req, reply) => {
      const g = toGridgateError(err)
      if (g.code === 'GG_ERR_INTERNAL') o.log.error({ err }, 'http ingest failed')
      this.sendError(reply, g)
    })
    app.setNotFoundHandler((_req, reply) => { this.sendError(reply, new GridgateError('GG_ERR_NOT_FOUND', 'no such route')) })
    app.addHook('onRequest', async (_req, reply) => {
      if (this.closing === null) return
      void reply.header('connection', 'close')
      throw new GridgateError('GG_ERR_STORE_UNAVAILABLE', 'the gateway is stopping')
    })

    if (o.ingestEnabled) this.routes(app)

    app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.upgraded.add(socket)
      socket.once('close', () => this.upgraded.delete(socket))
      socket.on('error', () => {})
      if (o.onUpgrade === undefined) return rejectUpgrade(socket, 404, errorBody('GG_ERR_NOT_FOUND', 'no WebSocket endpoint on this path'))
      o.onUpgrade(req, socket, head)
    })

    try {
      await app.listen({ host: o.host, port: o.port })
    } catch (err) {
      throw new GridgateError('GG_ERR_PORT_IN_USE', `websocket/http cannot listen on ${o.host}:${o.port}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
    }
  }

  private routes (app: FastifyInstance): void {
    const o = this.o
    // Authentication runs before the body is read: an unauthenticated body is never buffered.
    const authenticate = async (req: FastifyRequest): Promise<void> => {
      const device = await o.auth.authenticate(bearerCredential(req.headers.authorization), 'http', req.socket.remoteAddress ?? 'unknown')
      ;(req as unknown as Authed).device = device
    }
    const notAllowed = async (_req: FastifyRequest, reply: FastifyReply): Promise<void> => {
      void reply.header('allow', 'POST')
      throw new GridgateError('GG_ERR_METHOD_NOT_ALLOWED')
    }
    const others = ['GET', 'HEAD', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const

    const deviceEvents = '/v1/devices/:id/events/*'
    app.post<{ Params: { id: string, '*': string } }>(deviceEvents, { onRequest: authenticate }, async (req, reply) => {
      const device = (req as unknown as Authed).device!
      if (req.params.id !== device.id) {
        throw new GridgateError('GG_ERR_FORBIDDEN_TOPIC', `the path names device ${req.params.id}, the credential ${device.id}`)
      }
      return this.publish(req, reply, device, req.params['*'])
    })
    app.route({ method: [...others], url: deviceEvents, handler: notAllowed })

    const dapr = '/v1.0/publish/:pubsub/*'
    app.post<{ Params: { pubsub: string, '*': string } }>(dapr, {
      // An unknown pub/sub name is 404 whoever asks, before the credential is checked.
      onRequest: async (req) => {
        const { pubsub } = req.params as { pubsub: string }
        if (pubsub !== o.pubsubName) throw new GridgateError('GG_ERR_NOT_FOUND', `no pub/sub component named ${pubsub}`)
        await authenticate(req)
      },
    }, async (req, reply) => this.publish(req, reply, (req as unknown as Authed).device!, req.params['*']))
    app.route({ method: [...others], url: dapr, handler: notAllowed })
  }

  private async publish (req: FastifyRequest, reply: FastifyReply, device: DeviceRecord, rest: string): Promise<unknown> {
    const o = this.o
    if (rest === '') throw new GridgateError('GG_ERR_NOT_FOUND', 'the path names no topic')
    const topic = `devices/${device.id}/${rest}`
    if (!o.auth.registry.canPublish(device, topic) || isCommandTopic(topic)) {
      o.metrics.ingress.inc({ protocol: 'http', outcome: 'refused' })
      throw new GridgateError('GG_ERR_FORBIDDEN_TOPIC', `${device.id} may not publish to ${topic}`)
    }
    const contentType = req.headers['content-type']
    if (!supportsContentType(o.decoders, contentType)) {
      o.metrics.ingress.inc({ protocol: 'http', outcome: 'refused' })
      throw new GridgateError('GG_ERR_CONTENT_TYPE_UNSUPPORTED', `no decoder for ${contentType ?? ''}`)
    }
    const idem = header(req, 'idempotency-key')
    if (idem !== undefined && (idem === '' || idem.length > MAX_IDEMPOTENCY_KEY)) {
      throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `Idempotency-Key must be 1 to ${MAX_IDEMPOTENCY_KEY} characters`)
    }
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)
    const p = o.ingest.ingest({
      deviceId: device.id,
      protocol: 'http',
      topic,
      payload: body,
      contentType,
      canRefuse: true,
      traceparent: header(req, 'traceparent'),
      // The same key within store.dedupWindow gets the first answer; kept with the event, so it survives restarts.
      dedupKey: idem === undefined ? undefined : dedupKey(dedupScope('http', device.id), idem),
      dedupCheck: idem !== undefined,
    })
    this.inflight.begin()
    try {
      const r = await p
      return await reply.code(202).send({ ids: [r.eventId] })
    } finally {
      this.inflight.end()
    }
  }

  private sendError (reply: FastifyReply, err: GridgateError): void {
    const status = STATUS[err.code] ?? 500
    if (status === 401) void reply.header('www-authenticate', 'Bearer')
    if (status === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS))
    void reply.code(status).type('application/json').send(errorBody(err.code, err.message))
  }

  /** Stops accepting and lets requests whose commit is under way answer. */
  async stopAccepting (): Promise<void> {
    if (this.app === undefined) return
    this.closing ??= this.app.close()
    await this.inflight.idle()
  }

  /** Closes whatever upgraded connection is left and waits for the listener to close. */
  async stop (): Promise<void> {
    if (this.app === undefined) return
    this.closing ??= this.app.close()
    for (const s of this.upgraded) s.destroy()
    await this.closing
  }
}

function header (req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Refuses an upgrade with an HTTP answer in our JSON shape, before any WebSocket frame. */
export function rejectUpgrade (socket: Duplex, status: number, body: { code: string, message: string }, headers: Record<string, string> = {}): void {
  const reason: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 503: 'Service Unavailable' }
  const text = JSON.stringify(body)
  const lines = [
    `HTTP/1.1 ${status} ${reason[status] ?? 'Error'}`,
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(text)}`,
    'Connection: close',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ]
  if (socket.writable) socket.end(`${lines.join('\r\n')}\r\n\r\n${text}`)
  else socket.destroy()
}
