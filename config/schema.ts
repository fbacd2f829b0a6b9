// The one schema that validates gridgate.yaml and gives its types. Every object is strict: a key the
// schema does not know is an error, never silently ignored. Defaults sit next to their keys, written
// with units; `prefault` feeds them through the schema so sizes and durations get parsed like user input.
//
// Extending it: a new section is one line in `configSchema`; a new uplink type is one
// `uplinkType('grpc', { …its own keys })` added to `uplinkTypes`.

import { hostname } from 'node:os'
import { z } from 'zod'
import { parseDuration, parseSize } from './units.js'
import { topicFilterProblem } from './topics.js'
import { ruleProblems } from '../gateway/rules.js'

// Marks leaves that need more than their value to be printed (units) or must not be printed at all,
// so renderConfig knows them from the schema rather than from a list of key names.
export type LeafMeta = { unit?: 'size' | 'duration', secret?: true }
export const leafMeta = z.registry<LeafMeta>()

// Every message is complete ("expected …, got …") so the loader only has to prefix the path.
export function shown (v: unknown): string {
  if (v === null || typeof v !== 'object') return typeof v === 'string' ? JSON.stringify(v) : String(v)
  return Array.isArray(v) ? 'a list' : 'a mapping'
}

function expected (what: string) {
  return { error: (iss: { input?: unknown }) => iss.input === undefined ? 'required' : `expected ${what}, got ${shown(iss.input)}` }
}

function size (def: string, bounds: { min?: string, max?: string } = {}) {
  const min = bounds.min === undefined ? 0 : parseSize(bounds.min)
  const max = bounds.max === undefined ? Number.MAX_SAFE_INTEGER : parseSize(bounds.max)
  const schema = z.union([z.string(), z.number()], expected('a size like 64KiB or a number of bytes'))
    .transform((v, ctx) => {
      const bytes = convert(v, parseSize, ctx)
      if (bytes === undefined) return z.NEVER
      if (bytes < min || bytes > max) {
        const range = bounds.max === undefined ? `at least ${bounds.min ?? '0B'}` : `${bounds.min ?? '0B'} to ${bounds.max}`
        ctx.issues.push({ code: 'custom', input: v, message: `expected a size of ${range}, got ${shown(v)}` })
        return z.NEVER
      }
      return bytes
    })
    .register(leafMeta, { unit: 'size' })
  return schema.prefault(def)
}

function duration (def: string) {
  const schema = z.union([z.string(), z.number()], expected('a duration like 30s or a number of milliseconds'))
    .transform((v, ctx) => convert(v, parseDuration, ctx) ?? z.NEVER)
    .register(leafMeta, { unit: 'duration' })
  return schema.prefault(def)
}

function convert (v: string | number, parse: (v: string | number) => number, ctx: z.RefinementCtx): number | undefined {
  try {
    return parse(v)
  } catch (err) {
    ctx.issues.push({ code: 'custom', input: v, message: `${(err as Error).message}, got ${shown(v)}` })
    return undefined
  }
}

const port = (def: number) => z.int(expected('integer 0..65535'))
  .min(0, expected('integer 0..65535'))
  .max(65535, expected('integer 0..65535'))
  .default(def)

const host = (def: string) => z.string().min(1).default(def)

// The host name, made to pass the id rule below.
function defaultGatewayId (): string {
  return hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128) || 'gridgate'
}

