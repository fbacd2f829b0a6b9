// The event's wire forms that need no protobuf schema: the direct encoder and decoder for the shape
// gridgate writes, and the JSON rendering. The store's reader thread renders batches with these (a
// worker in the single executable cannot load .proto files); gateway/event.ts adds protobufjs for
// every other shape and re-exports all of it.

import { Buffer, isUtf8 } from 'node:buffer'

export type EventData =
  | { kind: 'json', text: string } // normalized JSON text (always valid JSON), datacontenttype application/json
  | { kind: 'text', text: string }
  | { kind: 'binary', bytes: Uint8Array } // data_base64 in JSON

export interface GridEvent {
  id: string
  source: string
  type: string
  /** The topic; '' only for foreign events that had none (then it is not rendered). */
  subject: string
  /** Receipt time, RFC 3339 with milliseconds in UTC ('2024-05-01T12:00:00.123Z'). */
  time: string
  datacontenttype?: string
  data?: EventData
  /** Extension attributes by lowercase name (deviceid, protocol, gatewayid, sourcecontenttype, normalizeerror, traceparent...). */
  extensions: Record<string, string>
}

export const SPEC_VERSION = '1.0'
export interface Timestamp { seconds: number | { toNumber(): number }, nanos: number }

// ---- attribute names --------------------------------------------------------------------------------

// CloudEvents 1.0 §"Attribute Naming Convention": lowercase ASCII letters and digits only.
export const ATTRIBUTE_NAME = /^[a-z0-9]+$/

// Attributes with a place of their own in GridEvent or in the JSON envelope; never extensions.
export const RESERVED = new Set([
  'specversion', 'id', 'source', 'type', 'subject', 'time', 'datacontenttype', 'data', 'data_base64',
])
// Added by the rendering functions from their arguments; an extension of the same name is ignored there.
const RENDERED = new Set([...RESERVED, 'storeid', 'sequence'])

// ---- time stamps and bytes ---------------------------------------------------------------------

export function toTimestamp (time: string): Timestamp {
  const ms = Date.parse(time)
  if (Number.isNaN(ms)) throw new TypeError(`event time is not RFC 3339: ${JSON.stringify(time)}`)
  return timestampOfMs(ms)
}

/** A time in milliseconds since the epoch as a protobuf Timestamp. */
export function timestampOfMs (ms: number): Timestamp {
  const seconds = Math.floor(ms / 1000)
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 }
}

export function fromTimestamp (ts: Timestamp): string {
  const seconds = typeof ts.seconds === 'number' ? ts.seconds : ts.seconds.toNumber()
  const date = new Date(seconds * 1000 + Math.floor(ts.nanos / 1_000_000))
  if (Number.isNaN(date.getTime())) throw new TypeError('event time stamp is out of range')
  return date.toISOString()
}

export function base64 (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')
}

// ---- the hot path's encoder ----------------------------------------------------------------------
// Every device message is encoded once at ingest. protobufjs' Writer allocates an operation object per
// field and a state per nested message; this writes the same bytes (tests compare it with protobufjs'
// output, field by field and map entry by map entry, in protobufjs' order) into one buffer.

const TAG_ID = 0x0a
const TAG_SOURCE = 0x12
const TAG_SPEC_VERSION = 0x1a
const TAG_TYPE = 0x22
const TAG_ATTRIBUTE = 0x2a
const TAG_BINARY_DATA = 0x32
const TAG_TEXT_DATA = 0x3a
const TAG_ENTRY_KEY = 0x0a
const TAG_ENTRY_VALUE = 0x12
const TAG_CE_STRING = 0x1a
const TAG_CE_TIMESTAMP = 0x3a
const TAG_SECONDS = 0x08
const TAG_NANOS = 0x10
/** CloudEventBatch's `repeated CloudEvent events = 1`. */
const TAG_BATCH_EVENT = 0x0a

function varintSize (n: number): number {
  let size = 1
  while (n >= 0x80) { n = Math.floor(n / 128); size++ }
  return size
}

function writeVarint (buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n % 128) | 0x80
    n = Math.floor(n / 128)
  }
  buf[at++] = n
  return at
}

/** Strings up to this many UTF-16 units are measured and written in JS (a native call costs more). */
const SHORT_STRING = 64

/** UTF-8 length, as Buffer.byteLength (lone surrogates count as U+FFFD's three bytes). */
function utf8Length (s: string): number {
  if (s.length > SHORT_STRING) return Buffer.byteLength(s)
  let n = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) n += 1
    else if (c < 0x800) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n += 4; i++ } else n += 3
  }
  return n
}

/** A length-delimited field's size: tag, length, payload. */
const fieldSize = (len: number): number => 1 + varintSize(len) + len

// encodeDirect's scratch space, reused by every call (one runs at a time): an event's attributes and
// their measured lengths. Entries past the current event's count are left over from earlier ones.
const attrNames: string[] = []
const attrValues: string[] = []
const attrStrLens: number[] = []
const attrValueLens: number[] = []
const attrEntryLens: number[] = []

/** A length-delimited string field at `at`; returns the position after it. */
function writeString (buf: Buffer, at: number, tag: number, s: string, len: number): number {
  buf[at++] = tag
  at = writeVarint(buf, at, len)
  if (len === s.length && len <= SHORT_STRING) {
    // ASCII: one byte per unit.
    for (let i = 0; i < len; i++) buf[at + i] = s.charCodeAt(i)
    return at + len
  }
  return at + buf.write(s, at, len, 'utf8')
}

// ---- stored events for a gRPC uplink ---------------------------------------------------------------
// A stored event goes out as its bytes, followed by the storeid and sequence entries of its
// `attributes` map. A protobuf parser merges the fields of a message in the order they come and keeps
// the last value of a map key seen twice, so this decodes as the event decoded, given the two
// attributes and encoded again would (tested), and keeps even fields this gateway does not know.
// Decoding and encoding every event with protobufjs was about a tenth of the main thread while a
// backlog drained to a gRPC uplink.

/** The value and entry lengths of an `attributes` entry holding a ce_string, from the UTF-8 lengths. */
function stringEntryLens (keyLen: number, valueLen: number): { value: number, entry: number } {
  const value = fieldSize(valueLen)
  return { value, entry: fieldSize(keyLen) + fieldSize(value) }
}

