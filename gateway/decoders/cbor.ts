// CBOR (RFC 8949): application/cbor and every +cbor type, normalized to JSON data.
//
// Before cbor2 decodes anything, a header-only scan walks the item tree without recursion and
// refuses what has no faithful JSON form or would cost unbounded work, so the library only ever sees
// items this file knows how to render. The JSON form (close to RFC 8949 §6.1, stricter where §6.1
// would silently substitute a value):
//   - integers → JSON numbers, written exactly (64-bit values beyond 2^53 included);
//   - bignums (tags 2/3) up to 16 bytes → JSON numbers, written exactly; longer ones are refused;
//   - floats → JSON numbers; NaN and ±Infinity are refused (§6.1 would write null);
//   - byte strings → base64url strings without padding (§6.1);
//   - text strings → strings (must be valid UTF-8);
//   - maps → objects; a key that is not a text string is refused;
//   - false/true/null → themselves; undefined → null (§6.1); other simple values are refused;
//   - tags 0 (date/time string) and 1 (epoch time) → RFC 3339 strings; tag 55799 (self-described
//     CBOR) and 259 (a map whose keys may be any type, as some encoders write JS Maps) → their content;
//     every other tag is refused (dropping its number would change the meaning);
//   - indefinite-length byte/text strings are refused (kept out for simplicity; devices rarely stream); indefinite-length
//     arrays and maps are accepted.
// Nesting deeper than MAX_CBOR_DEPTH is refused.

import { Buffer } from 'node:buffer'
import { decode as cbor2Decode, Tag } from 'cbor2'
import { GridgateError } from '../errors.js'
import type { Decoder, DecodeResult } from './index.js'

export const APPLICATION_CBOR = 'application/cbor'

/** Containers and tags nested deeper than this are refused. */
export const MAX_CBOR_DEPTH = 64
const MAX_BIGNUM_BYTES = 16 // 128 bits: every realistic counter or id; longer bignums are refused
const ALLOWED_TAGS = new Set([0, 1, 2, 3, 259, 55799])

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })
// Maps stay Maps so non-string keys are seen (and refused) instead of being stringified by the library.

function invalid (message: string, cause?: unknown): GridgateError {
  return new GridgateError('GG_ERR_PAYLOAD_INVALID', `the CBOR payload ${message}`, cause === undefined ? undefined : { cause })
}

/**
 * Walk the CBOR item headers of `b` (one complete item, nothing after it) and throw
 * GG_ERR_PAYLOAD_INVALID for anything outside the JSON form above or nested deeper than maxDepth.
 * Iterative: a payload of nested arrays cannot exhaust the stack here.
 */