const gatewaySchema = z.strictObject({
  id: z.string()
    .regex(/^[A-Za-z0-9._-]{1,128}$/, expected('1 to 128 of A-Z a-z 0-9 . _ -'))
    .default(defaultGatewayId),
  dataDir: z.string().min(1).default('./data'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  shutdownTimeout: duration('10s'),
  // A full garbage collection once the event loop has been quiet for ~10 s and the heap has grown by
  // 32 MiB since the last one (gateway/heap-trim.ts): memory a burst left behind goes back.
  gcWhenIdle: z.boolean().default(true),
})

const mqttSchema = z.strictObject({
  enabled: z.boolean().default(true),
  host: host('0.0.0.0'),
  port: port(1883),
  maxPacketSize: size('256KiB', { min: '1KiB', max: '256MiB' }),
  // Broker state that is not events. Retained messages are kept in the store (they survive a restart),
  // at most this many; a retained message on a new topic beyond it is not retained (MQTT 5: 0x97).
  maxRetained: z.int(expected('an integer 0..1000000')).min(0, expected('an integer 0..1000000')).max(1_000_000, expected('an integer 0..1000000')).default(10_000),
  // Messages one persistent session holds while its client is away (or has not acknowledged);
  // beyond it the oldest are dropped and counted.
  maxOfflineMessages: z.int(expected('an integer 1..1000000')).min(1, expected('an integer 1..1000000')).max(1_000_000, expected('an integer 1..1000000')).default(1000),
  // A persistent session whose client stays away longer ends (subscriptions and queue); MQTT 5
  // clients may ask for less. Whole seconds, at least 1s.
  sessionExpiry: duration('1h'),
  // Disconnected persistent sessions held at once; a session that disconnects beyond it ends at once.
  maxSessions: z.int(expected('an integer 1..1000000')).min(1, expected('an integer 1..1000000')).max(1_000_000, expected('an integer 1..1000000')).default(10_000),
  // MQTT over TLS: a second listener on the same broker. Paths resolve against the config file's directory.
  tls: z.strictObject({
    port: port(8883),
    cert: z.string().min(1),
    key: z.string().min(1),
    // CA bundle for client certificates; with it a client certificate whose CN is a device id
    // authenticates that device without a password.
    ca: z.string().min(1).optional(),
    requireClientCert: z.boolean().default(false),
  }).refine(t => !t.requireClientCert || t.ca !== undefined, { error: 'requireClientCert needs ca, the CA that signs client certificates', path: ['requireClientCert'] }).optional(),
})

// One listener for HTTP ingest, WebSocket JSON events and MQTT over WebSocket.
const websocketSchema = z.strictObject({
  enabled: z.boolean().default(true),
  host: host('0.0.0.0'),
  port: port(8080),
  mqttPath: z.string().startsWith('/', { error: 'expected a path starting with /' }).default('/mqtt'),
  eventsPath: z.string().startsWith('/', { error: 'expected a path starting with /' }).default('/ws'),
  maxFrameSize: size('256KiB', { min: '1KiB', max: '64MiB' }),
  // Events in one JSON frame (an array of events); a longer array is refused as a whole.
  maxBatch: z.int().min(1).max(10_000).default(100),
  // Frames of one connection being committed at once; beyond it the connection is not read.
  maxInflight: z.int().min(1).max(1000).default(16),
  // Answers queued for a client that does not read them; beyond it the connection is closed (1008).
  maxBufferedBytes: size('1MiB', { min: '1KiB' }),
  // A peer that does not answer a ping within one interval is dropped.
  pingInterval: duration('30s'),
  tls: z.strictObject({
    cert: z.string().min(1),
    key: z.string().min(1),
  }).optional(),
})

const httpSchema = z.strictObject({
  enabled: z.boolean().default(true),
  maxBodySize: size('1MiB', { min: '1KiB', max: '64MiB' }),
  pubsubName: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, expected('1 to 128 of A-Z a-z 0-9 . _ -')).default('gridgate'),
})

const coapSchema = z.strictObject({
  enabled: z.boolean().default(true),
  host: host('0.0.0.0'),
  port: port(5683),
  maxPayloadSize: size('64KiB', { min: '16B', max: '16MiB' }),
  // Block1 uploads being reassembled at once, in total and per endpoint, and how long an incomplete
  // one is kept (each arriving block restarts the clock).
  maxBlockwiseTransfers: z.int().min(1).max(100_000).default(256),
  maxBlockwisePerEndpoint: z.int().min(1).max(1000).default(4),
  blockwiseTimeout: duration('60s'),
})