/** An `attributes` entry holding a ce_string at `at`; returns the position after it. */
function writeStringEntry (buf: Buffer, at: number, key: string, value: string): number {
  const keyLen = utf8Length(key)
  const valueLen = utf8Length(value)
  const lens = stringEntryLens(keyLen, valueLen)
  buf[at++] = TAG_ATTRIBUTE
  at = writeVarint(buf, at, lens.entry)
  at = writeString(buf, at, TAG_ENTRY_KEY, key, keyLen)
  buf[at++] = TAG_ENTRY_VALUE
  at = writeVarint(buf, at, lens.value)
  return writeString(buf, at, TAG_CE_STRING, value, valueLen)
}

/** The storeid entry of the last store asked for (one per gateway). */
let storeIdEntry: { storeId: string, bytes: Buffer } | null = null

function storeIdBytes (storeId: string): Buffer {
  if (storeIdEntry?.storeId !== storeId) {
    const bytes = Buffer.allocUnsafeSlow(fieldSize(stringEntryLens(7, utf8Length(storeId)).entry))
    writeStringEntry(bytes, 0, 'storeid', storeId)
    storeIdEntry = { storeId, bytes }
  }
  return storeIdEntry.bytes
}

/** The sequence entry's size: formatSequence always gives 20 ASCII digits. */
const SEQUENCE_ENTRY_SIZE = fieldSize(stringEntryLens(8, 20).entry)

/** Bytes of a stored event as toProtoWithSequence writes it. */
function withSequenceSize (bodyLen: number, storeId: string): number {
  return bodyLen + storeIdBytes(storeId).byteLength + SEQUENCE_ENTRY_SIZE
}

function writeWithSequence (buf: Buffer, at: number, body: Uint8Array, storeId: string, seq: number): number {
  const store = storeIdBytes(storeId)
  buf.set(body, at)
  buf.set(store, at + body.byteLength)
  return writeStringEntry(buf, at + body.byteLength + store.byteLength, 'sequence', formatSequence(seq))
}

/** The stored event with the storeid and sequence extensions (ce_string), for a gRPC sink. */
export function toProtoWithSequence (body: Uint8Array, storeId: string, seq: number): Uint8Array {
  const buf = Buffer.allocUnsafe(withSequenceSize(body.byteLength, storeId))
  writeWithSequence(buf, 0, body, storeId, seq)
  return buf
}

/** Bytes one stored event takes in a CloudEventBatch (`repeated CloudEvent events = 1`). */
export function protoBatchEventSize (bodyLen: number, storeId: string): number {
  return fieldSize(withSequenceSize(bodyLen, storeId))
}

/**
 * One stored event of a CloudEventBatch at `at` (field 1, length-delimited, then the event as
 * toProtoWithSequence gives it); returns the position after it. A batch is its events one after another.
 */
export function writeProtoBatchEvent (buf: Buffer, at: number, body: Uint8Array, storeId: string, seq: number): number {
  buf[at++] = TAG_BATCH_EVENT
  at = writeVarint(buf, at, withSequenceSize(body.byteLength, storeId))
  return writeWithSequence(buf, at, body, storeId, seq)
}

/** An io.cloudevents.v1.CloudEventBatch of stored events, each with storeid and sequence. */
export function encodeProtoBatch (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string): Uint8Array {
  let size = 0
  for (const e of events) size += protoBatchEventSize(e.body.byteLength, storeId)
  const buf = Buffer.allocUnsafe(size)
  let at = 0
  for (const e of events) at = writeProtoBatchEvent(buf, at, e.body, storeId, e.seq)
  return buf
}

// The constant part of the last event encoded in full: its source, spec version and type fields
// ("head") and its attribute entries after the time stamp (subject, content type, extensions), as bytes,
// with the strings they were made from. A device's consecutive events share them: they are copied
// instead of measured and written character by character (that was half of the encoder's time).
const tplNames: string[] = []
const tplValues: string[] = []
let tplCount = -1
let tplSource = ''
let tplType = ''
/** Template bytes at most (longer constant parts are encoded in full every time). */
const TEMPLATE_BYTES = 1024
const tplBytes = Buffer.allocUnsafeSlow(TEMPLATE_BYTES)
let tplHeadLen = 0
let tplAttrsLen = 0

/** Whether the event's attributes after the time stamp, source and type are the template's. */
function matchesTemplate (ev: GridEvent, count: number): boolean {
  if (count !== tplCount || ev.source !== tplSource || ev.type !== tplType) return false
  for (let i = 1; i < count; i++) if (attrNames[i] !== tplNames[i] || attrValues[i] !== tplValues[i]) return false
  return true
}

/** The time attribute's map entry (protobufjs leaves out a Timestamp's zero fields). */
function writeTimeEntry (buf: Buffer, at: number, entryLen: number, valueLen: number, timestampLen: number, seconds: number, nanos: number): number {
  buf[at++] = TAG_ATTRIBUTE
  at = writeVarint(buf, at, entryLen)
  at = writeString(buf, at, TAG_ENTRY_KEY, 'time', 4)
  buf[at++] = TAG_ENTRY_VALUE
  at = writeVarint(buf, at, valueLen)
  buf[at++] = TAG_CE_TIMESTAMP
  at = writeVarint(buf, at, timestampLen)
  if (seconds !== 0) {
    buf[at++] = TAG_SECONDS
    at = writeVarint(buf, at, seconds)
  }
  if (nanos !== 0) {
    buf[at++] = TAG_NANOS
    at = writeVarint(buf, at, nanos)
  }
  return at
}

