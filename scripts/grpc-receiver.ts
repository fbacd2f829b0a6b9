// A reference receiver for gridgate's gRPC uplink: implements gridgate.v1.EventIngest/Publish
// (gateway/proto/ingest.proto) and prints every received CloudEvent as one JSON line on stdout
// (structured CloudEvents JSON, the same shape the HTTP uplink sends). Copy it to start your cloud side.
//
//   node dist/scripts/grpc-receiver.js --port 50051 [--host 0.0.0.0] [--token SECRET]
//        [--tls-cert server.pem --tls-key server-key.pem [--tls-ca clients-ca.pem]]
//
// --token requires metadata `authorization: Bearer SECRET` (else UNAUTHENTICATED). With --tls-ca the
// receiver requires a client certificate signed by that CA (mutual TLS). Logs go to stderr.
import fs from 'node:fs'
import path from 'node:path'
import { timingSafeEqual } from 'node:crypto'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { decodeEvent, renderJson } from '../gateway/event.js'
import { PUBLISH_PATH, decodeRawBatch, encodePublishResponse } from '../adapters/uplink-grpc/schema.js'

export interface ReceivedCloudEvent { [k: string]: unknown, id: string, sequence: string, storeid: string }

export type GrpcAnswer = { code: grpc.status, details?: string, pushbackMs?: number } | 'hang'

export interface GrpcReceiverOptions {
  host?: string
  /** 0 picks a free port. */
  port?: number
  /** PEM texts; ca makes client certificates mandatory. */
  tls?: { cert: string | Buffer, key: string | Buffer, ca?: string | Buffer }
  /** When set, calls must carry `authorization: Bearer <token>`. */
  token?: string
  /** Largest request accepted (bytes); grpc-js answers RESOURCE_EXHAUSTED above it. */
  maxMessageBytes?: number
  /** Called with every batch answered OK, in arrival order. */
  onEvents?: (events: ReceivedCloudEvent[]) => void
  /** Keep events (and calls) in memory for inspection; default true. A long-running receiver turns it off. */
  keep?: boolean
}

export interface GrpcReceiver {
  port: number
  address: string
  /** Events from calls answered OK, in arrival order. */
  events: ReceivedCloudEvent[]
  calls: Array<{ metadata: Record<string, string>, count: number, code: grpc.status }>
  /** Decides the answer to a well-formed, authorized call; default OK. */
  respond: (events: ReceivedCloudEvent[], metadata: grpc.Metadata) => GrpcAnswer
  token: string | undefined
  close (): Promise<void>
}

function tokenMatches (header: unknown, token: string): boolean {
  if (typeof header !== 'string') return false
  const a = Buffer.from(header)
  const b = Buffer.from(`Bearer ${token}`)
  return a.length === b.length && timingSafeEqual(a, b)
}

/** Decodes a request: each event as structured CloudEvents JSON (storeid and sequence included). */
export function decodeBatch (bytes: Uint8Array): ReceivedCloudEvent[] {
  return decodeRawBatch(bytes).map((body) => {
    const ev = decodeEvent(body)
    const storeId = ev.extensions['storeid'] ?? ''
    const seq = Number(ev.extensions['sequence'] ?? '0')
    return JSON.parse(renderJson(ev, storeId, seq)) as ReceivedCloudEvent
  })
}