const adminSchema = z.strictObject({
  host: host('127.0.0.1'),
  port: port(9080),
})

const authSchema = z.strictObject({
  allowAnonymous: z.boolean().default(false),
})

const topicFilter = z.string().check((ctx) => {
  const problem = topicFilterProblem(ctx.value)
  if (problem !== undefined) ctx.issues.push({ code: 'custom', input: ctx.value, message: `invalid MQTT topic filter ${JSON.stringify(ctx.value)}: ${problem}` })
})

// Cross-field checks normally skip values that already have issues; these run anyway so that every
// problem is reported at once. They get a value of the right shape but possibly bad fields.
const runDespiteIssues = {
  when: (p: { value: unknown }) => typeof p.value === 'object' && p.value !== null,
}

const deviceSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/,
    expected('1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit')),
  // Secrets never appear in messages: no "got".
  token: z.string({ error: 'expected a string (quote a token of digits only)' })
    .min(8, { error: 'expected at least 8 characters' }).register(leafMeta, { secret: true }).optional(),
  tokenHash: z.string().startsWith('$scrypt$', { error: 'expected a PHC string starting with $scrypt$ (see gridgate hash-token)' }).optional(),
  publish: z.array(topicFilter).optional(),
  subscribe: z.array(topicFilter).optional(),
  enabled: z.boolean().default(true),
})
  .superRefine((d, ctx) => {
    if (d.token === undefined && d.tokenHash === undefined) {
      ctx.addIssue({ code: 'custom', message: 'one of token or tokenHash is required' })
    } else if (d.token !== undefined && d.tokenHash !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'token and tokenHash are mutually exclusive, give only one' })
    }
  }, runDespiteIssues)
  // Defaults that depend on the id cannot be field defaults.
  .transform(({ publish, subscribe, ...d }) => ({
    ...d,
    // DESIGN.md: a device publishes in devices/<id>/# except its own command topics.
    publish: publish ?? [`devices/${d.id}/#`, `!devices/${d.id}/commands/#`],
    subscribe: subscribe ?? [`devices/${d.id}/commands/#`],
  }))

const storeSchema = z.strictObject({
  /** Pages in use plus the WAL, measured; the WAL's share is walMaxBytes. */
  maxBytes: size('1GiB', { min: '256KiB' }),
  /** A nearly full disk counts as a full store (checked with statfs). */
  minFreeDisk: size('64MiB'),
  /** Events (and dead letters) older than this, counted from their stored ingest time, are removed. 0 = keep forever. */
  ttl: duration('7d'),
  whenFull: z.enum(['drop-oldest', 'reject-new']).default('drop-oldest'),
  /** How long an MQTT 3.1.1 PUBACK may be withheld while the store is full before the connection is closed. */
  rejectWait: duration('10s'),
  /** The checkpointer truncates the WAL once it grows past this. */
  walMaxBytes: size('64MiB', { min: '64KiB' }),
  /** Deleted when the disk fills so that deletes and checkpoints can still run; re-created afterwards. */
  reserveBytes: size('8MiB'),
  sync: z.enum(['full', 'normal']).default('full'),
  dedupWindow: duration('2m'),
  commitDelay: duration('0ms'),
})
  .superRefine((s, ctx) => {
    if (typeof s.maxBytes === 'number' && typeof s.walMaxBytes === 'number' && s.walMaxBytes * 2 > s.maxBytes) {
      ctx.addIssue({ code: 'custom', path: ['walMaxBytes'], message: `expected at most half of store.maxBytes (${s.maxBytes} bytes), got ${s.walMaxBytes} bytes` })
    }
  }, runDespiteIssues)

const retrySchema = z.strictObject({
  initialDelay: duration('100ms'),
  maxDelay: duration('30s'),
})

const filterSchema = z.strictObject({
  /** Event types this uplink receives (exact, or a prefix ending in `*`); absent = every type. */
  types: z.array(z.string().min(1)).min(1).optional(),
  /** Subjects (topics) this uplink receives, as MQTT topic filters; absent = every subject. */
  subjects: z.array(topicFilter).min(1).optional(),
})

