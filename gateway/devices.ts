// One device registry for every protocol (DESIGN.md "Device identity, access and topics"): the devices
// of the config file and the devices of the registry table in the SQLite file, merged into the one
// DeviceRegistry the adapters authenticate against. `gridgate device add|enable|disable|remove` and the
// admin API change the registry; a running gateway applies a change at once (auth cache of that device
// dropped, live sessions of a disabled or removed device closed), without a restart.
//
// Precedence: an id defined in the config cannot be added to the registry (GG_ERR_DEVICE_EXISTS) and
// cannot be enabled or disabled by the CLI (GG_ERR_DEVICE_IN_CONFIG). If the config gains an id that
// the registry already holds (the file was edited later), the config wins: the registry row is kept
// but shadowed (listed with `shadowed: true`, logged at start) and `remove` deletes it.
//
// Presence (last seen, online per protocol) is kept in memory only, per device: updated on successful
// authentication, on ingest and on connect/disconnect; never written per message, never a metric label.
import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import { GridgateError } from './errors.js'
import { DEVICE_ID, DeviceRegistry, generateToken, hashToken, type DeviceRecord } from './identity.js'
import type { Protocol } from './metrics.js'
import type { DeviceRow } from '../store-forward/protocol.js'

export type DeviceSource = 'config' | 'registry'
export const PRESENCE_PROTOCOLS: readonly Protocol[] = ['mqtt', 'coap', 'ws', 'http']
/** CoAP and HTTP have no connection: a device counts as online there when seen within this window (ms). */
export const ONLINE_WINDOW_MS = 5 * 60 * 1000

// ---- validation -------------------------------------------------------------------------------------

/** A device id given to enable, disable or remove. */
export function checkDeviceId (id: unknown): string {
  if (typeof id !== 'string' || !DEVICE_ID.test(id)) {
    throw new GridgateError('GG_ERR_DEVICE_INVALID', `invalid device id ${JSON.stringify(id)}: expected 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit`)
  }
  return id
}

// ---- presence ---------------------------------------------------------------------------------------

interface ProtocolPresence { lastSeenMs: number, connections: number }

export interface ProtocolView {
  online: boolean
  /** Open connections (MQTT, WebSocket); CoAP and HTTP have none and are online when seen recently. */
  connections?: number
  lastSeen: string | null
}

export interface PresenceView { online: boolean, lastSeen: string | null, protocols: Record<Protocol, ProtocolView> }

/** Last seen and open connections per device and protocol, in memory; one small record per known device. */
export class Presence {
  readonly #map = new Map<string, Partial<Record<Protocol, ProtocolPresence>>>()

  constructor (private readonly known: (id: string) => boolean, private readonly now: () => number = Date.now) {}

  #entry (id: string, protocol: Protocol): ProtocolPresence | undefined {
    if (!this.known(id)) return undefined
    let d = this.#map.get(id)
    if (d === undefined) { d = {}; this.#map.set(id, d) }
    return (d[protocol] ??= { lastSeenMs: 0, connections: 0 })
  }

  /** A successful authentication or ingest. */
  seen (id: string, protocol: Protocol): void {
    const e = this.#entry(id, protocol)
    if (e !== undefined) e.lastSeenMs = this.now()
  }

  connected (id: string, protocol: Protocol): void {
    const e = this.#entry(id, protocol)
    if (e === undefined) return
    e.connections++
    e.lastSeenMs = this.now()
  }

  disconnected (id: string, protocol: Protocol): void {
    const e = this.#map.get(id)?.[protocol]
    if (e === undefined) return
    e.connections = Math.max(0, e.connections - 1)
    e.lastSeenMs = this.now()
  }

  forget (id: string): void {
    this.#map.delete(id)
  }

  /** The view of a device never seen. */
  static none (): PresenceView {
    return new Presence(() => false).view('')
  }

