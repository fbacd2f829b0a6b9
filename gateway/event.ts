// The event: one CloudEvents 1.0 schema for every device. Stored as the CloudEvents protobuf format
// (io.cloudevents.v1.CloudEvent), sent as structured-mode JSON (HTTP) or protobuf (gRPC).
// storeid and sequence are not stored in the event body: the row's sequence and the store's id are
// added when an event is rendered for an uplink, so a body never needs rewriting.

import protobuf from 'protobufjs'
import { protoSource } from './proto/index.js'
import {
  ATTRIBUTE_NAME, RESERVED, SPEC_VERSION, base64, decodeDirect, encodeDirect, formatSequence, fromTimestamp, renderJsonBatchWith,
  setAttribute, timestampOfMs, toTimestamp,
  type GridEvent, type Timestamp,
} from './event-wire.js'

export {
  SPEC_VERSION, JSON_BYTES_PER_EVENT, JsonOut, decodeDirect, formatSequence, jsonStoreId, renderJson, renderJsonBatchDirect, writeJson, writeStoredJson,
  type EventData, type GridEvent,
} from './event-wire.js'



// ---- schema, loaded once ----------------------------------------------------------------------------
interface AnyMessage { type_url: string, value: Uint8Array }

// A decoded CloudEventAttributeValue; `attr` is protobufjs' virtual oneof property (the member's name).
interface AttributeValue {
  attr?: string
  ce_boolean?: boolean
  ce_integer?: number
  ce_string?: string
  ce_bytes?: Uint8Array
  ce_uri?: string
  ce_uri_ref?: string
  ce_timestamp?: Timestamp
}

interface CloudEventMessage {
  id: string
  source: string
  spec_version: string
  type: string
  attributes: Record<string, AttributeValue>
  data?: string
  binary_data?: Uint8Array
  text_data?: string
  proto_data?: AnyMessage
}

function loadSchema (): { event: protobuf.Type, batch: protobuf.Type } {
  const root = new protobuf.Root()
  const parsed = protobuf.parse(protoSource('cloudevents.proto'), root, { keepCase: true })
  // google/protobuf/{any,timestamp}.proto come from protobufjs' bundled copies: no file, no network.
  for (const name of parsed.imports ?? []) {
    const common = (protobuf.common as unknown as Record<string, protobuf.INamespace | undefined>)[name]
    if (common?.nested === undefined) throw new Error(`cloudevents.proto imports ${name}, which protobufjs does not bundle`)
    root.addJSON(common.nested)
  }
  root.resolveAll()
  return {
    event: root.lookupType('io.cloudevents.v1.CloudEvent'),
    batch: root.lookupType('io.cloudevents.v1.CloudEventBatch'),
  }
}

const schema = loadSchema()

// ---- protobuf ---------------------------------------------------------------------------------------

// Every attribute kind as the string GridEvent keeps. Only foreign events carry kinds other than
// ce_string and ce_timestamp; their JSON rendering then shows them as strings.
function attributeString (v: AttributeValue): string | undefined {
  switch (v.attr) {
    case 'ce_string': return v.ce_string
    case 'ce_timestamp': return v.ce_timestamp === undefined ? undefined : fromTimestamp(v.ce_timestamp)
    case 'ce_uri': return v.ce_uri
    case 'ce_uri_ref': return v.ce_uri_ref
    case 'ce_boolean': return v.ce_boolean === true ? 'true' : 'false'
    case 'ce_integer': return String(v.ce_integer ?? 0)
    case 'ce_bytes': return v.ce_bytes === undefined ? undefined : base64(v.ce_bytes)
    default: return undefined
  }
}

/** Extension names already checked (every event carries the same few). */
const validNames = new Set<string>()
const MAX_VALID_NAMES = 256

/**
 * Encode as io.cloudevents.v1.CloudEvent: time as ce_timestamp, subject, datacontenttype and extensions
 * as ce_string. `timeMs`, when the caller has it, is ev.time in milliseconds (spares parsing the text).
 */
