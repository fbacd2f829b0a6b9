// JSON (RFC 8259): application/json, text/json and every +json type (RFC 6839). The payload must be
// valid UTF-8 and valid JSON; it is stored compacted by JSON.stringify, so JSON data is always
// valid JSON text that the renderer inlines without parsing again.

import { GridgateError } from '../errors.js'
import type { EventData } from '../event.js'
import type { Decoder, DecodeResult } from './index.js'
import { mediaEssence, tryUtf8, utf8 } from './text.js'

export const APPLICATION_JSON = 'application/json'

// Numbers a double cannot carry exactly (16+ digit runs: 64-bit ids and counters, over-long fractions;
// 3-digit exponents: overflow to Infinity, which JSON.stringify would write as null). When the text
// has one, it is kept as the device sent it (it parsed, so it is valid JSON), only trimmed. A digit
// run inside a string also matches; that only costs the compaction.
const LOSSY_NUMBER = /\d{16}|[eE][+-]?\d{3}/

/** Validate and normalize JSON text; GG_ERR_PAYLOAD_INVALID when it is not JSON. */
export function normalizeJson (text: string): string {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the payload is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
  if (LOSSY_NUMBER.test(text)) return text.trim()
  try {
    return JSON.stringify(value)
  } catch {
    // Nesting deeper than the stack allows JSON.stringify (JSON.parse is iterative): keep the text.
    return text.trim()
  }
}

function jsonData (text: string): EventData {
  return { kind: 'json', text }
}

export const jsonDecoder: Decoder = {
  contentTypes: [APPLICATION_JSON, 'text/json', '+json'],
  decode (payload: Uint8Array, contentType: string): DecodeResult {
    const result: DecodeResult = { data: jsonData(normalizeJson(utf8(payload, 'JSON'))), datacontenttype: APPLICATION_JSON }
    if (mediaEssence(contentType) !== APPLICATION_JSON) result.sourcecontenttype = contentType.trim()
    return result
  },
}

// Bytes a JSON text can start with after whitespace: { [ " - 0-9 t(rue) f(alse) n(ull).
function mayStartJson (byte: number): boolean {
  return byte === 0x7b || byte === 0x5b || byte === 0x22 || byte === 0x2d || (byte >= 0x30 && byte <= 0x39) ||
    byte === 0x74 || byte === 0x66 || byte === 0x6e
}

/** For payloads without a declared type: the JSON result when the payload is valid UTF-8 JSON, else undefined. */
export function sniffJson (payload: Uint8Array): DecodeResult | undefined {
  let i = 0
  // JSON whitespace (RFC 8259 §2), after an optional UTF-8 BOM.
  if (payload[0] === 0xef && payload[1] === 0xbb && payload[2] === 0xbf) i = 3
  while (i < payload.length && (payload[i] === 0x20 || payload[i] === 0x09 || payload[i] === 0x0a || payload[i] === 0x0d)) i++
  const first = payload[i]
  if (first === undefined || !mayStartJson(first)) return undefined
  const text = tryUtf8(payload)
  if (text === undefined) return undefined
  try {
    return { data: jsonData(normalizeJson(text)), datacontenttype: APPLICATION_JSON }
  } catch {
    return undefined
  }
}
