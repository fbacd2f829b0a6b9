// Protocol Buffers: application/protobuf and application/x-protobuf, decoded with a user-supplied
// .proto and the message type a mapping rule names (see gateway/rules.ts), normalized to JSON data.
// Without a rule naming a message type the bytes cannot be interpreted, so they are kept as
// data_base64 under the declared type: that is not an error.
//
// The JSON form (protobufjs toObject, close to the proto3 JSON mapping):
//   - field names as written in the .proto (the file is loaded with keepCase);
//   - 64-bit integers as decimal strings (a double cannot hold them; proto3 JSON does the same);
//   - enums as their value names (a number the .proto does not name stays a number);
//   - bytes as standard base64 strings (proto3 JSON);
//   - NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity" (proto3 JSON);
//   - defaults off: only fields present on the wire appear, so "absent" and "zero" stay distinct.
// A payload that does not decode as the message type is GG_ERR_PAYLOAD_INVALID.

import protobuf from 'protobufjs'
import { GridgateError } from '../errors.js'
import type { DecodeContext, Decoder, DecodeResult } from './index.js'

export const APPLICATION_PROTOBUF = 'application/protobuf'

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: String,
  enums: String,
  bytes: String,
  defaults: false,
  json: true,
}

/**
 * Load `message` from the .proto `file` (an absolute path; its imports resolve next to it, and
 * google/protobuf/*.proto come from protobufjs' bundled copies). Throws an Error that says what is wrong.
 */
export function loadProtobufType (file: string, message: string, cache?: Map<string, protobuf.Root>): protobuf.Type {
  let root = cache?.get(file)
  if (root === undefined) {
    root = new protobuf.Root()
    try {
      root.loadSync(file, { keepCase: true })
      root.resolveAll()
    } catch (err) {
      throw new Error(`cannot load ${file}: ${(err as Error).message}`, { cause: err })
    }
    cache?.set(file, root)
  }
  const found = root.lookup(message.replace(/^\./, ''))
  if (!(found instanceof protobuf.Type)) {
    throw new Error(`${file} defines no message type ${JSON.stringify(message)}${found === null ? '' : ` (it is a ${found.constructor.name})`}`)
  }
  return found
}

/** The JSON text of a protobuf payload decoded as `type`; GG_ERR_PAYLOAD_INVALID when it does not decode. */
export function protobufJson (payload: Uint8Array, type: protobuf.Type): string {
  let message: protobuf.Message
  try {
    message = type.decode(payload)
  } catch (err) {
    throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the payload does not decode as protobuf message ${type.fullName.replace(/^\./, '')}: ${(err as Error).message}`, { cause: err })
  }
  try {
    return JSON.stringify(type.toObject(message, TO_OBJECT))
  } catch (err) {
    // A recursive message nested deeper than the stack allows.
    throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the protobuf message cannot be rendered as JSON: ${(err as Error).message}`, { cause: err })
  }
}

export const protobufDecoder: Decoder = {
  contentTypes: [APPLICATION_PROTOBUF, 'application/x-protobuf', 'application/vnd.google.protobuf'],
  decode (payload: Uint8Array, contentType: string, ctx?: DecodeContext): DecodeResult {
    const declared = contentType.trim()
    const type = ctx?.protobuf
    if (type === undefined) return { data: { kind: 'binary', bytes: payload }, datacontenttype: declared }
    return { data: { kind: 'json', text: protobufJson(payload, type) }, datacontenttype: 'application/json', sourcecontenttype: declared }
  },
}
