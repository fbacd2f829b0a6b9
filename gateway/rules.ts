// Mapping rules: per topic, the event type, a content type for messages that declare none, the
// protobuf message type for protobuf payloads, and the field that holds the device's own time stamp.
// Compiled once at start; matching a topic is a walk over its levels, with no allocation when no rule
// matches. The first rule whose pattern matches wins.
//
// Patterns are MQTT topic filters whose levels may also be named captures: `devices/{deviceId}/{kind}`
// ({name} matches one level like '+' and names it), `+`, and `#` (the rest, last level only). A rule's
// `type` may use the captures (`sensor.{kind}`).

import type protobuf from 'protobufjs'
import { GridgateError } from './errors.js'
import type { EventData } from './event.js'
import { parseMediaType } from './decoders/index.js'
import { loadProtobufType } from './decoders/protobuf.js'

export interface RuleConfig {
  topic: string
  type?: string | undefined
  contentType?: string | undefined
  /** file: an absolute path once the config is loaded (relative paths resolve against the config's directory). */
  protobuf?: { file: string, message: string } | undefined
  deviceTime?: string | undefined
}

/** What the first matching rule says about one message. */
export interface RuleMatch {
  /** The event type, captures filled in. */
  type?: string
  contentType?: string
  protobuf?: protobuf.Type
  /** The dotted path of the device's time stamp in the decoded data. */
  deviceTime?: readonly string[]
}

// One level of a compiled pattern: a literal, '+' (any one level, captured when named), or '#'.
type Level = { literal: string } | { capture: string | null } | { rest: true }

const CAPTURE = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/
const PLACEHOLDER = /\{([^{}]*)\}/g
const FIELD_PATH = /^[^.]+(\.[^.]+)*$/

interface ParsedPattern { levels: Level[], captures: string[] }

/** Parse a rule's topic pattern; a string saying what is wrong when it is not valid. */
export function parseTopicPattern (pattern: string): ParsedPattern | string {
  if (pattern === '') return 'a topic pattern must not be empty'
  if (pattern.includes('\u0000')) return 'a topic pattern must not contain U+0000'
  const parts = pattern.split('/')
  const levels: Level[] = []
  const captures: string[] = []
  for (const [i, part] of parts.entries()) {
    if (part === '#') {
      if (i !== parts.length - 1) return "'#' must be the last level" // [MQTT-4.7.1-2]
      levels.push({ rest: true })
    } else if (part === '+') {
      levels.push({ capture: null })
    } else if (part.includes('#') || part.includes('+')) {
      return `'${part.includes('#') ? '#' : '+'}' must be alone in its level` // [MQTT-4.7.1-2], [MQTT-4.7.1-3]
    } else if (part.includes('{') || part.includes('}')) {
      const name = CAPTURE.exec(part)?.[1]
      if (name === undefined) return `${JSON.stringify(part)}: a capture is a whole level {name}, name of A-Z a-z 0-9 _ not starting with a digit`
      if (captures.includes(name)) return `capture {${name}} is used twice`
      captures.push(name)
      levels.push({ capture: name })
    } else {
      levels.push({ literal: part })
    }
  }
  return { levels, captures }
}

/** Problems with a type template given the pattern's captures (empty when it is fine). */
export function templateProblems (template: string, captures: readonly string[]): string[] {
  const problems: string[] = []
  for (const m of template.matchAll(PLACEHOLDER)) {
    const name = m[1] as string
    if (!captures.includes(name)) {
      problems.push(`{${name}} is not a capture of the topic pattern${captures.length === 0 ? ' (it has none)' : ` (captures: ${captures.map(c => `{${c}}`).join(', ')})`}`)
    }
  }
  return problems
}