export function encodeDirect (ev: GridEvent, seconds: number, nanos: number): Uint8Array {
  // Attribute values in protobufjs' order (the object's insertion order): time, subject,
  // datacontenttype, then the extensions. Strings' UTF-8 lengths are measured once.
  const names = attrNames
  const values = attrValues
  let count = 0
  names[count] = 'time'; values[count++] = ''
  if (ev.subject !== '') { names[count] = 'subject'; values[count++] = ev.subject }
  if (ev.datacontenttype !== undefined) { names[count] = 'datacontenttype'; values[count++] = ev.datacontenttype }
  for (const name in ev.extensions) { names[count] = name; values[count++] = ev.extensions[name] as string }
  const timestampLen = (seconds === 0 ? 0 : 1 + varintSize(seconds)) + (nanos === 0 ? 0 : 1 + varintSize(nanos))
  const timeValueLen = fieldSize(timestampLen)
  const timeEntryLen = fieldSize(4) + fieldSize(timeValueLen)
  const idLen = utf8Length(ev.id)
  const data = ev.data
  let dataLen = 0
  if (data !== undefined) dataLen = data.kind === 'binary' ? data.bytes.byteLength : utf8Length(data.text)
  const dataSize = data === undefined ? 0 : fieldSize(dataLen)
  if (matchesTemplate(ev, count)) {
    const size = fieldSize(idLen) + tplHeadLen + fieldSize(timeEntryLen) + tplAttrsLen + dataSize
    const buf = Buffer.allocUnsafe(size)
    let at = writeString(buf, 0, TAG_ID, ev.id, idLen)
    at += tplBytes.copy(buf, at, 0, tplHeadLen)
    at = writeTimeEntry(buf, at, timeEntryLen, timeValueLen, timestampLen, seconds, nanos)
    at += tplBytes.copy(buf, at, tplHeadLen, tplHeadLen + tplAttrsLen)
    return finish(buf, at, size, data, dataLen)
  }
  const sourceLen = utf8Length(ev.source)
  const typeLen = utf8Length(ev.type)
  let size = fieldSize(idLen) + fieldSize(sourceLen) + fieldSize(SPEC_VERSION.length) + fieldSize(typeLen) + fieldSize(timeEntryLen) + dataSize
  for (let i = 1; i < count; i++) {
    const strLen = utf8Length(values[i]!)
    attrStrLens[i] = strLen
    const valueLen = fieldSize(strLen)
    attrValueLens[i] = valueLen
    const entryLen = fieldSize(names[i]!.length) + fieldSize(valueLen)
    attrEntryLens[i] = entryLen
    size += fieldSize(entryLen)
  }
  const buf = Buffer.allocUnsafe(size)
  let at = writeString(buf, 0, TAG_ID, ev.id, idLen)
  const headStart = at
  at = writeString(buf, at, TAG_SOURCE, ev.source, sourceLen)
  at = writeString(buf, at, TAG_SPEC_VERSION, SPEC_VERSION, SPEC_VERSION.length)
  at = writeString(buf, at, TAG_TYPE, ev.type, typeLen)
  const headEnd = at
  at = writeTimeEntry(buf, at, timeEntryLen, timeValueLen, timestampLen, seconds, nanos)
  const attrsStart = at
  for (let i = 1; i < count; i++) {
    buf[at++] = TAG_ATTRIBUTE
    at = writeVarint(buf, at, attrEntryLens[i]!)
    at = writeString(buf, at, TAG_ENTRY_KEY, names[i]!, names[i]!.length)
    buf[at++] = TAG_ENTRY_VALUE
    at = writeVarint(buf, at, attrValueLens[i]!)
    at = writeString(buf, at, TAG_CE_STRING, values[i]!, attrStrLens[i]!)
  }
  if (headEnd - headStart + at - attrsStart <= TEMPLATE_BYTES) {
    tplHeadLen = buf.copy(tplBytes, 0, headStart, headEnd)
    tplAttrsLen = buf.copy(tplBytes, tplHeadLen, attrsStart, at)
    tplSource = ev.source
    tplType = ev.type
    for (let i = 1; i < count; i++) { tplNames[i] = names[i]!; tplValues[i] = values[i]! }
    tplCount = count
  } else {
    tplCount = -1
  }
  return finish(buf, at, size, data, dataLen)
}

/** Writes the data field (text or bytes) at `at` and checks the size measured beforehand. */
function finish (buf: Buffer, at: number, size: number, data: EventData | undefined, dataLen: number): Buffer {
  if (data !== undefined) {
    if (data.kind === 'binary') {
      buf[at++] = TAG_BINARY_DATA
      at = writeVarint(buf, at, dataLen)
      buf.set(data.bytes, at)
      at += dataLen
    } else {
      at = writeString(buf, at, TAG_TEXT_DATA, data.text, dataLen)
    }
  }
  if (at !== size) throw new Error(`event encoder wrote ${at} of ${size} bytes`)
  return buf
}

/** Why the direct decoder hands an event to protobufjs: a shape gridgate's encoder never writes. */
class Unusual extends Error {}
const unusual = new Unusual()

/** One decoded attribute in its place: the GridEvent's own fields, else an extension. */
export function setAttribute (ev: GridEvent, name: string, value: string): void {
  switch (name) {
    case 'time': ev.time = value; break
    case 'subject': ev.subject = value; break
    case 'datacontenttype': ev.datacontenttype = value; break
    // Carried by the message's own fields (or the data oneof), never as attributes.
    case 'specversion': case 'id': case 'source': case 'type': case 'data': break
    default: ev.extensions[name] = value
  }
}

/**
 * Decodes the shape encodeEvent writes (string attributes, the time stamp, text or binary data) straight
 * from the wire format, which is what forwarding a backlog spends most of its time on; null for
 * anything else (foreign attribute kinds, unknown or repeated fields, malformed bytes), which
 * protobufjs then decodes, or refuses.
 */