export function scanCbor (b: Uint8Array, maxDepth = MAX_CBOR_DEPTH): void {
  // Items still expected by each open container or tag; -1 for an indefinite-length container.
  const open: number[] = []
  let pos = 0
  const need = (n: number): void => {
    if (pos + n > b.length) throw invalid('is truncated')
  }
  for (;;) {
    need(1)
    const ib = b[pos++] as number
    const major = ib >> 5
    const ai = ib & 0x1f
    if (ib === 0xff) {
      if (open.at(-1) !== -1) throw invalid('has a break code outside an indefinite-length item')
      open.pop()
    } else {
      let arg = ai
      if (ai === 24) { need(1); arg = b[pos] as number; pos += 1 }
      else if (ai === 25) { need(2); arg = (b[pos] as number) << 8 | (b[pos + 1] as number); pos += 2 }
      else if (ai === 26) { need(4); arg = Buffer.from(b.buffer, b.byteOffset + pos, 4).readUInt32BE(0); pos += 4 }
      else if (ai === 27) {
        need(8)
        const big = Buffer.from(b.buffer, b.byteOffset + pos, 8).readBigUInt64BE(0)
        pos += 8
        // Only integers (major 0/1) and doubles may be that large; a length or tag of 2^53+ is not real.
        arg = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big)
      } else if (ai >= 28 && ai <= 30) {
        throw invalid(`uses reserved additional information ${ai}`) // RFC 8949 §3
      }
      const indefinite = ai === 31
      let container = false
      switch (major) {
        case 0: case 1:
          if (indefinite) throw invalid('has an indefinite-length integer')
          break
        case 2: case 3:
          if (indefinite) throw invalid('has an indefinite-length string, which is not supported')
          need(arg)
          if (major === 3) {
            try {
              strictUtf8.decode(b.subarray(pos, pos + arg))
            } catch (err) {
              throw invalid('has a text string that is not valid UTF-8', err)
            }
          }
          pos += arg
          break
        case 4: case 5:
          if (indefinite) { open.push(-1); container = true }
          else if (arg > 0) {
            // Each item takes at least one byte: a count the payload cannot hold is refused before use.
            const items = major === 4 ? arg : arg * 2
            if (items > b.length - pos) throw invalid('is truncated')
            open.push(items)
            container = true
          }
          break
        case 6:
          if (indefinite) throw invalid('has an indefinite-length tag')
          if (!ALLOWED_TAGS.has(arg)) throw invalid(`has tag ${arg}, which has no JSON form`)
          if (arg === 2 || arg === 3) {
            // The bignum's content must be a byte string of at most 16 bytes (RFC 8949 §3.4.3).
            const next = b[pos] ?? 0
            const length = (next & 0x1f) < 24 ? next & 0x1f : (next & 0x1f) === 24 ? b[pos + 1] ?? 0 : Infinity
            if (next >> 5 !== 2 || length > MAX_BIGNUM_BYTES) throw invalid(`has a bignum that is not a byte string of at most ${MAX_BIGNUM_BYTES} bytes`)
          }
          open.push(1)
          container = true
          break
        case 7:
          if (ai < 20 || ai === 24) throw invalid(`has simple value ${arg}, which has no JSON form`)
          if (indefinite) throw invalid('has a break code outside an indefinite-length item')
          break
      }
      if (open.length > maxDepth) throw invalid(`nests deeper than ${maxDepth} levels`)
      if (container) continue
    }
    // One item is complete: count it against the containers it completes.
    for (;;) {
      const top = open.length - 1
      if (top < 0) {
        if (pos !== b.length) throw invalid('has bytes after its first item')
        return
      }
      if (open[top] === -1) break
      const left = (open[top] as number) - 1
      if (left > 0) { open[top] = left; break }
      open.pop()
    }
  }
}

/** Decode a scanned payload with cbor2 (maps always as Map, so key types survive). */
export function decodeCborValue (payload: Uint8Array): unknown {
  scanCbor(payload)
  try {
    return cbor2Decode(payload, { preferMap: true })
  } catch (err) {
    throw invalid(`does not parse: ${(err as Error).message}`, err)
  }
}

export function base64url (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url')
}

/** The JSON text of a value decoded from a scanned payload (see the rules at the top of this file). */
export function cborJson (v: unknown): string {
  switch (typeof v) {
    case 'string': return JSON.stringify(v)
    case 'boolean': return v ? 'true' : 'false'
    case 'undefined': return 'null'
    case 'bigint': return v.toString()
    case 'number':
      if (!Number.isFinite(v)) throw invalid(`has ${String(v)}, which has no JSON form`)
      return JSON.stringify(v)
  }
  if (v === null) return 'null'
  if (Array.isArray(v)) return '[' + v.map(cborJson).join(',') + ']'
  if (v instanceof Uint8Array) return '"' + base64url(v) + '"'
  if (v instanceof Map) {
    let s = '{'
    for (const [k, item] of v) {
      if (typeof k !== 'string') throw invalid(`has a map key that is not a text string (${typeof k}); JSON objects only have string keys`)
      s += (s.length > 1 ? ',' : '') + JSON.stringify(k) + ':' + cborJson(item)
    }
    return s + '}'
  }
  // Tag 259 (a map with any keys) and 55799 (self-described CBOR) are transparent; the scan refused the others.
  if (v instanceof Tag) return cborJson(v.contents)
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw invalid('has a tag 0/1 date that is not a valid time')
    return JSON.stringify(v.toISOString())
  }
  throw invalid(`has a value (${Object.prototype.toString.call(v)}) that has no JSON form`)
}

export const cborDecoder: Decoder = {
  contentTypes: [APPLICATION_CBOR, '+cbor'],
  decode (payload: Uint8Array, contentType: string): DecodeResult {
    if (payload.length === 0) throw invalid('is empty')
    const text = cborJson(decodeCborValue(payload))
    return { data: { kind: 'json', text }, datacontenttype: 'application/json', sourcecontenttype: contentType.trim() }
  },
}
