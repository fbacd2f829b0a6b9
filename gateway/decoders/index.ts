// The decoder seam: one Decoder per payload format, picked by the declared content type (MQTT 5
// content-type property, CoAP Content-Format, HTTP Content-Type, a WebSocket message's contentType or a
// topic rule). Formats register here without touching the callers.

import type protobuf from 'protobufjs'
import { GridgateError, isGridgateError } from '../errors.js'
import type { EventData } from '../event.js'
import { binaryDecoder, OCTET_STREAM } from './binary.js'
import { APPLICATION_CBOR, cborDecoder } from './cbor.js'
import { APPLICATION_PROTOBUF, protobufDecoder } from './protobuf.js'
import { SENML_CBOR, SENML_JSON, senmlCborDecoder, senmlJsonDecoder } from './senml.js'
import { APPLICATION_JSON, jsonDecoder, normalizeJson, sniffJson } from './json.js'
import { mediaEssence, numberJson, TEXT_PLAIN, textDecoder } from './text.js'

export interface DecodeResult {
  data: EventData
  /** The event's datacontenttype: application/json whenever data was normalized to JSON. */
  datacontenttype: string
  /** The device's declared type, when it differs from datacontenttype's type. */
  sourcecontenttype?: string
  /** A GG_ERR_* code when decoding failed and the raw bytes were kept (decodeLenient only). */
  normalizeerror?: string
}

/** What a decoder may need beyond the bytes: the receipt time, and what a mapping rule supplies. */
export interface DecodeContext {
  /** The event's receipt time (ms since the epoch): "now" for SenML relative times. Date.now() when absent. */
  nowMs?: number | undefined
  /** The message type a mapping rule names for protobuf payloads. */
  protobuf?: protobuf.Type | undefined
}

export interface Decoder {
  /**
   * Media types this decoder handles, lowercase and without parameters ('application/json'), or a
   * structured syntax suffix starting with '+' ('+json', RFC 6839) that matches any type ending in it.
   */
  readonly contentTypes: readonly string[]
  /**
   * Decode a payload declared as `contentType` (as the device gave it, parameters included). Throws
   * GridgateError('GG_ERR_PAYLOAD_INVALID') when the payload does not parse as that type.
   */
  decode (payload: Uint8Array, contentType: string, ctx?: DecodeContext): DecodeResult
}

/** A declared content type split into its lowercase essence ('type/subtype') and its parameters. */
export interface MediaType {
  essence: string
  params: ReadonlyMap<string, string>
}

// RFC 6838 §4.2 restricted-name, for type and subtype.
const ESSENCE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/
const MAX_CONTENT_TYPE = 256 // characters; longer declarations are not media types we keep

/** Parse a declared content type; undefined when it is not a syntactically valid media type. */
export function parseMediaType (contentType: string): MediaType | undefined {
  if (contentType.length > MAX_CONTENT_TYPE) return undefined
  const essence = mediaEssence(contentType)
  if (!ESSENCE.test(essence)) return undefined
  const semi = contentType.indexOf(';')
  const params = new Map<string, string>()
  if (semi !== -1) {
    for (const part of contentType.slice(semi + 1).split(';')) {
      const eq = part.indexOf('=')
      if (eq === -1) continue
      let value = part.slice(eq + 1).trim()
      if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1)
      params.set(part.slice(0, eq).trim().toLowerCase(), value)
    }
  }
  return { essence, params }
}

export class DecoderRegistry {
  readonly #byType = new Map<string, Decoder>()
  readonly #bySuffix = new Map<string, Decoder>()

  /** Add a decoder; it replaces any decoder registered earlier for the same types or suffixes. */
  register (d: Decoder): void {
    for (const t of d.contentTypes) {
      const key = t.toLowerCase()
      if (key.startsWith('+')) this.#bySuffix.set(key, d)
      else this.#byType.set(key, d)
    }
  }

  /** The decoder for a media type essence: exact type first, then its structured syntax suffix. */
  decoderFor (essence: string): Decoder | undefined {
    const exact = this.#byType.get(essence)
    if (exact !== undefined) return exact
    const plus = essence.lastIndexOf('+')
    return plus === -1 ? undefined : this.#bySuffix.get(essence.slice(plus))
  }