const maxLagSchema = z.strictObject({
  /** Backlog bytes beyond which this uplink's oldest events are skipped (reason `lag`). */
  bytes: size('1MiB', { min: '1KiB' }).optional(),
  /** Backlog age beyond which this uplink's oldest events are skipped (reason `lag`). */
  age: duration('1h').optional(),
})

// Keys every uplink type has, whatever its transport.
const uplinkCommon = {
  filter: filterSchema.optional(),
  maxLag: maxLagSchema.optional(),
  /** Where a new uplink starts: only events stored from now on, or everything still in the store. */
  startFrom: z.enum(['newest', 'oldest']).default('newest'),
  batchMaxEvents: z.int().min(1).max(10_000).default(500),
  batchMaxBytes: size('1MiB', { min: '1KiB' }),
  batchMaxDelay: duration('20ms'),
  timeout: duration('10s'),
  retry: retrySchema.prefault({}),
}

// How an uplink reaches its endpoints: TLS files, auth, compression, selection and circuit breaker.
// All optional, so an uplink that does not use them reads back exactly as written.
const uplinkTlsSchema = z.strictObject({
  // PEM files, relative to the config file. ca replaces the system CAs; cert + key enable mutual TLS.
  ca: z.string().min(1).optional(),
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
}).superRefine((t, ctx) => {
  if ((t.cert === undefined) !== (t.key === undefined)) ctx.addIssue({ code: 'custom', message: 'cert and key go together, give both or neither' })
}, runDespiteIssues)

const breakerSchema = z.strictObject({
  failures: z.int().min(1).max(1000).default(5), // consecutive failed batches that open an endpoint's breaker
  // Wait before one probe batch; default: the uplink's retry.maxDelay.
  halfOpenAfter: z.union([z.string(), z.number()], expected('a duration like 30s or a number of milliseconds'))
    .transform((v, ctx) => convert(v, parseDuration, ctx) ?? z.NEVER)
    .register(leafMeta, { unit: 'duration' })
    .optional(),
})

// HTTP header names (RFC 9110 §5.6.2 token); values may carry API keys, so check-config redacts them.
const headersSchema = z.record(z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, expected('an HTTP header name')), z.string())
  .register(leafMeta, { secret: true })

const uplinkDelivery = {
  selection: z.enum(['failover', 'round-robin']).optional(), // default failover
  headers: headersSchema.optional(),
  bearerToken: z.string().min(1).register(leafMeta, { secret: true }).optional(),
  gzip: z.boolean().optional(), // default false
  tls: uplinkTlsSchema.optional(),
  breaker: breakerSchema.optional(),
}

// `url`/`address` names one endpoint, `endpoints` several; exactly one of the two.
function oneEndpointKey (key: 'url' | 'address') {
  return (u: { endpoints?: unknown }, ctx: z.RefinementCtx) => {
    const single = (u as Record<string, unknown>)[key]
    if (single === undefined && u.endpoints === undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'required' })
    else if (single !== undefined && u.endpoints !== undefined) ctx.addIssue({ code: 'custom', path: ['endpoints'], message: `give ${key} or endpoints, not both` })
  }
}

function uplinkType<T extends string, S extends z.core.$ZodLooseShape> (type: T, own: S) {
  return z.strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/i,
      expected('1 to 63 of A-Z a-z 0-9 _ -, starting with a letter or digit')),
    type: z.literal(type),
    ...own,
    ...uplinkCommon,
  })
}

const httpUrl = () => z.url({ protocol: /^https?$/, ...expected('an http:// or https:// URL') })

const httpUplinkSchema = uplinkType('http', {
  url: httpUrl().optional(),
  endpoints: z.array(httpUrl()).min(1).optional(),
  ...uplinkDelivery,
}).superRefine(oneEndpointKey('url'), runDespiteIssues)