export function decodeDirect (bytes: Uint8Array): GridEvent | null {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let at = 0
  const end = buf.length
  const varint = (): number => {
    let n = 0
    let mul = 1
    for (let i = 0; i < 8; i++) {
      if (at >= end) throw unusual
      const b = buf[at++]!
      n += (b & 0x7f) * mul
      if (b < 0x80) return n
      mul *= 128
    }
    throw unusual
  }
  const length = (): number => {
    const len = varint()
    if (at + len > end) throw unusual
    return len
  }
  const text = (): string => {
    const len = length()
    const s = buf.toString('utf8', at, at + len)
    at += len
    return s
  }
  try {
    const ev: GridEvent = { id: '', source: '', type: '', subject: '', time: '', extensions: {} }
    let seen = 0
    let dataKind = 0
    let dataStart = 0
    let dataEnd = 0
    const names = new Set<string>()
    while (at < end) {
      const tag = varint()
      const field = Math.floor(tag / 8)
      if (tag % 8 !== 2 || field < 1 || field > 7) throw unusual
      const bit = 1 << field
      if (field !== 5 && (seen & bit) !== 0) throw unusual
      seen |= bit
      switch (field) {
        case 1: ev.id = text(); break
        case 2: ev.source = text(); break
        case 3: text(); break
        case 4: ev.type = text(); break
        case 5: {
          const entryLen = length()
          const entryEnd = at + entryLen
          if (varint() !== TAG_ENTRY_KEY) throw unusual
          const name = text()
          if (names.has(name) || varint() !== TAG_ENTRY_VALUE) throw unusual
          names.add(name)
          const valueLen = length()
          const valueEnd = at + valueLen
          const kind = varint()
          let value: string
          if (kind === TAG_CE_STRING) {
            value = text()
          } else if (kind === TAG_CE_TIMESTAMP) {
            const tsLen = length()
            const tsEnd = at + tsLen
            let seconds = 0
            let nanos = 0
            while (at < tsEnd) {
              const t = varint()
              if (t === TAG_SECONDS) seconds = varint()
              else if (t === TAG_NANOS) nanos = varint()
              else throw unusual
            }
            value = fromTimestamp({ seconds, nanos })
          } else {
            throw unusual
          }
          if (at !== valueEnd || at !== entryEnd) throw unusual
          setAttribute(ev, name, value)
          break
        }
        case 6: case 7: {
          if (dataKind !== 0) throw unusual
          dataKind = field
          const len = length()
          dataStart = at
          dataEnd = at + len
          at = dataEnd
          break
        }
        default: throw unusual
      }
    }
    if (dataKind === 7) {
      const t = buf.toString('utf8', dataStart, dataEnd)
      ev.data = ev.datacontenttype === 'application/json' ? { kind: 'json', text: t } : { kind: 'text', text: t }
    } else if (dataKind === 6) {
      ev.data = { kind: 'binary', bytes: buf.subarray(dataStart, dataEnd) }
    }
    return ev
  } catch (err) {
    if (err === unusual) return null
    throw err
  }
}

// ---- JSON -------------------------------------------------------------------------------------------

/**
 * The CloudEvents sequence extension is a string compared lexicographically, so the store's integer
 * sequence is zero-padded to 20 digits (enough for any unsigned 64-bit value).
 */
export function formatSequence (seq: number): string {
  if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError(`sequence must be a non-negative safe integer, got ${seq}`)
  return String(seq).padStart(20, '0')
}

const quote = JSON.stringify as (s: string) => string

/** A first guess at an event's size in a JSON batch (the writer grows past it). */
export const JSON_BYTES_PER_EVENT = 768

/** Lowercase hex digits, as JSON.stringify writes \u00XX escapes. */
const HEX = Buffer.from('0123456789abcdef', 'latin1')

/** Characters JSON.stringify would escape (quotes, backslash, controls) or must look at (surrogates). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/

/**
 * UTF-8 JSON text written straight into one growing buffer: a batch's request body without a string
 * per field, per event and per batch (those strings were the largest share of what the main thread
 * allocated per forwarded event). The bytes are exactly Buffer.from() of the text renderJson returns.
 */
export class JsonOut {
  private buf: Buffer
  length = 0

  /**
   * `alloc` gives the buffers (the reader thread's pool of buffers handed back); otherwise each is its
   * own allocation, never from Node's pool: the bytes may be transferred to another thread.
   */
  constructor (capacity = 4096, private readonly alloc?: (bytes: number) => ArrayBuffer) {
    this.buf = this.fresh(capacity)
  }

  private fresh (bytes: number): Buffer {
    return this.alloc === undefined ? Buffer.allocUnsafeSlow(bytes) : Buffer.from(this.alloc(bytes))
  }

  private room (bytes: number): void {
    if (this.length + bytes <= this.buf.length) return
    const next = this.fresh(Math.max(this.buf.length * 2, this.length + bytes))
    this.buf.copy(next, 0, 0, this.length)
    this.buf = next
  }

  /** Text known to be ASCII (names, digits, base64, literal punctuation). */
  ascii (text: string): void {
    this.room(text.length)
    this.length += this.buf.write(text, this.length, 'latin1')
  }

  /** Any text, UTF-8 encoded as it is (valid JSON already, or the inside of a string needing no escape). */
  utf8 (text: string): void {
    this.room(text.length * 3)
    this.length += this.buf.write(text, this.length, 'utf8')
  }

  byte (b: number): void {
    this.room(1)
    this.buf[this.length++] = b
  }

  /** A JSON string: the text between quotes when nothing in it needs escaping, else JSON.stringify's. */
  string (text: string): void {
    if (NEEDS_ESCAPE.test(text)) {
      this.utf8(quote(text))
      return
    }
    this.byte(0x22)
    this.utf8(text)
    this.byte(0x22)
  }

  /** Bytes copied as they are: JSON text already, known to be valid UTF-8. */
  raw (src: Buffer, start: number, end: number): void {
    this.room(end - start)
    this.length += src.copy(this.buf, this.length, start, end)
  }

  /**
   * A JSON string of the text UTF-8 bytes encode, escaped byte by byte exactly as JSON.stringify
   * escapes that text. False (and the writer as it was) when the bytes are not valid UTF-8: decoding
   * would have replaced them, so the caller renders from the decoded text instead.
   */
  escaped (src: Buffer, start: number, end: number): boolean {
    this.room(2 + 6 * (end - start))
    const buf = this.buf
    let at = this.length
    let high = 0
    buf[at++] = 0x22
    for (let i = start; i < end; i++) {
      const b = src[i]!
      if (b >= 0x20 && b !== 0x22 && b !== 0x5c) {
        high |= b
        buf[at++] = b
        continue
      }
      buf[at++] = 0x5c
      switch (b) {
        case 0x22: buf[at++] = 0x22; break
        case 0x5c: buf[at++] = 0x5c; break
        case 0x08: buf[at++] = 0x62; break
        case 0x09: buf[at++] = 0x74; break
        case 0x0a: buf[at++] = 0x6e; break
        case 0x0c: buf[at++] = 0x66; break
        case 0x0d: buf[at++] = 0x72; break
        default:
          buf[at++] = 0x75; buf[at++] = 0x30; buf[at++] = 0x30
          buf[at++] = HEX[b >> 4]!; buf[at++] = HEX[b & 15]!
      }
    }
    buf[at++] = 0x22
    if (high >= 0x80 && !isUtf8(src.subarray(start, end))) return false
    this.length = at
    return true
  }