  view (id: string): PresenceView {
    const d = this.#map.get(id) ?? {}
    const now = this.now()
    let last = 0
    let online = false
    const protocols = {} as Record<Protocol, ProtocolView>
    for (const p of PRESENCE_PROTOCOLS) {
      const e = d[p]
      const seen = e?.lastSeenMs ?? 0
      last = Math.max(last, seen)
      const connectionless = p === 'coap' || p === 'http'
      const on = connectionless ? seen > 0 && now - seen <= ONLINE_WINDOW_MS : (e?.connections ?? 0) > 0
      online ||= on
      protocols[p] = { online: on, ...(connectionless ? {} : { connections: e?.connections ?? 0 }), lastSeen: seen === 0 ? null : new Date(seen).toISOString() }
    }
    return { online, lastSeen: last === 0 ? null : new Date(last).toISOString(), protocols }
  }
}

// ---- the merged registry ----------------------------------------------------------------------------

/** What the store offers for the registry table (Store in the gateway; a fake in unit tests). */
export interface DeviceStore {
  listDevices (): Promise<DeviceRow[]>
  addDevice (device: DeviceRow): Promise<DeviceRow>
  setDeviceEnabled (id: string, enabled: boolean): Promise<DeviceRow>
  removeDevice (id: string): Promise<void>
}

/** A device as `gridgate device list` and GET /api/v1/devices show it: never a secret or a hash. */
export interface DeviceView {
  id: string
  source: DeviceSource
  enabled: boolean
  publish: readonly string[]
  subscribe: readonly string[]
  createdAt: string | null
  updatedAt: string | null
  /** A registry row hidden by a config device with the same id (config wins). */
  shadowed?: true
  online: boolean
  lastSeen: string | null
  protocols: Record<Protocol, ProtocolView>
}

export interface DeviceManagerOptions {
  configDevices: readonly DeviceRecord[]
  store: DeviceStore
  log: Logger
  now?: () => number
}

export interface DeviceManagerEvents {
  /** A device was disabled or removed: its live sessions must be closed. */
  revoked: [id: string]
}

function recordOf (row: DeviceRow): DeviceRecord {
  return { id: row.id, tokenHash: row.tokenHash, publish: row.publish, subscribe: row.subscribe, enabled: row.enabled }
}

const iso = (ms: number): string => new Date(ms).toISOString()

export class DeviceManager extends EventEmitter<DeviceManagerEvents> {
  readonly registry: DeviceRegistry
  readonly presence: Presence
  readonly #config: ReadonlyMap<string, DeviceRecord>
  /** Registry rows, shadowed ones included. */
  readonly #rows = new Map<string, DeviceRow>()
  readonly #now: () => number