  /**
   * Decode a payload by its declared content type (matched case-insensitively, parameters ignored).
   * Types without a decoder are kept as binary with that type. Without a declared type the payload is
   * sniffed: valid JSON becomes JSON, anything else application/octet-stream; that never throws.
   * Throws GG_ERR_PAYLOAD_INVALID when a payload does not parse as its declared type.
   */
  decode (payload: Uint8Array, contentType: string | undefined, ctx?: DecodeContext): DecodeResult {
    const declared = contentType?.trim()
    if (declared === undefined || declared === '') {
      return sniffJson(payload) ?? { data: { kind: 'binary', bytes: payload }, datacontenttype: OCTET_STREAM }
    }
    const media = parseMediaType(declared)
    if (media === undefined) {
      // Not a media type at all: kept as bytes, with the device's claim recorded.
      return { data: { kind: 'binary', bytes: payload }, datacontenttype: OCTET_STREAM, sourcecontenttype: declared }
    }
    return (this.decoderFor(media.essence) ?? binaryDecoder).decode(payload, declared, ctx)
  }

  /**
   * True when a payload of this type is normalized (decoded into JSON or text) rather than kept as
   * data_base64. Protobuf types count as normalized although without a rule they are kept as bytes.
   */
  normalizes (contentType: string): boolean {
    const media = parseMediaType(contentType.trim())
    if (media === undefined) return false
    const d = this.decoderFor(media.essence)
    return d !== undefined && d !== binaryDecoder
  }
}

/**
 * True when gridgate accepts a payload declared as `contentType`: every syntactically valid media
 * type is accepted (normalized, or kept as data_base64 under that type). decode() never refuses a type;
 * an adapter whose protocol can answer "unsupported content type" (HTTP 415, CoAP 4.15) checks this
 * first and refuses with unsupportedContentType(); "does not parse" (HTTP 400, CoAP 4.00, MQTT 5
 * 0x99) is the GG_ERR_PAYLOAD_INVALID that decode() throws.
 */
export function isSupportedContentType (contentType: string): boolean {
  return parseMediaType(contentType.trim()) !== undefined
}

/** The GG_ERR_CONTENT_TYPE_UNSUPPORTED error for a declared type gridgate does not accept. */
export function unsupportedContentType (contentType: string): GridgateError {
  return new GridgateError('GG_ERR_CONTENT_TYPE_UNSUPPORTED',
    `${JSON.stringify(contentType.slice(0, MAX_CONTENT_TYPE))} is not a media type (type/subtype, RFC 6838)`)
}

/**
 * For protocols that cannot refuse one message (MQTT 3.1.1): a payload that does not parse as its
 * declared type is kept as application/octet-stream with sourcecontenttype and normalizeerror set,
 * so device data is never silently thrown away. Other errors propagate.
 */
export function decodeLenient (registry: DecoderRegistry, payload: Uint8Array, contentType: string | undefined, ctx?: DecodeContext): DecodeResult {
  try {
    return registry.decode(payload, contentType, ctx)
  } catch (err) {
    if (!isGridgateError(err, 'GG_ERR_PAYLOAD_INVALID')) throw err
    const result: DecodeResult = {
      data: { kind: 'binary', bytes: payload },
      datacontenttype: OCTET_STREAM,
      normalizeerror: 'GG_ERR_PAYLOAD_INVALID',
    }
    const declared = contentType?.trim()
    if (declared !== undefined && declared !== '') result.sourcecontenttype = declared
    return result
  }
}

/** JSON, text/plain, CBOR, SenML JSON/CBOR, protobuf and the binary fallback. */
export function defaultDecoders (): DecoderRegistry {
  const registry = new DecoderRegistry()
  registry.register(binaryDecoder)
  registry.register(jsonDecoder)
  registry.register(textDecoder)
  registry.register(cborDecoder)
  registry.register(senmlJsonDecoder)
  registry.register(senmlCborDecoder)
  registry.register(protobufDecoder)
  return registry
}

export { APPLICATION_JSON, binaryDecoder, jsonDecoder, mediaEssence, normalizeJson, numberJson, OCTET_STREAM, TEXT_PLAIN, textDecoder }
export { APPLICATION_CBOR, APPLICATION_PROTOBUF, cborDecoder, protobufDecoder, SENML_CBOR, SENML_JSON, senmlCborDecoder, senmlJsonDecoder }