export function encodeEvent (ev: GridEvent, timeMs?: number): Uint8Array {
  if (ev.id === '' || ev.source === '' || ev.type === '') throw new TypeError('an event needs id, source and type')
  for (const name in ev.extensions) {
    if (validNames.has(name)) continue
    if (!ATTRIBUTE_NAME.test(name) || RESERVED.has(name)) {
      throw new TypeError(`invalid CloudEvents extension name: ${JSON.stringify(name)} (lowercase a-z and 0-9, not a core attribute)`)
    }
    if (validNames.size < MAX_VALID_NAMES) validNames.add(name)
  }
  const ts = timeMs === undefined ? toTimestamp(ev.time) : timestampOfMs(timeMs)
  // Times before 1970 need int64's ten-byte negative varints: rare enough for the general encoder.
  if (typeof ts.seconds !== 'number' || ts.seconds < 0 || !Number.isSafeInteger(ts.seconds)) return encodeEventReference(ev)
  return encodeDirect(ev, ts.seconds, ts.nanos)
}

/** The same encoding through protobufjs: the general case, and the reference the tests compare with. */
export function encodeEventReference (ev: GridEvent): Uint8Array {
  if (ev.id === '' || ev.source === '' || ev.type === '') throw new TypeError('an event needs id, source and type')
  const attributes: Record<string, AttributeValue> = { time: { ce_timestamp: toTimestamp(ev.time) } }
  if (ev.subject !== '') attributes['subject'] = { ce_string: ev.subject }
  if (ev.datacontenttype !== undefined) attributes['datacontenttype'] = { ce_string: ev.datacontenttype }
  for (const name in ev.extensions) {
    if (!ATTRIBUTE_NAME.test(name) || RESERVED.has(name)) {
      throw new TypeError(`invalid CloudEvents extension name: ${JSON.stringify(name)} (lowercase a-z and 0-9, not a core attribute)`)
    }
    attributes[name] = { ce_string: ev.extensions[name] as string }
  }
  const msg: CloudEventMessage = { id: ev.id, source: ev.source, spec_version: SPEC_VERSION, type: ev.type, attributes }
  const data = ev.data
  if (data !== undefined) {
    if (data.kind === 'binary') msg.binary_data = data.bytes
    else msg.text_data = data.text
  }
  return schema.event.encode(msg).finish()
}

function decodeMessage (bytes: Uint8Array): CloudEventMessage {
  try {
    return schema.event.decode(bytes) as unknown as CloudEventMessage
  } catch (err) {
    throw new TypeError('bytes are not an io.cloudevents.v1.CloudEvent', { cause: err })
  }
}

/** Decode a stored event. Throws TypeError when the bytes are not a CloudEvent. */
export function decodeEvent (bytes: Uint8Array): GridEvent {
  return decodeDirect(bytes) ?? decodeEventReference(bytes)
}

/** decodeEvent through protobufjs: every shape the format allows, and the reference the tests compare with. */
export function decodeEventReference (bytes: Uint8Array): GridEvent {
  const m = decodeMessage(bytes)
  const ev: GridEvent = { id: m.id, source: m.source, type: m.type, subject: '', time: '', extensions: {} }
  const attrs = m.attributes
  for (const name in attrs) {
    const value = attributeString(attrs[name] as AttributeValue)
    if (value !== undefined) setAttribute(ev, name, value)
  }
  switch (m.data) {
    case 'text_data':
      // Our encoder writes json data only with datacontenttype exactly application/json (see decoders/).
      ev.data = ev.datacontenttype === 'application/json'
        ? { kind: 'json', text: m.text_data as string }
        : { kind: 'text', text: m.text_data as string }
      break
    case 'binary_data':
      ev.data = { kind: 'binary', bytes: m.binary_data as Uint8Array }
      break
    case 'proto_data': {
      // Never written by gridgate; kept as the packed message's bytes.
      const any = m.proto_data as AnyMessage
      ev.data = { kind: 'binary', bytes: any.value }
      ev.datacontenttype ??= 'application/protobuf'
      if (ev.extensions['dataschema'] === undefined && any.type_url !== '') ev.extensions['dataschema'] = any.type_url
      break
    }
  }
  return ev
}

/** Appends `n` as a protobuf varint to `out` at `at`; returns the position after it. */
function putVarint (out: Uint8Array, at: number, n: number): number {
  while (n > 0x7f) {
    out[at++] = (n & 0x7f) | 0x80
    n >>>= 7
  }
  out[at++] = n
  return at
}

const varintSize = (n: number): number => n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5

/** Encoded size of one entry of CloudEvent's `attributes` map (field 5) with a ce_string value. */
function stringAttributeSize (keyBytes: number, valueBytes: number): number {
  const attr = 1 + varintSize(valueBytes) + valueBytes
  const entry = 1 + varintSize(keyBytes) + keyBytes + 1 + varintSize(attr) + attr
  return 1 + varintSize(entry) + entry
}

