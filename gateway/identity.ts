// One device registry for every protocol: credentials (scrypt PHC hashes), publish/subscribe ACLs and
// the MQTT topic-filter algebra they rest on (DESIGN.md "Device identity, access and topics").

import { hash as cryptoHash, randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { LRUCache } from 'lru-cache'
import { GridgateError } from './errors.js'

export interface DeviceRecord {
  id: string
  /** A plaintext secret (tests, small fleets); tokenHash is preferred when both are set. */
  token?: string | undefined
  /** PHC string `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (gridgate hash-token). */
  tokenHash?: string | undefined
  /**
   * MQTT topic filters; `{id}` expands to the device id. A pattern starting with '!' excludes what it
   * matches (publish) or overlaps (subscribe), e.g. ['devices/{id}/#', '!devices/{id}/commands/#'].
   */
  publish: readonly string[]
  subscribe: readonly string[]
  enabled: boolean
}

/** DESIGN.md defaults: a device publishes in its own tree except its command topics and subscribes to those. */
export const DEFAULT_PUBLISH: readonly string[] = ['devices/{id}/#', '!devices/{id}/commands/#']
export const DEFAULT_SUBSCRIBE: readonly string[] = ['devices/{id}/commands/#']

/** Device ids: safe in topics (no '/', '+', '#', '$'), in `<deviceId>:<secret>` and in URLs. */
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

// ---- secrets ----------------------------------------------------------------------------------------

const HASH_LN = 15 // N = 2^15: 32 MiB and ~100 ms per verification on a Raspberry Pi 4
const HASH_R = 8
const HASH_P = 1
const HASH_KEYLEN = 32 // bytes
const HASH_SALTLEN = 16 // bytes
const SCRYPT_MAXMEM = 64 * 1024 * 1024 // bytes; N=2^15, r=8 needs 32 MiB (128 * N * r)

// Bounds on parameters read from a PHC string, so that one stored hash cannot pin a CPU for minutes.
const MAX_LN = 20
const MAX_R = 32
const MAX_P = 16

function scryptAsync (secret: string, salt: Uint8Array, keylen: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, keylen, opts, (err, key) => { if (err === null) resolve(key); else reject(err) })
  })
}

// PHC strings use standard base64 without padding.
function b64 (bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64').replace(/=+$/, '')
}

const B64 = /^[A-Za-z0-9+/]+$/

/** A PHC scrypt hash of a device secret: `$scrypt$ln=15,r=8,p=1$<salt>$<hash>`, 16-byte salt, 32-byte key. */
export async function hashToken (token: string): Promise<string> {
  const salt = randomBytes(HASH_SALTLEN)
  const key = await scryptAsync(token, salt, HASH_KEYLEN, { N: 2 ** HASH_LN, r: HASH_R, p: HASH_P, maxmem: SCRYPT_MAXMEM })
  return `$scrypt$ln=${HASH_LN},r=${HASH_R},p=${HASH_P}$${b64(salt)}$${b64(key)}`
}

interface Phc { ln: number, r: number, p: number, salt: Buffer, hash: Buffer }

function parsePhc (phc: string): Phc | undefined {
  const parts = phc.split('$')
  if (parts.length !== 5 || parts[0] !== '' || parts[1] !== 'scrypt') return undefined
  const [, , paramText = '', saltText = '', hashText = ''] = parts
  const params = new Map<string, number>()
  for (const kv of paramText.split(',')) {
    const m = /^(ln|r|p)=([1-9][0-9]{0,2})$/.exec(kv)
    if (m === null || params.has(m[1] as string)) return undefined
    params.set(m[1] as string, Number(m[2]))
  }
  const ln = params.get('ln')
  const r = params.get('r')
  const p = params.get('p')
  if (ln === undefined || r === undefined || p === undefined || ln > MAX_LN || r > MAX_R || p > MAX_P) return undefined
  if (!B64.test(saltText) || !B64.test(hashText)) return undefined
  const salt = Buffer.from(saltText, 'base64')
  const hash = Buffer.from(hashText, 'base64')
  if (salt.length < 8 || hash.length < 16 || hash.length > 64) return undefined
  return { ln, r, p, salt, hash }
}

