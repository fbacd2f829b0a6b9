// Loading: YAML file → env overrides → schema → absolute paths → frozen Config. Every problem is
// collected and thrown at once, each prefixed with its path (`uplinks[0].url: …`).

import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import YAML from 'yaml'
import { z } from 'zod'
import { GridgateError } from '../gateway/errors.js'
import { protobufProblems } from '../gateway/rules.js'
import { configSchema, leafMeta, shown, type Config, type LeafMeta } from './schema.js'
import { formatDuration, formatSize } from './units.js'
import { deepFreeze } from './freeze.js'

export interface LoadOptions {
  path?: string | undefined
  env?: NodeJS.ProcessEnv | undefined
  cwd?: string | undefined
}

// GRIDGATE_* names that are not config keys, read by other parts (the store's test fault hooks).
export const RESERVED_ENV: readonly string[] = ['GRIDGATE_TEST_FAULTS']

const ENV_PREFIX = 'GRIDGATE'

type Path = Array<string | number>
type Schema = z.core.$ZodType
interface EnvSource { path: Path, name: string }

export function loadConfig (opts: LoadOptions = {}): Config {
  const cwd = opts.cwd ?? process.cwd()
  const file = opts.path === undefined ? undefined : resolve(cwd, opts.path)
  const source = file ?? 'the default configuration'

  let raw: unknown = {}
  if (file !== undefined) {
    const parsed = parseYaml(readConfigFile(file))
    if ('errors' in parsed) throw invalid(source, parsed.errors)
    raw = parsed.value ?? {} // An empty file, or one with only comments, means all defaults.
  }

  const env = applyEnv(raw, opts.env ?? process.env)
  if (env.unknown.length > 0) {
    throw new GridgateError('GG_ERR_ENV_UNKNOWN',
      `${env.unknown.length} GRIDGATE_* variable(s) not understood: ${env.unknown.join('; ')}`,
      { details: env.unknown })
  }

  const result = configSchema.safeParse(raw, { error: errorMap, reportInput: true })
  const baseDir = file === undefined ? cwd : dirname(file)
  // Rules' .proto files need the config's directory; they are checked even when other keys fail.
  const protobuf = protobufProblems(field(raw, 'rules'), (f) => resolve(baseDir, f)).map((p) => `${formatPath(p.path)}: ${p.message}`)
  const details = [...env.problems, ...(result.success ? [] : result.error.issues.flatMap((i) => formatIssue(i, env.sources))), ...protobuf]
  if (!result.success || details.length > 0) throw invalid(source, details)

  const config = result.data
  config.gateway.dataDir = resolve(baseDir, config.gateway.dataDir)
  // Certificate files, like the data dir, are relative to the config file's directory.
  for (const tls of [config.mqtt.tls, config.websocket.tls]) {
    if (tls === undefined) continue
    tls.cert = resolve(baseDir, tls.cert)
    tls.key = resolve(baseDir, tls.key)
  }
  if (config.mqtt.tls?.ca !== undefined) config.mqtt.tls.ca = resolve(baseDir, config.mqtt.tls.ca)
  for (const rule of config.rules) {
    if (rule.protobuf !== undefined) rule.protobuf.file = resolve(baseDir, rule.protobuf.file)
  }
  // Uplink TLS files are relative to the config file too.
  for (const u of config.uplinks) {
    if (u.tls === undefined) continue
    for (const k of ['ca', 'cert', 'key'] as const) {
      const v = u.tls[k]
      if (v !== undefined) u.tls[k] = resolve(baseDir, v)
    }
  }
  return deepFreeze(config)
}

// The effective config for `gridgate check-config`: units put back, secrets replaced.
export function renderConfig (config: Config): string {
  const doc = new YAML.Document(renderNode(configSchema, config))
  if (config.store.sync === 'normal') {
    const node = doc.getIn(['store', 'sync'], true)
    if (YAML.isScalar(node)) node.comment = ' survives a process crash, but not a power loss'
  }
  return doc.toString({ lineWidth: 0 })
}