  /** Throws GG_ERR_CONFIG_INVALID for invalid config devices (as DeviceRegistry does). */
  constructor (private readonly o: DeviceManagerOptions) {
    super()
    this.#now = o.now ?? Date.now
    this.registry = new DeviceRegistry(o.configDevices)
    this.#config = new Map(o.configDevices.map(d => [d.id, d]))
    this.presence = new Presence((id) => this.registry.get(id) !== undefined, this.#now)
  }

  /** Reads the registry table and merges it in (config first: it wins). */
  async load (): Promise<void> {
    const rows = await this.o.store.listDevices()
    for (const row of rows) {
      this.#rows.set(row.id, row)
      if (this.#config.has(row.id)) {
        this.o.log.warn({ deviceId: row.id }, 'device is both in the config and in the registry; the config wins (gridgate device remove deletes the registry entry)')
        continue
      }
      try {
        this.registry.set(recordOf(row))
      } catch (err) {
        // Not reachable through the CLI (it validates); a hand-edited row must not stop the gateway.
        this.o.log.error({ deviceId: row.id, err: (err as Error).message }, 'registry device ignored: invalid')
      }
    }
  }

  list (): DeviceView[] {
    const out: DeviceView[] = []
    for (const d of this.#config.values()) out.push(this.#view(d, 'config', undefined))
    for (const row of this.#rows.values()) {
      // A shadowed row is not the device that connects: its presence belongs to the config device.
      if (this.#config.has(row.id)) out.push({ ...this.#view(recordOf(row), 'registry', row), shadowed: true, ...Presence.none() })
      else out.push(this.#view(recordOf(row), 'registry', row))
    }
    return out.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : a.source < b.source ? -1 : 1)
  }

  get (id: string): DeviceView | undefined {
    const c = this.#config.get(id)
    if (c !== undefined) return this.#view(c, 'config', undefined)
    const row = this.#rows.get(id)
    return row === undefined ? undefined : this.#view(recordOf(row), 'registry', row)
  }

  #view (d: DeviceRecord, source: DeviceSource, row: DeviceRow | undefined): DeviceView {
    return {
      id: d.id,
      source,
      enabled: d.enabled,
      publish: d.publish,
      subscribe: d.subscribe,
      createdAt: row === undefined ? null : iso(row.createdMs),
      updatedAt: row === undefined ? null : iso(row.updatedMs),
      ...this.presence.view(d.id),
    }
  }

  /**
   * Adds a registry device. With `tokenHash` (the CLI: the secret never leaves it) the hash is stored as
   * is; without, a secret is generated here and the credential `<id>:<secret>` returned, once.
   */
  async add (input: unknown): Promise<{ device: DeviceView, credential?: string }> {
    // The schema library is loaded on the first add, not by every gateway (see device-input.ts).
    const { parseDeviceInput } = await import('./device-input.js')
    const d = parseDeviceInput(input)
    if (this.#config.has(d.id)) throw new GridgateError('GG_ERR_DEVICE_EXISTS', `device ${d.id} is defined in the config file`)
    if (this.#rows.has(d.id)) throw new GridgateError('GG_ERR_DEVICE_EXISTS', `device ${d.id} is already in the registry`)
    let secret: string | undefined
    let tokenHash = d.tokenHash
    if (tokenHash === undefined) {
      secret = generateToken()
      tokenHash = await hashToken(secret)
    }
    const now = this.#now()
    const row: DeviceRow = {
      id: d.id,
      tokenHash,
      // DESIGN.md defaults, written out for this id as the config does.
      publish: d.publish ?? [`devices/${d.id}/#`, `!devices/${d.id}/commands/#`],
      subscribe: d.subscribe ?? [`devices/${d.id}/commands/#`],
      enabled: d.enabled ?? true,
      createdMs: now,
      updatedMs: now,
    }
    const record = recordOf(row)
    // Same checks as a running registry applies, before anything is stored.
    try {
      new DeviceRegistry([record], { cacheSize: 1 })
    } catch (err) {
      throw new GridgateError('GG_ERR_DEVICE_INVALID', (err as Error).message, { details: (err as GridgateError).details })
    }
    await this.o.store.addDevice(row)
    this.#rows.set(row.id, row)
    this.registry.set(record)
    return { device: this.#view(record, 'registry', row), ...(secret === undefined ? {} : { credential: `${d.id}:${secret}` }) }
  }

  async setEnabled (idInput: unknown, enabled: boolean): Promise<DeviceView> {
    const id = checkDeviceId(idInput)
    if (this.#config.has(id)) throw new GridgateError('GG_ERR_DEVICE_IN_CONFIG', `device ${id} is defined in the config file; set devices[].enabled there`)
    const row = await this.o.store.setDeviceEnabled(id, enabled)
    this.#rows.set(id, row)
    const record = recordOf(row)
    this.registry.set(record)
    if (!enabled) this.emit('revoked', id)
    return this.#view(record, 'registry', row)
  }

  /** Removes a registry device (or the registry row shadowed by a config device of the same id). */
  async remove (idInput: unknown): Promise<{ removed: string, source: DeviceSource }> {
    const id = checkDeviceId(idInput)
    const inConfig = this.#config.has(id)
    if (inConfig && !this.#rows.has(id)) throw new GridgateError('GG_ERR_DEVICE_IN_CONFIG', `device ${id} is defined in the config file; remove it there`)
    await this.o.store.removeDevice(id)
    this.#rows.delete(id)
    if (!inConfig) {
      this.registry.delete(id)
      this.presence.forget(id)
      this.emit('revoked', id)
    }
    return { removed: id, source: 'registry' }
  }
}
