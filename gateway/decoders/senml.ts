// SenML (RFC 8428): application/senml+json and application/senml+cbor, resolved into absolute
// records (RFC 8428 §4.6) and normalized to a JSON array of resolved SenML records:
//   - base name + name, base time + time, base unit when a record has no unit, base value + v,
//     base sum + s; base fields apply to the records that follow until they change (§4.1);
//   - a time below 2^28 is relative to "now" (§4.5.3): now is the event's receipt time;
//   - bver is kept in every record when it is not 10, and dropped when it is (§4.6);
//   - records are put in chronological order (§4.6; a stable sort, so equal times keep their order);
//   - a record with no value and no sum (one that only sets base fields) is not output;
//   - refused: a pack that is not an array of maps, a record without a name after resolution, a name
//     with characters §4.5.1 forbids, more than one value field in a record, a field of the wrong type,
//     an unknown field whose label ends in "_" (must-understand, §4.4), and in CBOR an unknown integer
//     label. Other extension fields are copied through.
// In CBOR, labels are the integers of §6 and vd is a byte string; in the JSON output vd is base64url
// as in SenML JSON.

import { GridgateError } from '../errors.js'
import { base64url, cborJson, decodeCborValue } from './cbor.js'
import type { DecodeContext, Decoder, DecodeResult } from './index.js'
import { utf8 } from './text.js'

export const SENML_JSON = 'application/senml+json'
export const SENML_CBOR = 'application/senml+cbor'

// RFC 8428 §6, Table 4.
const CBOR_LABELS: ReadonlyMap<number, string> = new Map([
  [-1, 'bver'], [-2, 'bn'], [-3, 'bt'], [-4, 'bu'], [-5, 'bv'], [-6, 'bs'],
  [0, 'n'], [1, 'u'], [2, 'v'], [3, 'vs'], [4, 'vb'], [5, 's'], [6, 't'], [7, 'ut'], [8, 'vd'],
])

const STRING_FIELDS = new Set(['bn', 'bu', 'n', 'u', 'vs', 'vd'])
const NUMBER_FIELDS = new Set(['bt', 'bv', 'bs', 'v', 's', 't', 'ut'])
const VALUE_FIELDS = ['v', 'vs', 'vb', 'vd'] as const
const KNOWN = new Set([...STRING_FIELDS, ...NUMBER_FIELDS, 'vb', 'bver'])

// §4.5.1: the resolved name.
const NAME = /^[A-Za-z0-9][A-Za-z0-9\-:./_]*$/
const BASE64URL = /^[A-Za-z0-9_-]*$/
const RELATIVE_LIMIT = 2 ** 28 // seconds, §4.5.3
const DEFAULT_VERSION = 10

/** A field value already in its JSON text form (extension fields from CBOR). */
class RawJson {
  constructor (readonly text: string) {}
}

type FieldValue = string | number | boolean | RawJson | unknown
type SenmlRecord = Map<string, FieldValue>

function invalid (message: string): GridgateError {
  return new GridgateError('GG_ERR_PAYLOAD_INVALID', `the SenML pack ${message}`)
}

function checkField (label: string, value: unknown, i: number): void {
  const wrong = STRING_FIELDS.has(label)
    ? typeof value !== 'string'
    : NUMBER_FIELDS.has(label)
      ? typeof value !== 'number' || !Number.isFinite(value)
      : label === 'vb'
        ? typeof value !== 'boolean'
        : label === 'bver'
          ? !Number.isSafeInteger(value) || (value as number) < 1
          : false
  if (wrong) throw invalid(`record ${i} has an invalid ${label}: ${typeof value === 'object' ? typeof value : String(value)}`)
  if (label === 'vd' && !BASE64URL.test(value as string)) throw invalid(`record ${i} has a vd that is not base64url`)
  if (!KNOWN.has(label) && label.endsWith('_')) throw invalid(`record ${i} has must-understand field ${JSON.stringify(label)} (RFC 8428 §4.4)`)
}