function readConfigFile (file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw new GridgateError('GG_ERR_CONFIG_NOT_FOUND',
      `Cannot read the configuration file ${file}: ${(err as Error).message}`, { cause: err })
  }
}

function invalid (source: string, details: string[]): GridgateError {
  const n = details.length
  return new GridgateError('GG_ERR_CONFIG_INVALID',
    `${source} does not validate (${n} problem${n === 1 ? '' : 's'}): ${details.join('; ')}`, { details })
}

function parseYaml (text: string): { value: unknown } | { errors: string[] } {
  const lineCounter = new YAML.LineCounter()
  const doc = YAML.parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false, resolveKnownTags: false })
  // Warnings (an unknown tag, say) are errors too: the value would not be what the user meant.
  const problems = [...doc.errors, ...doc.warnings]
  if (problems.length > 0) {
    return {
      errors: problems.map((e) => {
        const { line, col } = lineCounter.linePos(e.pos[0])
        return `line ${line}, column ${col}: ${e.message}`
      }),
    }
  }
  try {
    return { value: doc.toJS() }
  } catch (err) {
    return { errors: [(err as Error).message] } // e.g. too many alias expansions
  }
}

// ---------------------------------------------------------------------------------------------------
// Messages. Schema-level messages are complete; this map words zod's built-in issues the same way.

const TYPE_NAMES: Readonly<Record<string, string>> = {
  object: 'a mapping', array: 'a list', boolean: 'true or false', int: 'an integer', number: 'a number', string: 'a string',
}

const errorMap: z.core.$ZodErrorMap = (iss) => {
  const got = iss.input === undefined ? '' : `, got ${shown(iss.input)}`
  const unit = (origin: string) => origin === 'string' ? ' characters' : origin === 'array' ? ' items' : ''
  switch (iss.code) {
    case 'invalid_type':
      return iss.input === undefined ? 'required' : `expected ${TYPE_NAMES[iss.expected] ?? iss.expected}${got}`
    case 'invalid_value':
      return `expected ${oneOf(iss.values)}${got}`
    case 'too_small':
      if (iss.origin === 'string' && iss.minimum === 1) return `expected a non-empty string${got}`
      return `expected at least ${iss.minimum}${unit(iss.origin)}${iss.origin === 'array' ? '' : got}`
    case 'too_big':
      return `expected at most ${iss.maximum}${unit(iss.origin)}${iss.origin === 'array' ? '' : got}`
    case 'invalid_format':
      return `expected ${iss.format === 'regex' ? `to match ${String(iss.pattern)}` : iss.format}${got}`
    case 'invalid_union': {
      if (iss.discriminator === undefined || !Array.isArray(iss.options)) return undefined
      const value = (iss.input as Record<string, unknown> | undefined)?.[iss.discriminator]
      return `expected ${oneOf(iss.options)}${value === undefined ? '' : `, got ${shown(value)}`}`
    }
    default:
      return undefined
  }
}

function oneOf (values: readonly unknown[]): string {
  const list = values.map((v) => JSON.stringify(v)).join(', ')
  return values.length === 1 ? list : `one of ${list}`
}

