// The event: one CloudEvents 1.0 schema for every device. Stored as the CloudEvents protobuf format
// (io.cloudevents.v1.CloudEvent), sent as structured-mode JSON (HTTP) or protobuf (gRPC).
// storeid and sequence are not stored in the event body: the row's sequence and the store's id are
// added when an event is rendered for an uplink, so a body never needs rewriting.

import protobuf from 'protobufjs'
import { protoSource } from './proto/index.js'
import {
  ATTRIBUTE_NAME, RESERVED, SPEC_VERSION, base64, decodeDirect, encodeDirect, fromTimestamp, renderJsonBatchWith,
  setAttribute, timestampOfMs, toTimestamp,
  type GridEvent, type Timestamp,
} from './event-wire.js'

export {
  SPEC_VERSION, JSON_BYTES_PER_EVENT, JsonOut, decodeDirect, formatSequence, jsonStoreId, renderJson, renderJsonBatchDirect, writeJson, writeStoredJson,
  encodeProtoBatch, protoBatchEventSize, toProtoWithSequence, writeProtoBatchEvent,
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

/** A JSON array (application/cloudevents-batch+json) of stored events, in the order given. */
export function renderJsonBatch (events: ReadonlyArray<{ seq: number, body: Uint8Array }>, storeId: string): string {
  // decodeEvent never gives null (it throws on bytes that are not a CloudEvent).
  return renderJsonBatchWith(events, storeId, decodeEvent) as string
}