  /** Bytes copied in JS (a native copy costs more for a few bytes): names, constant pieces. */
  small (src: Uint8Array, start = 0, end = src.length): void {
    this.room(end - start)
    const buf = this.buf
    let at = this.length
    for (let i = start; i < end; i++) buf[at++] = src[i]!
    this.length = at
  }

  /** A non-negative integer in decimal, zero-padded to `width` digits. */
  padded (n: number, width: number): void {
    this.room(Math.max(width, 17))
    const buf = this.buf
    let digits = 1
    for (let m = n; m >= 10; m = Math.floor(m / 10)) digits++
    let at = this.length
    for (let i = digits; i < width; i++) buf[at++] = 0x30
    let end = at + digits
    this.length = end
    do {
      buf[--end] = 0x30 + (n % 10)
      n = Math.floor(n / 10)
    } while (n > 0)
  }

  /** Copies bytes written (start..end) into `target` at `at`; returns how many. */
  copyTo (target: Buffer, at: number, start: number, end: number): number {
    return this.buf.copy(target, at, start, end)
  }

  /** Drops what was written after `length` (an event given up half way). */
  truncate (length: number): void {
    this.length = length
  }

  /** The bytes written (a view of this writer's buffer, which owns its ArrayBuffer). */
  bytes (): Buffer {
    return this.buf.subarray(0, this.length)
  }
}

/**
 * One structured-mode CloudEvents JSON object (CloudEvents JSON format §3) with the storeid and
 * sequence extensions, appended to `out`. JSON data is inlined as it is (already valid JSON).
 */
export function writeJson (out: JsonOut, ev: GridEvent, storeId: string, sequence: number): void {
  out.ascii('{"specversion":"1.0","id":')
  out.string(ev.id)
  out.ascii(',"source":')
  out.string(ev.source)
  out.ascii(',"type":')
  out.string(ev.type)
  if (ev.subject !== '') { out.ascii(',"subject":'); out.string(ev.subject) }
  if (ev.time !== '') { out.ascii(',"time":'); out.string(ev.time) }
  if (ev.datacontenttype !== undefined) { out.ascii(',"datacontenttype":'); out.string(ev.datacontenttype) }
  const ext = ev.extensions
  for (const name in ext) {
    if (RENDERED.has(name)) continue
    out.byte(0x2c)
    if (ATTRIBUTE_NAME.test(name)) { out.byte(0x22); out.ascii(name); out.byte(0x22) } else out.string(name)
    out.byte(0x3a)
    out.string(ext[name] as string)
  }
  out.ascii(',"storeid":')
  out.string(storeId)
  out.ascii(',"sequence":"')
  out.ascii(formatSequence(sequence))
  out.byte(0x22)
  const data = ev.data
  if (data !== undefined) {
    if (data.kind === 'json') { out.ascii(',"data":'); out.utf8(data.text) } else if (data.kind === 'text') { out.ascii(',"data":'); out.string(data.text) } else { out.ascii(',"data_base64":"'); out.ascii(base64(data.bytes)); out.byte(0x22) }
  }
  out.byte(0x7d)
}

/** writeJson as a string (dead-letter listings and tools; batches are written as bytes). */
export function renderJson (ev: GridEvent, storeId: string, sequence: number): string {
  const out = new JsonOut(512)
  writeJson(out, ev, storeId, sequence)
  return out.bytes().toString('utf8')
}

/**
 * A JSON array (application/cloudevents-batch+json) of stored events, or null when one of them has a
 * shape only protobufjs decodes (gateway/event.ts renderJsonBatch renders those). `alloc` gives its
 * buffers (the reader thread's pool, store-forward/buffer-pool.ts), else each is a new one.
 */
export function renderJsonBatchDirect (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string, alloc?: (bytes: number) => ArrayBuffer): Buffer | null {
  const storeIdJson = jsonStoreId(storeId)
  return writeJsonArray(events, (out, e) => writeStoredJson(out, e.body, storeIdJson, storeId, e.seq, decodeDirect), alloc)
}

/** The store id as the JSON string transcodeJson and writeStoredJson take. */
export function jsonStoreId (storeId: string): Buffer {
  return Buffer.from(quote(storeId), 'utf8')
}

/**
 * One stored event appended to `out` as writeJson renders it: transcoded straight from its bytes, or,
 * for a shape the transcoder leaves, decoded by `decode` first. False (and `out` as it was) when
 * `decode` gives null.
 */
export function writeStoredJson (out: JsonOut, body: Uint8Array, storeIdJson: Buffer, storeId: string, sequence: number, decode: (body: Uint8Array) => GridEvent | null): boolean {
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  if (transcodeJson(out, bytes, storeIdJson, sequence)) return true
  const ev = decode(bytes)
  if (ev === null) return false
  writeJson(out, ev, storeId, sequence)
  return true
}

// ---- protobuf to JSON without decoding ------------------------------------------------------------
// Forwarding a backlog renders every stored event as JSON on the reader thread. Decoding each into a
// GridEvent (a string per field) and writing that out again was most of the reader's time; this walks
// the stored bytes once, notes where each field's bytes are, and copies them into the JSON, escaping
// as it goes. It writes exactly what writeJson(decodeDirect(bytes)) writes (tested byte for byte) and
// gives up, leaving the event to that pair, on anything unusual: what decodeDirect refuses, attribute
// names that are not ASCII, are all digits (a JS object lists those first) or are __proto__, and
// invalid UTF-8.

const MAX_TRANSCODED_ATTRIBUTES = 64
/** Per attribute: name start/end, a string value's start/end, a time stamp's milliseconds (else -1), its slot. */
const tcName = new Int32Array(2 * MAX_TRANSCODED_ATTRIBUTES)
const tcValue = new Int32Array(2 * MAX_TRANSCODED_ATTRIBUTES)
const tcStamp = new Float64Array(MAX_TRANSCODED_ATTRIBUTES)
const tcSlot = new Uint8Array(MAX_TRANSCODED_ATTRIBUTES)
/** Time stamps from here on are left to fromTimestamp (which refuses what Date cannot hold). */
const MAX_FAST_SECONDS = 8_640_000_000_000 - 1
/** toISOString of the last whole second rendered, up to and with its '.': consecutive events share it. */
let tcSecond = -1
let tcSecondIso = Buffer.alloc(0)