/** Whether a string is a PHC scrypt hash this registry can verify (parameters within bounds). */
export function isValidTokenHash (phc: string): boolean {
  return parsePhc(phc) !== undefined
}

/** Whether `token` matches a PHC scrypt hash. Malformed or unsupported hashes give false, never throw. */
export async function verifyTokenHash (token: string, phc: string): Promise<boolean> {
  const parsed = parsePhc(phc)
  if (parsed === undefined) return false
  let key: Buffer
  try {
    key = await scryptAsync(token, parsed.salt, parsed.hash.length, { N: 2 ** parsed.ln, r: parsed.r, p: parsed.p, maxmem: SCRYPT_MAXMEM })
  } catch {
    return false // parameters beyond maxmem
  }
  return timingSafeEqual(key, parsed.hash)
}

/** A new device secret: 32 random bytes, base64url (43 characters). */
export function generateToken (): string {
  return randomBytes(32).toString('base64url')
}

function sha256 (s: string): Buffer {
  return cryptoHash('sha256', s, 'buffer')
}

/** Digests of the config's plaintext tokens, computed once (CoAP and HTTP authenticate every request). */
const tokenDigests = new Map<string, Buffer>()
const MAX_TOKEN_DIGESTS = 100_000

function tokenDigest (token: string): Buffer {
  let d = tokenDigests.get(token)
  if (d === undefined) {
    if (tokenDigests.size >= MAX_TOKEN_DIGESTS) tokenDigests.clear()
    d = sha256(token)
    tokenDigests.set(token, d)
  }
  return d
}

// Digests first so that neither the content nor the length of the stored secret leaks through timing.
function plaintextEqual (secret: string, token: string): boolean {
  return timingSafeEqual(sha256(secret), tokenDigest(token))
}

// ---- topics -----------------------------------------------------------------------------------------

/** Whether a string is a valid MQTT topic filter ([MQTT-4.7.1], [MQTT-4.7.3]). */
export function isValidFilter (filter: string): boolean {
  if (filter === '' || filter.includes('\u0000')) return false // [MQTT-4.7.3-1], [MQTT-4.7.3-2]
  const levels = filter.split('/')
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i] as string
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return false // [MQTT-4.7.1-2]
    if (level.includes('+') && level !== '+') return false // [MQTT-4.7.1-3]
  }
  return true
}