/**
 * Writes one entry of CloudEvent's `attributes` map (field 5) into `out` at `at`: key (1) and a
 * CloudEventAttributeValue (2) holding ce_string (3). Returns the position after it.
 */
function writeStringAttribute (out: Buffer, at: number, key: string, value: string): number {
  const k = Buffer.byteLength(key)
  const v = Buffer.byteLength(value)
  const attr = 1 + varintSize(v) + v
  out[at++] = 0x2a
  at = putVarint(out, at, 1 + varintSize(k) + k + 1 + varintSize(attr) + attr)
  out[at++] = 0x0a
  at = putVarint(out, at, k)
  at += out.write(key, at, 'utf8')
  out[at++] = 0x12
  at = putVarint(out, at, attr)
  out[at++] = 0x1a
  at = putVarint(out, at, v)
  return at + out.write(value, at, 'utf8')
}

/** The storeid entry of the last store asked for (one per gateway). */
let storeIdEntry: { storeId: string, bytes: Buffer } | null = null

function storeIdAttribute (storeId: string): Buffer {
  if (storeIdEntry?.storeId !== storeId) {
    const bytes = Buffer.allocUnsafeSlow(stringAttributeSize(Buffer.byteLength('storeid'), Buffer.byteLength(storeId)))
    writeStringAttribute(bytes, 0, 'storeid', storeId)
    storeIdEntry = { storeId, bytes }
  }
  return storeIdEntry.bytes
}

/** The sequence entry's size: formatSequence always gives 20 ASCII digits. */
const SEQUENCE_ATTRIBUTE_SIZE = stringAttributeSize('sequence'.length, 20)

/** Bytes of a stored event as toProtoWithSequence writes it. */
function withSequenceSize (bodyBytes: number, storeId: string): number {
  return bodyBytes + storeIdAttribute(storeId).byteLength + SEQUENCE_ATTRIBUTE_SIZE
}

function writeWithSequence (out: Buffer, at: number, body: Uint8Array, storeId: string, seq: number): number {
  const store = storeIdAttribute(storeId)
  out.set(body, at)
  out.set(store, at + body.byteLength)
  return writeStringAttribute(out, at + body.byteLength + store.byteLength, 'sequence', formatSequence(seq))
}

/**
 * The stored event with the storeid and sequence extensions (ce_string), for a gRPC sink: its bytes as
 * they are, followed by the two `attributes` map entries. A protobuf parser merges the fields of a
 * message in the order they come and keeps the last value of a map key seen twice, so this decodes as
 * the event decoded, given the two attributes and encoded again would (tested), and keeps even fields
 * this gateway does not know. Decoding and encoding every event with protobufjs was about a tenth of
 * the main thread while a backlog drained to a gRPC uplink.
 */
export function toProtoWithSequence (body: Uint8Array, storeId: string, seq: number): Uint8Array {
  const out = Buffer.allocUnsafe(withSequenceSize(body.byteLength, storeId))
  writeWithSequence(out, 0, body, storeId, seq)
  return out
}

/** Bytes one stored event takes in a CloudEventBatch (`repeated CloudEvent events = 1`). */
export function protoBatchEventSize (bodyBytes: number, storeId: string): number {
  const n = withSequenceSize(bodyBytes, storeId)
  return 1 + varintSize(n) + n
}

/**
 * Writes one stored event of a CloudEventBatch into `out` at `at` (field 1, length-delimited, then
 * the event as toProtoWithSequence gives it); returns the position after it. A batch is its events
 * written one after another.
 */
export function writeProtoBatchEvent (out: Buffer, at: number, body: Uint8Array, storeId: string, seq: number): number {
  out[at++] = 0x0a
  at = putVarint(out, at, withSequenceSize(body.byteLength, storeId))
  return writeWithSequence(out, at, body, storeId, seq)
}

/** An io.cloudevents.v1.CloudEventBatch of stored events, each with storeid and sequence. */
export function encodeProtoBatch (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string): Uint8Array {
  let size = 0
  for (const e of events) size += protoBatchEventSize(e.body.byteLength, storeId)
  const out = Buffer.allocUnsafe(size)
  let at = 0
  for (const e of events) at = writeProtoBatchEvent(out, at, e.body, storeId, e.seq)
  return out
}

/** A JSON array (application/cloudevents-batch+json) of stored events, in the order given. */
export function renderJsonBatch (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string): string {
  // decodeEvent never gives null (it throws on bytes that are not a CloudEvent).
  return renderJsonBatchWith(events, storeId, decodeEvent) as string
}