const JSON_HEAD = Buffer.from('{"specversion":"1.0","id":', 'latin1')
const JSON_SOURCE = Buffer.from(',"source":', 'latin1')
const JSON_TYPE = Buffer.from(',"type":', 'latin1')
const JSON_SUBJECT = Buffer.from(',"subject":', 'latin1')
const JSON_TIME = Buffer.from(',"time":', 'latin1')
const JSON_CONTENT_TYPE = Buffer.from(',"datacontenttype":', 'latin1')
const JSON_STORE_ID = Buffer.from(',"storeid":', 'latin1')
const JSON_SEQUENCE = Buffer.from(',"sequence":"', 'latin1')
const JSON_DATA = Buffer.from(',"data":', 'latin1')
const JSON_DATA_BASE64 = Buffer.from(',"data_base64":"', 'latin1')

/** A time stamp (ms, below MAX_FAST_SECONDS s) as the JSON string fromTimestamp's text makes. */
function writeStamp (out: JsonOut, ms: number): void {
  const second = Math.floor(ms / 1000)
  if (second !== tcSecond) {
    const iso = new Date(second * 1000).toISOString()
    tcSecondIso = Buffer.from(iso.slice(0, iso.length - 4), 'latin1')
    tcSecond = second
  }
  out.byte(0x22)
  out.small(tcSecondIso)
  out.padded(ms - second * 1000, 3)
  out.byte(0x5a)
  out.byte(0x22)
}

const enum Slot { Extension, Time, Subject, ContentType, Ignored, Rendered, Unusual }

function asciiIs (buf: Buffer, start: number, len: number, name: string): boolean {
  if (name.length !== len) return false
  for (let i = 0; i < len; i++) if (buf[start + i] !== name.charCodeAt(i)) return false
  return true
}

/** Where setAttribute and writeJson put an attribute of this name. */
function slotOf (buf: Buffer, start: number, end: number): Slot {
  const len = end - start
  let digits = len > 0
  for (let i = start; i < end; i++) {
    const b = buf[i]!
    if (b >= 0x80) return Slot.Unusual
    if (b < 0x30 || b > 0x39) digits = false
  }
  if (digits) return Slot.Unusual
  switch (len) {
    case 2: return asciiIs(buf, start, len, 'id') ? Slot.Ignored : Slot.Extension
    case 4: return asciiIs(buf, start, len, 'time') ? Slot.Time : asciiIs(buf, start, len, 'type') || asciiIs(buf, start, len, 'data') ? Slot.Ignored : Slot.Extension
    case 6: return asciiIs(buf, start, len, 'source') ? Slot.Ignored : Slot.Extension
    case 7: return asciiIs(buf, start, len, 'subject') ? Slot.Subject : asciiIs(buf, start, len, 'storeid') ? Slot.Rendered : Slot.Extension
    case 8: return asciiIs(buf, start, len, 'sequence') ? Slot.Rendered : Slot.Extension
    // Assigning a string to an object's __proto__ does nothing: decoding drops this one.
    case 9: return asciiIs(buf, start, len, '__proto__') ? Slot.Unusual : Slot.Extension
    case 11: return asciiIs(buf, start, len, 'specversion') ? Slot.Ignored : asciiIs(buf, start, len, 'data_base64') ? Slot.Rendered : Slot.Extension
    case 15: return asciiIs(buf, start, len, 'datacontenttype') ? Slot.ContentType : Slot.Extension
    default: return Slot.Extension
  }
}

const APPLICATION_JSON = Buffer.from('application/json', 'latin1')

// The last event transcoded in full, when it had the shape encodeDirect writes (id first; source, spec
// version and type; the time stamp as the first attribute; data last): the bytes between its id and its
// time entry (R1) and between the time entry and the data field (R2), and the JSON they rendered to
// (A: source, type, subject; B: content type and extensions). An event whose R1 and R2 are the same bytes
// renders to the same JSON around its id, time and data, so only those are transcoded (a device's
// consecutive events share everything else).
const TC_TEMPLATE_BYTES = 1024
const tcR = Buffer.allocUnsafeSlow(2 * TC_TEMPLATE_BYTES)
const tcJson = Buffer.allocUnsafeSlow(8 * TC_TEMPLATE_BYTES)
let tcR1Len = -1
let tcR2Len = 0
let tcJsonALen = 0
let tcJsonBLen = 0
/** The template's content type is application/json: text data is inlined as it is. */
let tcJsonData = false
/** The time entry's time stamp in ms, as timeEntryEnd found it. */
let tcEntryMs = 0

/** Where the varint readVarint read ends. */
let varintEnd = 0

/** The varint at `at` (at most 8 bytes, before `end`; varintEnd set to its end), or -1 when there is none. */
function readVarint (buf: Buffer, at: number, end: number): number {
  let n = 0
  let mul = 1
  for (let i = 0; i < 8 && at < end; i++) {
    const b = buf[at++]!
    n += (b & 0x7f) * mul
    if (b < 0x80) {
      varintEnd = at
      return n
    }
    mul *= 128
  }
  return -1
}

function sameBytes (a: Buffer, aStart: number, b: Buffer, bStart: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (a[aStart + i] !== b[bStart + i]) return false
  return true
}

/** Prefix of the time attribute's entry as encodeDirect writes it, after the entry's length. */
const TIME_KEY = Buffer.from([TAG_ENTRY_KEY, 4, 0x74, 0x69, 0x6d, 0x65, TAG_ENTRY_VALUE])

/**
 * The end of the time attribute's entry that starts at `at` (tcEntryMs set to its milliseconds), or -1
 * unless it is exactly the shape encodeDirect writes with one-byte lengths and a time stamp
 * transcodeJson renders itself.
 */