/** Resolve a pack of records (label → value, in input order) per RFC 8428 §4.6; nowMs is "now". */
export function resolveSenml (pack: readonly SenmlRecord[], nowMs: number): SenmlRecord[] {
  let bn = ''
  let bt = 0
  let bu: string | undefined
  let bv = 0
  let bs = 0
  let bver = DEFAULT_VERSION
  const out: Array<{ t: number, record: SenmlRecord }> = []
  for (const [i, rec] of pack.entries()) {
    for (const [label, value] of rec) checkField(label, value, i)
    if (rec.has('bn')) bn = rec.get('bn') as string
    if (rec.has('bt')) bt = rec.get('bt') as number
    if (rec.has('bu')) bu = rec.get('bu') as string
    if (rec.has('bv')) bv = rec.get('bv') as number
    if (rec.has('bs')) bs = rec.get('bs') as number
    if (rec.has('bver')) bver = rec.get('bver') as number
    const values = VALUE_FIELDS.filter(f => rec.has(f))
    if (values.length > 1) throw invalid(`record ${i} has more than one value field (${values.join(', ')})`)
    if (values.length === 0 && !rec.has('s')) continue // only base fields: nothing measured
    const name = bn + ((rec.get('n') as string | undefined) ?? '')
    if (name === '') throw invalid(`record ${i} has no name after resolution`)
    if (!NAME.test(name)) throw invalid(`record ${i} has name ${JSON.stringify(name)}, which RFC 8428 §4.5.1 does not allow`)
    let t = bt + ((rec.get('t') as number | undefined) ?? 0)
    if (t < RELATIVE_LIMIT) t = nowMs / 1000 + t
    const r: SenmlRecord = new Map()
    if (bver !== DEFAULT_VERSION) r.set('bver', bver)
    r.set('n', name)
    const unit = (rec.get('u') as string | undefined) ?? bu
    if (unit !== undefined) r.set('u', unit)
    const value = values[0]
    if (value === 'v') r.set('v', bv + (rec.get('v') as number))
    else if (value !== undefined) r.set(value, rec.get(value))
    if (rec.has('s')) r.set('s', bs + (rec.get('s') as number))
    r.set('t', t)
    if (rec.has('ut')) r.set('ut', rec.get('ut'))
    for (const [label, v] of rec) {
      if (!KNOWN.has(label)) r.set(label, v)
    }
    out.push({ t, record: r })
  }
  return out.sort((a, b) => a.t - b.t).map(o => o.record)
}

function valueJson (v: FieldValue): string {
  return v instanceof RawJson ? v.text : JSON.stringify(v)
}

/** Resolved records as a JSON array of objects (labels in the order resolveSenml set them). */
export function senmlJson (records: readonly SenmlRecord[]): string {
  return '[' + records.map(r => '{' + [...r].map(([k, v]) => JSON.stringify(k) + ':' + valueJson(v)).join(',') + '}').join(',') + ']'
}

function nowOf (ctx: DecodeContext | undefined): number {
  return ctx?.nowMs ?? Date.now()
}

function result (records: SenmlRecord[], contentType: string): DecodeResult {
  let text: string
  try {
    text = senmlJson(records)
  } catch (err) {
    // An extension field nested deeper than JSON.stringify's recursion allows.
    throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the SenML pack cannot be rendered as JSON: ${(err as Error).message}`, { cause: err })
  }
  return { data: { kind: 'json', text }, datacontenttype: 'application/json', sourcecontenttype: contentType.trim() }
}

export const senmlJsonDecoder: Decoder = {
  contentTypes: [SENML_JSON],
  decode (payload: Uint8Array, contentType: string, ctx?: DecodeContext): DecodeResult {
    let pack: unknown
    try {
      pack = JSON.parse(utf8(payload, 'SenML JSON'))
    } catch (err) {
      if (err instanceof GridgateError) throw err
      throw new GridgateError('GG_ERR_PAYLOAD_INVALID', `the SenML pack is not valid JSON: ${(err as Error).message}`, { cause: err })
    }
    if (!Array.isArray(pack)) throw invalid('is not an array of records')
    const records = pack.map((rec: unknown, i) => {
      if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) throw invalid(`record ${i} is not an object`)
      return new Map(Object.entries(rec))
    })
    return result(resolveSenml(records, nowOf(ctx)), contentType)
  },
}

export const senmlCborDecoder: Decoder = {
  contentTypes: [SENML_CBOR],
  decode (payload: Uint8Array, contentType: string, ctx?: DecodeContext): DecodeResult {
    const pack = decodeCborValue(payload)
    if (!Array.isArray(pack)) throw invalid('is not an array of records')
    const records = pack.map((rec: unknown, i) => {
      if (!(rec instanceof Map)) throw invalid(`record ${i} is not a map`)
      const r: SenmlRecord = new Map()
      for (const [key, value] of rec as Map<unknown, unknown>) {
        let label: string
        if (typeof key === 'number') {
          const known = CBOR_LABELS.get(key)
          if (known === undefined) throw invalid(`record ${i} has unknown integer label ${key}`)
          label = known
        } else if (typeof key === 'string') {
          label = key
        } else {
          throw invalid(`record ${i} has a label that is neither an integer nor a text string`)
        }
        if (r.has(label)) throw invalid(`record ${i} has ${label} twice`)
        if (label === 'vd') {
          if (!(value instanceof Uint8Array)) throw invalid(`record ${i} has a vd that is not a byte string`)
          r.set(label, base64url(value))
        } else if (typeof value === 'bigint') {
          // An integer beyond 2^53 in a numeric field: SenML numbers are doubles (§6 allows any CBOR number).
          r.set(label, NUMBER_FIELDS.has(label) || label === 'bver' ? Number(value) : new RawJson(value.toString()))
        } else if (KNOWN.has(label)) {
          r.set(label, value) // checked by resolveSenml
        } else {
          r.set(label, new RawJson(cborJson(value)))
        }
      }
      return r
    })
    return result(resolveSenml(records, nowOf(ctx)), contentType)
  },
}