/** Problems with a rule that do not need files: pattern, type template, content type, deviceTime path. */
export function ruleProblems (rule: Partial<RuleConfig>): Array<{ key: keyof RuleConfig, message: string }> {
  const problems: Array<{ key: keyof RuleConfig, message: string }> = []
  let captures: string[] = []
  if (typeof rule.topic === 'string') {
    const parsed = parseTopicPattern(rule.topic)
    if (typeof parsed === 'string') problems.push({ key: 'topic', message: `invalid topic pattern ${JSON.stringify(rule.topic)}: ${parsed}` })
    else captures = parsed.captures
  }
  if (typeof rule.type === 'string' && typeof rule.topic === 'string') {
    for (const message of templateProblems(rule.type, captures)) problems.push({ key: 'type', message })
  }
  if (typeof rule.contentType === 'string' && parseMediaType(rule.contentType.trim()) === undefined) {
    problems.push({ key: 'contentType', message: `expected a media type like application/cbor, got ${JSON.stringify(rule.contentType)}` })
  }
  if (typeof rule.deviceTime === 'string' && !FIELD_PATH.test(rule.deviceTime)) {
    problems.push({ key: 'deviceTime', message: `expected a dotted field path like ts or meta.time, got ${JSON.stringify(rule.deviceTime)}` })
  }
  return problems
}

interface CompiledRule {
  levels: Level[]
  /** A fixed type, or literal parts and capture indexes. */
  type: string | Array<string | { capture: number }> | undefined
  contentType: string | undefined
  protobuf: protobuf.Type | undefined
  deviceTime: string[] | undefined
}

export class Rules {
  private constructor (private readonly rules: readonly CompiledRule[]) {}

  static readonly none = new Rules([])

  /**
   * Compile rules (protobuf files absolute, as the loader leaves them). Throws GG_ERR_CONFIG_INVALID
   * naming the rule when one does not compile (the loader reports those problems first; a .proto
   * file can still disappear between loading and starting).
   */
  static compile (configs: readonly RuleConfig[]): Rules {
    const roots = new Map<string, protobuf.Root>()
    return new Rules(configs.map((c, i) => {
      const parsed = parseTopicPattern(c.topic)
      const problems = ruleProblems(c)
      if (typeof parsed === 'string' || problems.length > 0) {
        throw new GridgateError('GG_ERR_CONFIG_INVALID', `rules[${i}]: ${problems.map(p => `${p.key}: ${p.message}`).join('; ')}`)
      }
      let pb: protobuf.Type | undefined
      if (c.protobuf !== undefined) {
        try {
          pb = loadProtobufType(c.protobuf.file, c.protobuf.message, roots)
        } catch (err) {
          throw new GridgateError('GG_ERR_CONFIG_INVALID', `rules[${i}].protobuf: ${(err as Error).message}`, { cause: err })
        }
      }
      return {
        levels: parsed.levels,
        type: c.type === undefined ? undefined : compileTemplate(c.type, parsed.captures),
        contentType: c.contentType?.trim(),
        protobuf: pb,
        deviceTime: c.deviceTime?.split('.'),
      }
    }))
  }

  get size (): number { return this.rules.length }

  /** The first rule matching `topic`, or undefined. */
  match (topic: string): RuleMatch | undefined {
    if (this.rules.length === 0) return undefined
    for (const rule of this.rules) {
      if (!matchLevels(rule.levels, topic)) continue
      const m: RuleMatch = {}
      if (typeof rule.type === 'string') {
        m.type = rule.type
      } else if (rule.type !== undefined) {
        const captured: string[] = []
        matchLevels(rule.levels, topic, captured)
        m.type = rule.type.map(p => typeof p === 'string' ? p : captured[p.capture] ?? '').join('')
      }
      if (rule.contentType !== undefined) m.contentType = rule.contentType
      if (rule.protobuf !== undefined) m.protobuf = rule.protobuf
      if (rule.deviceTime !== undefined) m.deviceTime = rule.deviceTime
      return m
    }
    return undefined
  }
}

// The template as literal parts and capture indexes (positions in the pattern's capture list).
function compileTemplate (template: string, captures: readonly string[]): string | Array<string | { capture: number }> {
  const parts: Array<string | { capture: number }> = []
  let last = 0
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (m.index > last) parts.push(template.slice(last, m.index))
    parts.push({ capture: captures.indexOf(m[1] as string) })
    last = m.index + m[0].length
  }
  if (last < template.length) parts.push(template.slice(last))
  return parts.every(p => typeof p === 'string') ? template : parts
}