function timeEntryEnd (buf: Buffer, at: number, end: number): number {
  if (at + 11 > end || buf[at] !== TAG_ATTRIBUTE) return -1
  const entryLen = buf[at + 1]!
  const entryEnd = at + 2 + entryLen
  if (entryLen >= 0x80 || entryEnd > end || !sameBytes(buf, at + 2, TIME_KEY, 0, TIME_KEY.length)) return -1
  at += 2 + TIME_KEY.length
  const valueLen = buf[at]!
  if (at + 1 + valueLen !== entryEnd || buf[at + 1] !== TAG_CE_TIMESTAMP || buf[at + 2] !== valueLen - 2) return -1
  at += 3
  let seconds = 0
  let nanos = 0
  let field = TAG_SECONDS
  while (at < entryEnd) {
    const t = buf[at++]!
    // Seconds, then nanos, each once (protobufjs' order; anything else is left to the full path).
    if (t !== field && !(t === TAG_NANOS && field === TAG_SECONDS)) return -1
    field = t + 8
    const n = readVarint(buf, at, entryEnd)
    if (n < 0) return -1
    at = varintEnd
    if (t === TAG_SECONDS) seconds = n
    else nanos = n
  }
  if (seconds > MAX_FAST_SECONDS || nanos >= 1_000_000_000) return -1
  tcEntryMs = seconds * 1000 + Math.floor(nanos / 1_000_000)
  return entryEnd
}

/** transcodeJson for an event that matches the template; false (`out` untouched) when it does not. */
function transcodeByTemplate (out: JsonOut, buf: Buffer, storeIdJson: Buffer, sequence: number): boolean {
  const end = buf.length
  if (tcR1Len < 0 || end < 2 || buf[0] !== TAG_ID || buf[1]! >= 0x80) return false
  const idE = 2 + buf[1]!
  if (idE + tcR1Len > end || !sameBytes(buf, idE, tcR, 0, tcR1Len)) return false
  const timeEnd = timeEntryEnd(buf, idE + tcR1Len, end)
  if (timeEnd < 0 || timeEnd + tcR2Len > end || !sameBytes(buf, timeEnd, tcR, TC_TEMPLATE_BYTES, tcR2Len)) return false
  let at = timeEnd + tcR2Len
  let dataKind = 0
  let dataS = 0
  if (at < end) {
    const tag = buf[at]!
    if (tag !== TAG_TEXT_DATA && tag !== TAG_BINARY_DATA) return false
    const len = readVarint(buf, at + 1, end)
    if (len < 0) return false
    at = varintEnd
    if (at + len !== end) return false
    dataKind = tag >> 3
    dataS = at
  }
  const mark = out.length
  const ms = tcEntryMs
  out.small(JSON_HEAD)
  if (!out.escaped(buf, 2, idE)) { out.truncate(mark); return false }
  out.raw(tcJson, 0, tcJsonALen)
  out.small(JSON_TIME)
  writeStamp(out, ms)
  out.raw(tcJson, tcJsonALen, tcJsonALen + tcJsonBLen)
  return finishJson(out, mark, buf, storeIdJson, sequence, dataKind, dataS, end, tcJsonData)
}

/** The storeid, sequence and data members and the closing brace; false (`out` back at `mark`) on invalid UTF-8. */
function finishJson (out: JsonOut, mark: number, buf: Buffer, storeIdJson: Buffer, sequence: number, dataKind: number, dataS: number, dataE: number, json: boolean): boolean {
  out.small(JSON_STORE_ID)
  out.small(storeIdJson)
  out.small(JSON_SEQUENCE)
  if (!Number.isSafeInteger(sequence) || sequence < 0) formatSequence(sequence) // throws its RangeError
  out.padded(sequence, 20)
  out.byte(0x22)
  if (dataKind === 7) {
    out.small(JSON_DATA)
    if (json) {
      if (!isUtf8(buf.subarray(dataS, dataE))) { out.truncate(mark); return false }
      out.raw(buf, dataS, dataE)
    } else if (!out.escaped(buf, dataS, dataE)) { out.truncate(mark); return false }
  } else if (dataKind === 6) {
    out.small(JSON_DATA_BASE64)
    out.ascii(buf.toString('base64', dataS, dataE))
    out.byte(0x22)
  }
  out.byte(0x7d)
  return true
}

/**
 * One stored event as writeJson renders it, appended to `out` straight from its protobuf bytes;
 * false (and `out` as it was) when the event needs decoding first (see above).
 */