/** Whether a string is a valid MQTT topic name to publish to: non-empty, no wildcards ([MQTT-3.3.2-2]), no U+0000. */
export function isValidTopic (topic: string): boolean {
  return topic !== '' && !/[+#\u0000]/.test(topic)
}

// [MQTT-4.7.2-1]: a filter starting with a wildcard does not match topics starting with '$'.
function isWild (level: string): boolean {
  return level === '+' || level === '#'
}

function matchLevels (f: readonly string[], t: readonly string[]): boolean {
  if ((t[0] as string).startsWith('$') && isWild(f[0] as string)) return false
  for (let i = 0; i < f.length; i++) {
    const level = f[i] as string
    if (level === '#') return true // also matches the parent level ([MQTT-4.7.1-2])
    if (i >= t.length) return false
    if (level !== '+' && level !== t[i]) return false
  }
  return f.length === t.length
}

/** MQTT wildcard matching ([MQTT-4.7]); false when the filter or the topic is invalid. */
export function topicMatches (filter: string, topic: string): boolean {
  if (!isValidFilter(filter) || !isValidTopic(topic)) return false
  return matchLevels(filter.split('/'), topic.split('/'))
}

function coversLevels (p: readonly string[], f: readonly string[]): boolean {
  for (let i = 0; ; i++) {
    const pl = p[i]
    const fl = f[i]
    if (pl === '#') {
      // Only a literal first level can name $-topics, and a leading '#' does not match them.
      return !(i === 0 && fl !== undefined && fl.startsWith('$'))
    }
    if (pl === undefined || fl === undefined) return pl === fl
    if (fl === '#') return false
    if (pl === '+') {
      if (i === 0 && fl.startsWith('$')) return false
      continue
    }
    if (pl !== fl) return false // a '+' in the filter is only covered by '+' or '#'
  }
}

/** Whether every topic `filter` can match is matched by `pattern` (a subscription within an ACL pattern). */
export function filterCovers (pattern: string, filter: string): boolean {
  if (!isValidFilter(pattern) || !isValidFilter(filter)) return false
  return coversLevels(pattern.split('/'), filter.split('/'))
}

function intersectLevels (a: readonly string[], b: readonly string[]): boolean {
  for (let i = 0; ; i++) {
    const x = a[i]
    const y = b[i]
    if (x === '#' || y === '#') {
      const other = x === '#' ? y : x
      return !(i === 0 && other !== undefined && !isWild(other) && other.startsWith('$'))
    }
    if (x === undefined || y === undefined) return x === y
    if (x === '+' || y === '+') {
      const other = x === '+' ? y : x
      if (i === 0 && !isWild(other) && other.startsWith('$')) return false
      continue
    }
    if (x !== y) return false
  }
}

/** Whether some topic is matched by both filters. */
export function filtersIntersect (a: string, b: string): boolean {
  if (!isValidFilter(a) || !isValidFilter(b)) return false
  return intersectLevels(a.split('/'), b.split('/'))
}

const DEVICES_PREFIX = 'devices/'

/** devices/<any>/commands and below: delivered to subscribers locally, never stored as events. */
export function isCommandTopic (topic: string): boolean {
  if (!topic.startsWith(DEVICES_PREFIX)) return false
  const slash = topic.indexOf('/', DEVICES_PREFIX.length)
  if (slash === -1) return false
  return topic.startsWith('commands', slash + 1) && (topic.length === slash + 9 || topic[slash + 9] === '/')
}

/** The <id> of devices/<id>/..., or undefined for other topics. */
export function deviceIdOfTopic (topic: string): string | undefined {
  if (!topic.startsWith(DEVICES_PREFIX)) return undefined
  const slash = topic.indexOf('/', DEVICES_PREFIX.length)
  const id = slash === -1 ? topic.slice(DEVICES_PREFIX.length) : topic.slice(DEVICES_PREFIX.length, slash)
  return id === '' ? undefined : id
}

/** A device's patterns with {id} expanded: allow and deny lists, split into levels once. */
interface Acl {
  publishAllow: string[][]
  publishDeny: string[][]
  subscribeAllow: string[][]
  subscribeDeny: string[][]
  invalid: string[]
  /** canPublish's answers for the topics this device published to last (a device uses few). */
  published: Map<string, boolean>
}

/** Topics whose canPublish answer an ACL remembers; all are forgotten when one more comes. */
const PUBLISH_MEMO = 16

function compileAcl (device: DeviceRecord): Acl {
  const acl: Acl = { publishAllow: [], publishDeny: [], subscribeAllow: [], subscribeDeny: [], invalid: [], published: new Map() }
  const add = (patterns: readonly string[], allow: string[][], deny: string[][]): void => {
    for (const raw of patterns) {
      const negated = raw.startsWith('!')
      const filter = (negated ? raw.slice(1) : raw).replaceAll('{id}', device.id)
      if (!isValidFilter(filter)) {
        acl.invalid.push(raw)
        continue
      }
      (negated ? deny : allow).push(filter.split('/'))
    }
  }
  add(device.publish, acl.publishAllow, acl.publishDeny)
  add(device.subscribe, acl.subscribeAllow, acl.subscribeDeny)
  // push() leaves room for 16 more entries in each list: 10,000 devices kept about 4.5 MB of it.
  acl.publishAllow = acl.publishAllow.slice()
  acl.publishDeny = acl.publishDeny.slice()
  acl.subscribeAllow = acl.subscribeAllow.slice()
  acl.subscribeDeny = acl.subscribeDeny.slice()
  return acl
}

// ---- registry ---------------------------------------------------------------------------------------

export interface DeviceRegistryOptions {
  /** Successful verifications kept (default 10 000). */
  cacheSize?: number
  /** How long a successful verification is trusted, in ms (default 10 minutes). */
  cacheTtlMs?: number
}

export interface DeviceRegistryStats {
  /** scrypt verifications run (including the dummy run for unknown devices). */
  scryptRuns: number
  /** authenticate() calls answered from the verification cache. */
  cacheHits: number
}

const CACHE_SIZE = 10_000
const CACHE_TTL_MS = 10 * 60 * 1000 // 10 minutes

// Unknown and disabled devices cost one scrypt run too, so that timing does not tell which ids exist.
const DUMMY_SALT = randomBytes(HASH_SALTLEN)

export class DeviceRegistry {
  #devices = new Map<string, DeviceRecord>()
  #generation = 0
  readonly #cache: LRUCache<string, true>
  readonly #inflight = new Map<string, Promise<boolean>>()
  readonly #acls = new WeakMap<DeviceRecord, Acl>()
  readonly #stats: DeviceRegistryStats = { scryptRuns: 0, cacheHits: 0 }

  /** Throws GG_ERR_CONFIG_INVALID for an invalid or duplicate device id or an invalid topic pattern. */
  constructor (devices: readonly DeviceRecord[], opts: DeviceRegistryOptions = {}) {
    this.#cache = new LRUCache<string, true>({ max: opts.cacheSize ?? CACHE_SIZE, ttl: opts.cacheTtlMs ?? CACHE_TTL_MS })
    this.replace(devices)
  }

  /** Swap in a new device list; cached verifications and verifications in flight are discarded. */
  replace (devices: readonly DeviceRecord[]): void {
    const next = new Map<string, DeviceRecord>()
    const problems: string[] = []
    for (const d of devices) {
      if (!DEVICE_ID.test(d.id)) problems.push(`device id ${JSON.stringify(d.id)}: expected 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit`)
      else if (next.has(d.id)) problems.push(`device id ${d.id} appears twice`)
      const acl = this.#acl(d)
      for (const p of acl.invalid) problems.push(`device ${d.id}: ${JSON.stringify(p)} is not a valid MQTT topic filter`)
      next.set(d.id, d)
    }
    if (problems.length > 0) {
      throw new GridgateError('GG_ERR_CONFIG_INVALID', `invalid device registry: ${problems.join('; ')}`, { details: problems })
    }
    this.#devices = next
    this.#generation++
    this.#cache.clear()
    this.#inflight.clear()
  }

  /**
   * Adds or replaces one device (the registry changed at run time: gridgate device add|enable|disable).
   * Only this device's cached verifications and verifications in flight are discarded.
   * Throws GG_ERR_CONFIG_INVALID like the constructor.
   */
  set (device: DeviceRecord): void {
    const problems: string[] = []
    if (!DEVICE_ID.test(device.id)) problems.push(`device id ${JSON.stringify(device.id)}: expected 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit`)
    for (const p of this.#acl(device).invalid) problems.push(`device ${device.id}: ${JSON.stringify(p)} is not a valid MQTT topic filter`)
    if (problems.length > 0) throw new GridgateError('GG_ERR_CONFIG_INVALID', `invalid device: ${problems.join('; ')}`, { details: problems })
    this.#devices.set(device.id, device)
    this.#forget(device.id)
  }

  /** Removes one device; its cached verifications are discarded. Whether it was there. */
  delete (id: string): boolean {
    const had = this.#devices.delete(id)
    this.#forget(id)
    return had
  }

  #forget (id: string): void {
    const prefix = `${id}\n`
    for (const key of [...this.#cache.keys()]) if (key.startsWith(prefix)) this.#cache.delete(key)
    for (const key of [...this.#inflight.keys()]) if (key.startsWith(prefix)) this.#inflight.delete(key)
  }

  get (id: string): DeviceRecord | undefined {
    return this.#devices.get(id)
  }

  get size (): number {
    return this.#devices.size
  }

  /** Counters for metrics and tests. */
  get stats (): Readonly<DeviceRegistryStats> {
    return { ...this.#stats }
  }

  /** The device when `secret` is its credential; undefined for an unknown or disabled device or a wrong secret. */
  async authenticate (id: string, secret: string): Promise<DeviceRecord | undefined> {
    const device = this.#devices.get(id)
    if (device === undefined || !device.enabled || (device.tokenHash === undefined && device.token === undefined)) {
      await this.#dummyVerify(secret)
      return undefined
    }
    if (device.tokenHash === undefined) {
      return plaintextEqual(secret, device.token as string) ? device : undefined
    }
    const key = `${id}\n${sha256(secret).toString('base64')}`
    if (this.#cache.get(key) === true) {
      this.#stats.cacheHits++
      return device
    }
    const generation = this.#generation
    // Concurrent attempts with the same credential (a reconnect storm) share one scrypt run.
    let pending = this.#inflight.get(key)
    if (pending === undefined) {
      this.#stats.scryptRuns++
      const p = verifyTokenHash(secret, device.tokenHash)
      pending = p
      this.#inflight.set(key, p)
      const forget = (): void => { if (this.#inflight.get(key) === p) this.#inflight.delete(key) }
      p.then(forget, forget)
    }
    const ok = await pending
    // The registry changed while scrypt ran: the answer may be about a credential that is gone.
    if (generation !== this.#generation || this.#devices.get(id) !== device) return this.authenticate(id, secret)
    if (!ok) return undefined
    this.#cache.set(key, true)
    return device
  }

  async #dummyVerify (secret: string): Promise<void> {
    this.#stats.scryptRuns++
    await scryptAsync(secret, DUMMY_SALT, HASH_KEYLEN, { N: 2 ** HASH_LN, r: HASH_R, p: HASH_P, maxmem: SCRYPT_MAXMEM })
  }

  // Records are treated as immutable: a record's compiled ACL is kept for as long as the record lives.
  #acl (device: DeviceRecord): Acl {
    let acl = this.#acls.get(device)
    if (acl === undefined) {
      acl = compileAcl(device)
      this.#acls.set(device, acl)
    }
    return acl
  }

  /** Whether the device may publish to `topic`: some publish pattern matches and no '!' pattern does; never '$' topics. */
  canPublish (device: DeviceRecord, topic: string): boolean {
    if (!device.enabled) return false
    // Remembered per compiled ACL, which a changed device record replaces: the answer depends on
    // nothing else but the topic.
    const acl = this.#acl(device)
    const known = acl.published.get(topic)
    if (known !== undefined) return known
    let allowed = isValidTopic(topic) && !topic.startsWith('$')
    if (allowed) {
      const levels = topic.split('/')
      allowed = acl.publishAllow.some(f => matchLevels(f, levels)) && !acl.publishDeny.some(f => matchLevels(f, levels))
    }
    if (acl.published.size >= PUBLISH_MEMO) acl.published.clear()
    acl.published.set(topic, allowed)
    return allowed
  }

  /** Whether the device may subscribe to `filter`: it lies within one subscribe pattern and overlaps no '!' pattern. */
  canSubscribe (device: DeviceRecord, filter: string): boolean {
    if (!device.enabled || !isValidFilter(filter)) return false
    const acl = this.#acl(device)
    const levels = filter.split('/')
    return acl.subscribeAllow.some(p => coversLevels(p, levels)) && !acl.subscribeDeny.some(p => intersectLevels(p, levels))
  }
}
