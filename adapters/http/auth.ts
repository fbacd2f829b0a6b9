// Device credentials for HTTP and WebSocket: `Authorization: Bearer <deviceId>:<secret>`, or
// `?auth=<deviceId>:<secret>` where a browser cannot set headers (WebSocket). Failed attempts are
// counted and logged with the device id and source address only, at most once per interval per source.
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { GridgateError } from '../../gateway/errors.js'
import type { DeviceRecord, DeviceRegistry } from '../../gateway/identity.js'
import type { Metrics, Protocol } from '../../gateway/metrics.js'
import { parseMediaType, type DecoderRegistry } from '../../gateway/decoders/index.js'
import type { Presence } from '../../gateway/devices.js'

/** How often one source address may produce an auth-failure log line (ms). */
const AUTH_LOG_INTERVAL = 10_000
const ANONYMOUS_DEVICE = 'anonymous'

export interface Credential { deviceId: string, secret: string }

/** `<deviceId>:<secret>` split at the first colon (device ids never contain one). */
export function parseCredential (value: string): Credential | undefined {
  const colon = value.indexOf(':')
  if (colon <= 0) return undefined
  return { deviceId: value.slice(0, colon), secret: value.slice(colon + 1) }
}

/** The credential of an `Authorization: Bearer …` header; undefined without one, null when malformed. */
export function bearerCredential (header: string | undefined): Credential | undefined | null {
  if (header === undefined || header === '') return undefined
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header)
  if (m === null) return null
  return parseCredential(decodeURIComponentSafe(m[1]!)) ?? null
}

function decodeURIComponentSafe (s: string): string {
  try { return decodeURIComponent(s) } catch { return s }
}

export interface DeviceAuthOptions {
  registry: DeviceRegistry
  allowAnonymous: boolean
  metrics: Metrics
  log: Logger
  /** Last seen per device and protocol (GET /api/v1/devices), updated on every successful authentication. */
  presence?: Pick<Presence, 'seen' | 'connected' | 'disconnected'> | undefined
}

/** Authenticates HTTP and WebSocket devices the way the MQTT adapter does. */
export class DeviceAuth {
  private readonly logAt = new LRUCache<string, number>({ max: 1000 })
  private readonly anonymous: DeviceRecord = {
    id: ANONYMOUS_DEVICE,
    publish: [`devices/${ANONYMOUS_DEVICE}/#`, `!devices/${ANONYMOUS_DEVICE}/commands/#`],
    subscribe: [`devices/${ANONYMOUS_DEVICE}/commands/#`],
    enabled: true,
  }

  constructor (private readonly o: DeviceAuthOptions) {}

  get registry (): DeviceRegistry { return this.o.registry }

  get presence (): Pick<Presence, 'seen' | 'connected' | 'disconnected'> | undefined { return this.o.presence }

  /** Whether a device is the anonymous one (auth.allowAnonymous), which is in no registry. */
  isAnonymous (device: DeviceRecord): boolean { return device === this.anonymous }

  /**
   * The device for a credential (undefined: none was given, null: malformed). Throws GG_ERR_AUTH_REQUIRED
   * or GG_ERR_AUTH_FAILED (both answered 401).
   */
  async authenticate (cred: Credential | undefined | null, protocol: Protocol, source: string): Promise<DeviceRecord> {
    if (cred === undefined) {
      if (this.o.allowAnonymous) return this.anonymous
      throw this.failed(protocol, source, undefined, new GridgateError('GG_ERR_AUTH_REQUIRED', 'send Authorization: Bearer <deviceId>:<secret>'))
    }
    if (cred === null) throw this.failed(protocol, source, undefined, new GridgateError('GG_ERR_AUTH_FAILED', 'the credential is not <deviceId>:<secret>'))
    const device = await this.o.registry.authenticate(cred.deviceId, cred.secret)
    if (device === undefined) throw this.failed(protocol, source, cred.deviceId, new GridgateError('GG_ERR_AUTH_FAILED'))
    this.o.presence?.seen(device.id, protocol)
    return device
  }

  private failed (protocol: Protocol, source: string, deviceId: string | undefined, err: GridgateError): GridgateError {
    this.o.metrics.authFailures.inc({ protocol })
    const now = Date.now()
    const last = this.logAt.get(source)
    if (last === undefined || now - last >= AUTH_LOG_INTERVAL) {
      this.logAt.set(source, now)
      this.o.log.warn({ code: err.code, deviceId, source, protocol }, `${protocol} authentication refused`)
    }
    return err
  }
}

/**
 * Whether a declared content type has a decoder. The registry itself keeps types it has no decoder for
 * as opaque bytes (so MQTT 3.1.1 never loses data); HTTP and WebSocket can refuse one message, and
 * answer 415 / GG_ERR_CONTENT_TYPE_UNSUPPORTED instead. No declared type means "sniff it": supported.
 */
export function supportsContentType (decoders: DecoderRegistry, contentType: string | undefined): boolean {
  const declared = contentType?.trim()
  if (declared === undefined || declared === '') return true
  const media = parseMediaType(declared)
  return media !== undefined && decoders.decoderFor(media.essence) !== undefined
}