export function transcodeJson (out: JsonOut, buf: Buffer, storeIdJson: Buffer, sequence: number): boolean {
  if (transcodeByTemplate(out, buf, storeIdJson, sequence)) return true
  const mark = out.length
  let at = 0
  const end = buf.length
  // Where the template's parts are (see above); attr0End stays -1 unless the first attribute is a time stamp.
  let attr0Start = -1
  let attr0End = -1
  let dataTagAt = -1
  let coreAfterAttribute = false
  let bad = false
  const varint = (): number => {
    let n = 0
    let mul = 1
    for (let i = 0; i < 8; i++) {
      if (at >= end) { bad = true; return 0 }
      const b = buf[at++]!
      n += (b & 0x7f) * mul
      if (b < 0x80) return n
      mul *= 128
    }
    bad = true
    return 0
  }
  const length = (): number => {
    const len = varint()
    if (at + len > end) { bad = true; return 0 }
    return len
  }
  let idS = 0; let idE = 0; let srcS = 0; let srcE = 0; let typeS = 0; let typeE = 0
  let seen = 0
  let dataKind = 0; let dataS = 0; let dataE = 0
  let n = 0
  // The attribute in each slot of its own (-1: absent); the others are extensions, in wire order.
  let time = -1; let subject = -1; let contentType = -1
  while (at < end) {
    const tagAt = at
    const tag = varint()
    if (bad) return false
    const field = Math.floor(tag / 8)
    if (tag % 8 !== 2 || field < 1 || field > 7) return false
    const bit = 1 << field
    if (field !== 5 && (seen & bit) !== 0) return false
    seen |= bit
    if (field === 5) {
      if (n === 0) attr0Start = tagAt
      const entryLen = length()
      const entryEnd = at + entryLen
      if (bad || varint() !== TAG_ENTRY_KEY) return false
      const nameLen = length()
      if (bad || n === MAX_TRANSCODED_ATTRIBUTES) return false
      const nameS = at
      at += nameLen
      for (let k = 0; k < n; k++) {
        const s = tcName[2 * k]!
        if (tcName[2 * k + 1]! - s !== nameLen) continue
        let i = 0
        while (i < nameLen && buf[s + i] === buf[nameS + i]) i++
        if (i === nameLen) return false
      }
      if (varint() !== TAG_ENTRY_VALUE) return false
      const valueLen = length()
      const valueEnd = at + valueLen
      const kind = varint()
      if (bad) return false
      tcName[2 * n] = nameS
      tcName[2 * n + 1] = nameS + nameLen
      if (kind === TAG_CE_STRING) {
        const len = length()
        if (bad) return false
        tcValue[2 * n] = at
        tcValue[2 * n + 1] = at + len
        tcStamp[n] = -1
        at += len
      } else if (kind === TAG_CE_TIMESTAMP) {
        const tsLen = length()
        const tsEnd = at + tsLen
        let seconds = 0
        let nanos = 0
        while (at < tsEnd && !bad) {
          const t = varint()
          if (t === TAG_SECONDS) seconds = varint()
          else if (t === TAG_NANOS) nanos = varint()
          else return false
        }
        if (bad || seconds > MAX_FAST_SECONDS || nanos >= 1_000_000_000) return false
        tcStamp[n] = seconds * 1000 + Math.floor(nanos / 1_000_000)
      } else {
        return false
      }
      if (at !== valueEnd || at !== entryEnd) return false
      const slot = slotOf(buf, nameS, nameS + nameLen)
      tcSlot[n] = slot
      switch (slot) {
        case Slot.Unusual: return false
        case Slot.Time: time = n; break
        case Slot.Subject: subject = n; break
        case Slot.ContentType: contentType = n; break
        default: break
      }
      if (n === 0 && slot === Slot.Time && tcStamp[0]! >= 0) attr0End = at
      n++
      continue
    }
    const len = length()
    if (bad) return false
    if (n > 0 && field < 5) coreAfterAttribute = true
    switch (field) {
      case 1: idS = at; idE = at + len; break
      case 2: srcS = at; srcE = at + len; break
      case 4: typeS = at; typeE = at + len; break
      case 6: case 7:
        if (dataKind !== 0) return false
        dataKind = field; dataS = at; dataE = at + len; dataTagAt = tagAt
        break
      default: break // 3: spec_version, not rendered from the bytes
    }
    at += len
  }
  // A slot's value: the time stamp's text, else the string's bytes; false on invalid UTF-8.
  const value = (k: number): boolean => {
    const ms = tcStamp[k]!
    if (ms < 0) return out.escaped(buf, tcValue[2 * k]!, tcValue[2 * k + 1]!)
    writeStamp(out, ms)
    return true
  }
  const empty = (k: number): boolean => tcStamp[k]! < 0 && tcValue[2 * k] === tcValue[2 * k + 1]
  out.small(JSON_HEAD)
  let ok = out.escaped(buf, idS, idE)
  const jsonA = out.length
  out.small(JSON_SOURCE)
  ok = ok && out.escaped(buf, srcS, srcE)
  out.small(JSON_TYPE)
  ok = ok && out.escaped(buf, typeS, typeE)
  if (ok && subject >= 0 && !empty(subject)) { out.small(JSON_SUBJECT); ok = value(subject) }
  const jsonAEnd = out.length
  if (ok && time >= 0 && !empty(time)) { out.small(JSON_TIME); ok = value(time) }
  const jsonB = out.length
  if (ok && contentType >= 0) { out.small(JSON_CONTENT_TYPE); ok = value(contentType) }
  for (let k = 0; ok && k < n; k++) {
    if (tcSlot[k] !== Slot.Extension) continue
    const s = tcName[2 * k]!
    const e = tcName[2 * k + 1]!
    out.byte(0x2c)
    let plain = e > s
    for (let i = s; i < e && plain; i++) { const b = buf[i]!; plain = (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) }
    if (plain) { out.byte(0x22); out.small(buf, s, e); out.byte(0x22) } else out.escaped(buf, s, e)
    out.byte(0x3a)
    ok = value(k)
  }
  if (!ok) { out.truncate(mark); return false }
  const jsonBEnd = out.length
  const json = contentType >= 0 && tcStamp[contentType]! < 0 &&
    tcValue[2 * contentType + 1]! - tcValue[2 * contentType]! === APPLICATION_JSON.length &&
    buf.compare(APPLICATION_JSON, 0, APPLICATION_JSON.length, tcValue[2 * contentType]!, tcValue[2 * contentType + 1]!) === 0
  if (!finishJson(out, mark, buf, storeIdJson, sequence, dataKind, dataS, dataE, json)) return false
  // The next event may share this one's constant parts: keep them when this has the template's shape.
  const r2End = dataKind === 0 ? end : dataTagAt
  if (buf[0] === TAG_ID && idS === 2 && attr0End > 0 && !coreAfterAttribute && (dataKind === 0 || dataE === end) &&
    attr0Start - idE <= TC_TEMPLATE_BYTES && r2End - attr0End <= TC_TEMPLATE_BYTES &&
    jsonAEnd - jsonA + jsonBEnd - jsonB <= tcJson.length) {
    tcR1Len = buf.copy(tcR, 0, idE, attr0Start)
    tcR2Len = buf.copy(tcR, TC_TEMPLATE_BYTES, attr0End, r2End)
    tcJsonALen = out.copyTo(tcJson, 0, jsonA, jsonAEnd)
    tcJsonBLen = out.copyTo(tcJson, tcJsonALen, jsonB, jsonBEnd)
    tcJsonData = json
  }
  return true
}

/** A JSON array of stored events, each decoded by `decode`; null as soon as one decodes to null. */
export function renderJsonBatchWith (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string, decode: (body: Uint8Array) => GridEvent | null): string | null {
  return writeJsonBatch(events, storeId, decode)?.toString('utf8') ?? null
}

/** renderJsonBatchWith's text as UTF-8 bytes, written without building the text. */
export function writeJsonBatch (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string, decode: (body: Uint8Array) => GridEvent | null): Buffer | null {
  return writeJsonArray(events, (out, e) => {
    const ev = decode(e.body)
    if (ev === null) return false
    writeJson(out, ev, storeId, e.seq)
    return true
  })
}

/** A JSON array of stored events, each appended by `write`; null as soon as one returns false. */
function writeJsonArray<E extends { seq: number, body: Uint8Array }> (events: readonly E[], write: (out: JsonOut, e: E) => boolean, alloc?: (bytes: number) => ArrayBuffer): Buffer | null {
  const out = new JsonOut(JSON_BYTES_PER_EVENT * events.length + 2, alloc)
  out.byte(0x5b)
  for (let i = 0; i < events.length; i++) {
    if (i > 0) out.byte(0x2c)
    if (!write(out, events[i]!)) return null
  }
  out.byte(0x5d)
  return out.bytes()
}
