// text/plain: a number becomes JSON {"value": n} (the common "just publish the reading" case);
// any other text stays text. Also the strict UTF-8 helpers the text-based formats share.

import { GridgateError } from '../errors.js'
import type { Decoder, DecodeResult } from './index.js'

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

/** The payload as text; GG_ERR_PAYLOAD_INVALID when it is not valid UTF-8. A leading BOM is dropped. */
export function utf8 (payload: Uint8Array, what: string): string {
  try {
    return strictUtf8.decode(payload)
  } catch (err) {
    throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the ${what} payload is not valid UTF-8`, { cause: err })
  }
}

/** The payload as text, or undefined when it is not valid UTF-8. */
export function tryUtf8 (payload: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(payload)
  } catch {
    return undefined
  }
}

/** 'Application/JSON; charset=utf-8' → 'application/json'. */
export function mediaEssence (contentType: string): string {
  const semi = contentType.indexOf(';')
  return (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()
}

const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/i
const UTF8_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii'])

// A decimal number as a person or a sensor writes it: no hex, no Infinity, no empty string (all of
// which Number() would accept).
const DECIMAL = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/
const MAX_SIGNIFICANT_DIGITS = 15 // every decimal with at most 15 significant digits survives a double

/** The JSON text for a text/plain number, or undefined when the text is not one a double holds exactly enough. */
export function numberJson (text: string): string | undefined {
  const t = text.trim()
  if (!DECIMAL.test(t)) return undefined
  const mantissa = t.replace(/[eE].*$/, '').replace(/\D/g, '').replace(/^0+/, '')
  if (mantissa.length > MAX_SIGNIFICANT_DIGITS) return undefined
  const n = Number(t)
  if (!Number.isFinite(n) || (n === 0 && mantissa !== '')) return undefined // overflow, underflow
  return '{"value":' + JSON.stringify(n) + '}'
}

export const TEXT_PLAIN = 'text/plain'

export const textDecoder: Decoder = {
  contentTypes: [TEXT_PLAIN],
  decode (payload: Uint8Array, contentType: string): DecodeResult {
    const declared = contentType.trim()
    const charset = CHARSET.exec(declared)?.[1]?.toLowerCase()
    if (charset !== undefined && !UTF8_CHARSETS.has(charset)) {
      // gridgate does not transcode: other charsets are kept as bytes under the declared type.
      return { data: { kind: 'binary', bytes: payload }, datacontenttype: declared }
    }
    const text = utf8(payload, TEXT_PLAIN)
    const json = numberJson(text)
    if (json !== undefined) {
      return { data: { kind: 'json', text: json }, datacontenttype: 'application/json', sourcecontenttype: declared }
    }
    return { data: { kind: 'text', text }, datacontenttype: TEXT_PLAIN }
  },
}