// host:port, [v6]:port, or a grpc-js target URI (dns:///host:port, unix:/path).
const grpcAddress = () => z.string().regex(/^([^\s/]+:\d{1,5}|(dns|unix|ipv4|ipv6):\S+)$/, expected('host:port'))

const grpcUplinkSchema = uplinkType('grpc', {
  address: grpcAddress().optional(),
  endpoints: z.array(grpcAddress()).min(1).optional(),
  ...uplinkDelivery,
}).superRefine(oneEndpointKey('address'), runDespiteIssues)

const uplinkTypes = [httpUplinkSchema, grpcUplinkSchema] as const

/**
 * Each uplink owns one bit of an event's routes mask, a JS number: bits 0..52 add up exactly, while
 * with a 54th uplink (2^53 and above) the low bits of a sum are lost and an event would silently miss
 * an uplink.
 */
const MAX_UPLINKS = 53

// Paths are relative to the array, so the message lands at the duplicate item's own key.
function unique<T> (list: string, key: string, what: string) {
  return (items: readonly T[], ctx: z.RefinementCtx<T[]>) => {
    if (!Array.isArray(items)) return
    const seen = new Map<unknown, number>()
    for (const [i, item] of items.entries()) {
      const value = (item as Record<string, unknown> | undefined)?.[key]
      if (typeof value !== 'string') continue
      const first = seen.get(value)
      if (first === undefined) seen.set(value, i)
      else ctx.addIssue({ code: 'custom', path: [i, key], message: `duplicate ${what} ${JSON.stringify(value)}, first used at ${list}[${first}]` })
    }
  }
}

// Mapping rules (gateway/rules.ts). Pattern, type template, content type and deviceTime are checked
// here; the protobuf file and message need the config's directory, so the loader checks those.
const ruleSchema = z.strictObject({
  topic: z.string().min(1),
  type: z.string().min(1).optional(),
  contentType: z.string().min(1).optional(),
  protobuf: z.strictObject({
    file: z.string().min(1),
    message: z.string().min(1),
  }).optional(),
  deviceTime: z.string().min(1).optional(),
})
  .superRefine((r, ctx) => {
    for (const p of ruleProblems(r)) ctx.addIssue({ code: 'custom', path: [p.key], message: p.message })
  }, runDespiteIssues)

const MAX_RULES = 1000

export const configSchema = z.strictObject({
  gateway: gatewaySchema.prefault({}),
  mqtt: mqttSchema.prefault({}),
  coap: coapSchema.prefault({}),
  websocket: websocketSchema.prefault({}),
  http: httpSchema.prefault({}),
  admin: adminSchema.prefault({}),
  auth: authSchema.prefault({}),
  devices: z.array(deviceSchema)
    .superRefine(unique('devices', 'id', 'device id'), runDespiteIssues)
    .default([]),
  store: storeSchema.prefault({}),
  uplinks: z.array(z.discriminatedUnion('type', uplinkTypes))
    .max(MAX_UPLINKS, { error: `expected at most ${MAX_UPLINKS} uplinks` })
    .superRefine(unique('uplinks', 'name', 'uplink name'), runDespiteIssues)
    .default([]),
  rules: z.array(ruleSchema)
    .max(MAX_RULES, { error: `expected at most ${MAX_RULES} rules` })
    .default([]),
})

export type Config = z.output<typeof configSchema>
export type GatewaySection = Config['gateway']
export type MqttSection = Config['mqtt']
export type CoapSection = Config['coap']
export type WebsocketSection = Config['websocket']
export type HttpSection = Config['http']
export type AdminSection = Config['admin']
export type AuthSection = Config['auth']
export type DeviceConfig = Config['devices'][number]
export type StoreSection = Config['store']
export type UplinkConfig = Config['uplinks'][number]
export type HttpUplinkConfig = Extract<UplinkConfig, { type: 'http' }>
export type RetryConfig = HttpUplinkConfig['retry']
export type RuleConfig = Config['rules'][number]
export type GrpcUplinkConfig = Extract<UplinkConfig, { type: 'grpc' }>