// Walks the topic level by level without splitting it: true when the pattern matches. With `out`,
// the captured levels are pushed to it in pattern order (done only once a rule matched, so a topic no
// rule matches allocates nothing).
function matchLevels (levels: readonly Level[], topic: string, out?: string[]): boolean {
  // [MQTT-4.7.2-1] wildcards at the first level do not match topics starting with '$'.
  if (topic.startsWith('$') && levels[0] !== undefined && !('literal' in levels[0])) return false
  let start = 0
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i] as Level
    if ('rest' in level) return true // '#' also matches the parent level [MQTT-4.7.1-2]
    if (start > topic.length) return false // the topic has fewer levels
    let end = topic.indexOf('/', start)
    if (end === -1) end = topic.length
    if ('literal' in level) {
      if (end - start !== level.literal.length || !topic.startsWith(level.literal, start)) return false
    } else if (level.capture !== null && out !== undefined) {
      out.push(topic.slice(start, end))
    }
    start = end + 1
  }
  return start === topic.length + 1
}

// ---- device time ----------------------------------------------------------------------------------

// RFC 3339 date-time (§5.6), with a time zone.
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/
// Epoch numbers below this are seconds, at or above it milliseconds: 1e11 s is the year 5138,
// 1e11 ms is March 1973, so no real clock reading is ambiguous.
const SECONDS_LIMIT = 1e11
const EPOCH_STRING = /^-?\d{1,16}(\.\d+)?$/

/**
 * The devicetime extension from decoded data: the value at `path` (object keys, or array indexes in
 * arrays) as RFC 3339 with ms in UTC. An RFC 3339 string or epoch seconds/milliseconds (a number, or
 * a string of digits as protobuf renders 64-bit integers) are understood;
 * anything else (absent field, other types, out of range) gives undefined: the event is stored
 * without devicetime, the device's data is never refused for it.
 */
export function deviceTime (data: EventData, path: readonly string[]): string | undefined {
  if (data.kind !== 'json') return undefined
  let v: unknown
  try {
    v = JSON.parse(data.text)
  } catch {
    return undefined
  }
  for (const key of path) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, key)) return undefined
    v = (v as Record<string, unknown>)[key]
  }
  if (typeof v === 'string' && EPOCH_STRING.test(v)) v = Number(v) // protobuf int64 fields arrive as strings
  let ms: number
  if (typeof v === 'string') {
    if (!RFC3339.test(v)) return undefined
    ms = Date.parse(v)
  } else if (typeof v === 'number' && Number.isFinite(v)) {
    ms = Math.abs(v) < SECONDS_LIMIT ? v * 1000 : v
  } else {
    return undefined
  }
  const date = new Date(Math.floor(ms))
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString()
}

/** For the config loader: protobuf problems of raw (unvalidated) rules, files resolved against baseDir. */
export function protobufProblems (rules: unknown, resolveFile: (file: string) => string): Array<{ path: Array<string | number>, message: string }> {
  if (!Array.isArray(rules)) return []
  const roots = new Map<string, protobuf.Root>()
  const problems: Array<{ path: Array<string | number>, message: string }> = []
  for (const [i, rule] of rules.entries()) {
    const pb = (rule as { protobuf?: unknown } | null)?.protobuf as { file?: unknown, message?: unknown } | undefined
    if (typeof pb !== 'object' || pb === null || typeof pb.file !== 'string' || typeof pb.message !== 'string' || pb.file === '') continue
    try {
      loadProtobufType(resolveFile(pb.file), pb.message, roots)
    } catch (err) {
      const message = (err as Error).message
      problems.push({ path: ['rules', i, 'protobuf', message.startsWith('cannot load') ? 'file' : 'message'], message })
    }
  }
  return problems
}