export async function startGrpcReceiver (opts: GrpcReceiverOptions = {}): Promise<GrpcReceiver> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': opts.maxMessageBytes ?? 64 * 1024 * 1024,
  })
  const r: GrpcReceiver = {
    port: 0,
    address: '',
    events: [],
    calls: [],
    respond: () => ({ code: grpc.status.OK }),
    token: opts.token,
    close: async () => {},
  }
  const identity = (b: Buffer): Buffer => b
  const definition: grpc.ServiceDefinition = {
    Publish: {
      path: PUBLISH_PATH,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  }
  const publish: grpc.handleUnaryCall<Buffer, Buffer> = (call, callback) => {
    const metadata: Record<string, string> = {}
    for (const [k, v] of Object.entries(call.metadata.getMap())) metadata[k] = String(v)
    const fail = (code: grpc.status, details: string, count = 0): void => {
      if (opts.keep !== false) r.calls.push({ metadata, count, code })
      callback({ code, details })
    }
    if (r.token !== undefined && !tokenMatches(call.metadata.get('authorization')[0], r.token)) {
      fail(grpc.status.UNAUTHENTICATED, 'missing or wrong bearer token')
      return
    }
    let events: ReceivedCloudEvent[]
    try {
      events = decodeBatch(call.request)
    } catch (err) {
      fail(grpc.status.INVALID_ARGUMENT, `not a CloudEventBatch: ${(err as Error).message}`)
      return
    }
    const answer = r.respond(events, call.metadata)
    if (answer === 'hang') return
    if (answer.code !== grpc.status.OK) {
      r.calls.push({ metadata, count: events.length, code: answer.code })
      const trailer = new grpc.Metadata()
      if (answer.pushbackMs !== undefined) trailer.set('grpc-retry-pushback-ms', String(answer.pushbackMs))
      callback({ code: answer.code, details: answer.details ?? grpc.status[answer.code] ?? '', metadata: trailer })
      return
    }
    if (opts.keep !== false) {
      r.calls.push({ metadata, count: events.length, code: grpc.status.OK })
      r.events.push(...events)
    }
    opts.onEvents?.(events)
    callback(null, encodePublishResponse(events.length))
  }
  server.addService(definition, { Publish: publish })
  const credentials = opts.tls === undefined
    ? grpc.ServerCredentials.createInsecure()
    : grpc.ServerCredentials.createSsl(
      opts.tls.ca === undefined ? null : Buffer.from(opts.tls.ca),
      [{ cert_chain: Buffer.from(opts.tls.cert), private_key: Buffer.from(opts.tls.key) }],
      opts.tls.ca !== undefined)
  const host = opts.host ?? '127.0.0.1'
  r.port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${opts.port ?? 0}`, credentials, (err, port) => err === null ? resolve(port) : reject(err))
  })
  r.address = `${host.includes(':') ? `[${host}]` : host}:${r.port}`
  r.close = () => new Promise<void>((resolve) => {
    // Calls left hanging would hold a graceful shutdown forever.
    server.forceShutdown()
    resolve()
  })
  return r
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '0.0.0.0' },
      port: { type: 'string', default: '50051' },
      token: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help === true) {
    process.stdout.write('usage: grpc-receiver [--host H] [--port P] [--token T] [--tls-cert F --tls-key F [--tls-ca F]]\n')
    return
  }
  const cert = values['tls-cert']
  const key = values['tls-key']
  if ((cert === undefined) !== (key === undefined)) throw new Error('--tls-cert and --tls-key go together')
  const ca = values['tls-ca']
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: expected 0..65535, got ${values.port}`)
  const rx = await startGrpcReceiver({
    host: values.host,
    port,
    ...(values.token === undefined ? {} : { token: values.token }),
    ...(cert === undefined || key === undefined
      ? {}
      : { tls: { cert: fs.readFileSync(cert), key: fs.readFileSync(key), ...(ca === undefined ? {} : { ca: fs.readFileSync(ca) }) } }),
    keep: false,
    onEvents: (events) => { for (const e of events) process.stdout.write(`${JSON.stringify(e)}\n`) },
  })
  process.stderr.write(`grpc-receiver listening on ${rx.address}${cert === undefined ? '' : ' (TLS)'}${ca === undefined ? '' : ' (client certificates required)'}\n`)
  const stop = (): void => { void rx.close().then(() => process.exit(0)) }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: Error) => {
    process.stderr.write(`grpc-receiver: ${err.message}\n`)
    process.exit(1)
  })
}