function formatPath (path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)'
  return path.map((p, i) => typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`).join('')
}

function formatIssue (issue: z.core.$ZodIssue, sources: readonly EnvSource[]): string[] {
  if (issue.code === 'unrecognized_keys') return issue.keys.map((k) => `${formatPath([...issue.path, k])}: unknown key`)
  // A value that came from the environment is not in the file: say where to look.
  const from = sources.find((s) => s.path.every((p, i) => issue.path[i] === p))
  return [`${formatPath(issue.path)}: ${issue.message}${from === undefined ? '' : ` (from ${from.name})`}`]
}

// ---------------------------------------------------------------------------------------------------
// Walking the schema. Env names and rendering are derived from the schema's shape, so a key added
// to the schema is overridable and printable without touching this file.

function unwrap (s: Schema): Schema {
  for (;;) {
    if (s instanceof z.core.$ZodDefault || s instanceof z.core.$ZodPrefault || s instanceof z.core.$ZodOptional) {
      s = s._zod.def.innerType
    } else if (s instanceof z.core.$ZodPipe) {
      s = s._zod.def.in
    } else {
      return s
    }
  }
}

function metaOf (s: Schema): LeafMeta | undefined {
  for (let cur: Schema | undefined = s; cur !== undefined;) {
    const meta = leafMeta.get(cur)
    if (meta !== undefined) return meta
    const def: object = cur._zod.def
    cur = 'innerType' in def ? def.innerType as Schema : 'in' in def ? def.in as Schema : undefined
  }
  return undefined
}

function field (value: unknown, key: string | number): unknown {
  return typeof value === 'object' && value !== null ? (value as Record<string | number, unknown>)[key] : undefined
}

// The object shape that describes `value`. For a discriminated union that is the option named by the
// value's discriminator, or all options merged when it names none (validation reports that).
function shapeOf (s: Schema, value: unknown): Readonly<Record<string, Schema>> | undefined {
  const inner = unwrap(s)
  if (inner instanceof z.core.$ZodObject) return inner._zod.def.shape
  if (!(inner instanceof z.core.$ZodDiscriminatedUnion)) return undefined
  const disc = inner._zod.def.discriminator
  const shapes = inner._zod.def.options.map((o) => shapeOf(o, undefined) ?? {})
  const match = shapes.find((shape) => {
    const literal = shape[disc] === undefined ? undefined : unwrap(shape[disc])
    return literal instanceof z.core.$ZodLiteral && literal._zod.def.values.includes(field(value, disc) as never)
  })
  return match ?? Object.assign({}, ...shapes)
}

// Lists of objects (devices, uplinks) are addressed by their items' name or id.
// The keys that identify an item (its id, its type) are not overridable: they say which item it is.
function collectionOf (s: Schema): { element: Schema, idKey: string, fixed: string[] } | undefined {
  const inner = unwrap(s)
  if (!(inner instanceof z.core.$ZodArray)) return undefined
  const element = inner._zod.def.element
  const shape = shapeOf(element, undefined)
  const idKey = shape === undefined ? undefined : ['name', 'id'].find((k) => k in shape)
  if (idKey === undefined) return undefined
  const union = unwrap(element)
  const fixed = union instanceof z.core.$ZodDiscriminatedUnion ? [idKey, union._zod.def.discriminator] : [idKey]
  return { element, idKey, fixed }
}

function renderNode (s: Schema, value: unknown): unknown {
  const meta = metaOf(s)
  if (meta?.secret === true && value !== undefined) return '<redacted>'
  // A password inside a URL (https://user:pass@host/) is a secret too.
  if (typeof value === 'string' && /^[a-z][a-z0-9+.-]*:\/\/[^/@]*:[^/@]*@/i.test(value)) return value.replace(/:\/\/([^/:@]*):[^/@]*@/, '://$1:<redacted>@')
  if (meta?.unit === 'size' && typeof value === 'number') return formatSize(value)
  if (meta?.unit === 'duration' && typeof value === 'number') return formatDuration(value)
  const inner = unwrap(s)
  if (Array.isArray(value)) {
    return inner instanceof z.core.$ZodArray ? value.map((v) => renderNode(inner._zod.def.element, v)) : value
  }
  const shape = shapeOf(s, value)
  if (shape === undefined || typeof value !== 'object' || value === null) return value
  // Schema order, not the order transforms happened to build the object in.
  const out: Record<string, unknown> = {}
  for (const key of new Set([...Object.keys(shape), ...Object.keys(value)])) {
    const v = field(value, key)
    if (v !== undefined) out[key] = shape[key] === undefined ? v : renderNode(shape[key], v)
  }
  return out
}

// ---------------------------------------------------------------------------------------------------
// Env overrides: GRIDGATE_ + upper snake case of the path, list items by name or id.

interface EnvTarget { path: Path, schema: Schema }
interface EnvTargets {
  byName: Map<string, EnvTarget | { ambiguous: Path[] }>
  collections: Array<{ prefix: string, path: Path, idKey: string, known: string[] }>
}

const snakeKey = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()
const snakeId = (id: string) => id.replace(/[-.]/g, '_').toUpperCase()

function collectTargets (s: Schema, value: unknown, name: string, path: Path, out: EnvTargets, fixed: readonly string[] = []): void {
  const collection = collectionOf(s)
  if (collection !== undefined) {
    const known: string[] = []
    for (const [i, item] of (Array.isArray(value) ? value : []).entries()) {
      const id = field(item, collection.idKey)
      if (typeof id !== 'string') continue
      known.push(snakeId(id))
      collectTargets(collection.element, item, `${name}_${snakeId(id)}`, [...path, i], out, collection.fixed)
    }
    out.collections.push({ prefix: `${name}_`, path, idKey: collection.idKey, known })
    return
  }
  const shape = shapeOf(s, value)
  if (shape !== undefined) {
    for (const [key, child] of Object.entries(shape)) {
      if (!fixed.includes(key)) collectTargets(child, field(value, key), `${name}_${snakeKey(key)}`, [...path, key], out)
    }
    return
  }
  const existing = out.byName.get(name)
  if (existing === undefined) out.byName.set(name, { path, schema: s })
  else out.byName.set(name, { ambiguous: [...('ambiguous' in existing ? existing.ambiguous : [existing.path]), path] })
}

function envTargets (raw: unknown): EnvTargets {
  const targets: EnvTargets = { byName: new Map(), collections: [] }
  collectTargets(configSchema, raw, ENV_PREFIX, [], targets)
  return targets
}

// Names valid for this (raw, unvalidated) file: every leaf of the schema, list items from the file.
export function envOverrideNames (raw: unknown = {}): string[] {
  return [...envTargets(raw).byName.keys()].sort()
}

function applyEnv (raw: unknown, env: NodeJS.ProcessEnv) {
  const targets = envTargets(raw)
  const unknown: string[] = []
  const problems: string[] = []
  const sources: EnvSource[] = []

  for (const name of Object.keys(env).sort()) {
    const text = env[name]
    if (!name.startsWith(`${ENV_PREFIX}_`) || RESERVED_ENV.includes(name) || text === undefined) continue
    const target = targets.byName.get(name)
    if (target === undefined) {
      unknown.push(`${name}: names no configuration key${collectionHint(name, targets)}`)
    } else if ('ambiguous' in target) {
      unknown.push(`${name}: names more than one key (${target.ambiguous.map(formatPath).join(', ')}); rename the items so their names differ in upper snake case`)
    } else {
      const value = envValue(text, target.schema)
      if ('errors' in value) problems.push(`${formatPath(target.path)}: ${name} is not a YAML value: ${value.errors.join('; ')}`)
      else if (setIn(raw, target.path, value.value)) sources.push({ path: target.path, name })
    }
  }
  return { unknown, problems, sources }
}

function collectionHint (name: string, targets: EnvTargets): string {
  const c = targets.collections.find((c) => name.startsWith(c.prefix))
  if (c === undefined) return ''
  const known = c.known.length === 0 ? 'the file has none' : `known: ${c.known.join(', ')}`
  return ` (items of ${formatPath(c.path)} are addressed by their ${c.idKey}; ${known})`
}

// A key that only takes a string gets the value verbatim: a digit-only token or id stays a string,
// and a secret with `#` or a leading `@` is not mangled by YAML. Other keys get YAML's typing
// (`true`, `1883`, `["a/#", "b"]`).
function envValue (text: string, schema: Schema): { value: unknown } | { errors: string[] } {
  return unwrap(schema) instanceof z.core.$ZodString ? { value: text } : parseYaml(text)
}

// Sections absent from the file are created; a node of the wrong type is left for validation to report.
function setIn (root: unknown, path: Path, value: unknown): boolean {
  let node = root
  for (const [i, key] of path.entries()) {
    if (typeof node !== 'object' || node === null) return false
    const obj = node as Record<string | number, unknown>
    if (i === path.length - 1) {
      obj[key] = value
      return true
    }
    if (obj[key] === undefined) obj[key] = {}
    node = obj[key]
  }
  return false
}
