// SenML (RFC 8428): the examples of §5.1, resolved as §4.6 says, in JSON and in CBOR.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { encode } from 'cbor2'
import { isGridgateError } from '../../gateway/errors.js'
import { defaultDecoders } from '../../gateway/decoders/index.js'

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s)
const hex = (h: string): Uint8Array => Buffer.from(h.replace(/\s+/g, ''), 'hex')
const NOW_MS = 1_700_000_000_500 // the event's receipt time
const NOW = NOW_MS / 1000

function resolve (payload: Uint8Array | string, contentType = 'application/senml+json', nowMs = NOW_MS): unknown {
  const r = defaultDecoders().decode(typeof payload === 'string' ? utf8(payload) : payload, contentType, { nowMs })
  assert.equal(r.datacontenttype, 'application/json')
  assert.equal(r.sourcecontenttype, contentType)
  assert.equal(r.data.kind, 'json')
  return JSON.parse(r.data.kind === 'json' ? r.data.text : '')
}

const invalid = (pattern: RegExp) => (err: unknown): boolean => isGridgateError(err, 'GG_ERR_PAYLOAD_INVALID') && pattern.test((err as Error).message)

// RFC 8428 §5.1.1
const SINGLE_DATAPOINT = `[
  {"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}
]`

// RFC 8428 §5.1.2, first example
const MULTIPLE_DATAPOINTS = `[
  {"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
  {"n":"current","u":"A","v":1.2}
]`

// RFC 8428 §5.1.2, second example
const MULTIPLE_DATAPOINTS_AND_TIME = `[
  {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
   "bu":"A","bver":5,
   "n":"voltage","u":"V","v":120.1},
  {"n":"current","t":-5,"v":1.2},
  {"n":"current","t":-4,"v":1.3},
  {"n":"current","t":-3,"v":1.4},
  {"n":"current","t":-2,"v":1.5},
  {"n":"current","t":-1,"v":1.6},
  {"n":"current","v":1.7}
]`

// RFC 8428 §5.1.3
const MULTIPLE_MEASUREMENTS = `[
  {"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,
   "bu":"%RH","v":20},
  {"u":"lon","v":24.30621},
  {"u":"lat","v":60.07965},
  {"t":60,"v":20.3},
  {"u":"lon","t":60,"v":24.30622},
  {"u":"lat","t":60,"v":60.07965},
  {"t":120,"v":20.7},
  {"u":"lon","t":120,"v":24.30623},
  {"u":"lat","t":120,"v":60.07966},
  {"u":"%EL","t":150,"v":98},
  {"t":180,"v":21.2},
  {"u":"lon","t":180,"v":24.30628},
  {"u":"lat","t":180,"v":60.07967}
]`

// RFC 8428 §5.1.4: the resolved form of §5.1.3.
const RESOLVED_DATA = `[
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,
   "v":20},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,
   "v":24.30621},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,
   "v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067524e+09,
   "v":20.3},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067524e+09,
   "v":24.30622},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067524e+09,
   "v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067584e+09,
   "v":20.7},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067584e+09,
   "v":24.30623},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067584e+09,
   "v":60.07966},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,
   "v":98},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067644e+09,
   "v":21.2},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067644e+09,
   "v":24.30628},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067644e+09,
   "v":60.07967}
]`

test('RFC 8428 §5.1.3 multiple measurements resolve to exactly the §5.1.4 resolved data', () => {
  assert.deepEqual(resolve(MULTIPLE_MEASUREMENTS), JSON.parse(RESOLVED_DATA))
})

test('the §5.1.4 resolved data is already resolved: resolving it again changes nothing', () => {
  assert.deepEqual(resolve(RESOLVED_DATA), JSON.parse(RESOLVED_DATA))
})

test('RFC 8428 §5.1.1 single datapoint: no time means now, the receipt time', () => {
  assert.deepEqual(resolve(SINGLE_DATAPOINT), [{ n: 'urn:dev:ow:10e2073a01080063', u: 'Cel', v: 23.1, t: NOW }])
})

test('RFC 8428 §5.1.2 multiple datapoints: the base name is prepended to every name', () => {
  assert.deepEqual(resolve(MULTIPLE_DATAPOINTS), [
    { n: 'urn:dev:ow:10e2073a01080063:voltage', u: 'V', v: 120.1, t: NOW },
    { n: 'urn:dev:ow:10e2073a01080063:current', u: 'A', v: 1.2, t: NOW },
  ])
})

test('RFC 8428 §5.1.2 with base time, base unit and bver 5: absolute times, in chronological order, bver kept', () => {
  const bt = 1.276020076001e+09
  const rec = (name: string, u: string, v: number, t: number) => ({ bver: 5, n: `urn:dev:ow:10e2073a0108006:${name}`, u, v, t })
  assert.deepEqual(resolve(MULTIPLE_DATAPOINTS_AND_TIME), [
    rec('current', 'A', 1.2, bt - 5),
    rec('current', 'A', 1.3, bt - 4),
    rec('current', 'A', 1.4, bt - 3),
    rec('current', 'A', 1.5, bt - 2),
    rec('current', 'A', 1.6, bt - 1),
    rec('voltage', 'V', 120.1, bt), // same time as the last current: input order is kept
    rec('current', 'A', 1.7, bt),
  ])
})

test('SenML CBOR with the integer labels of RFC 8428 §6 resolves like its JSON form', () => {
  // The §5.1.2 pack in CBOR, written by hand: bn=-2 (0x21), n=0, u=1, v=2.
  const pack = hex(`82
    a4 21 78 1c 75 72 6e 3a 64 65 76 3a 6f 77 3a 31 30 65 32 30 37 33 61 30 31 30 38 30 30 36 33 3a
       00 67 76 6f 6c 74 61 67 65  01 61 56  02 fb 40 5e 06 66 66 66 66 66
    a3 00 67 63 75 72 72 65 6e 74  01 61 41  02 fb 3f f3 33 33 33 33 33 33`)
  assert.deepEqual(resolve(pack, 'application/senml+cbor'), resolve(MULTIPLE_DATAPOINTS))
  // §5.1.3 encoded by cbor2 with integer labels gives §5.1.4 too.
  const labels: Record<string, number> = { bver: -1, bn: -2, bt: -3, bu: -4, bv: -5, bs: -6, n: 0, u: 1, v: 2, vs: 3, vb: 4, s: 5, t: 6, ut: 7, vd: 8 }
  const records = (JSON.parse(MULTIPLE_MEASUREMENTS) as Array<Record<string, unknown>>)
    .map(r => new Map(Object.entries(r).map(([k, v]) => [labels[k], v])))
  assert.deepEqual(resolve(encode(records), 'Application/SenML+CBOR'), JSON.parse(RESOLVED_DATA))
})

test('SenML data values: vs, vb, and vd (a CBOR byte string, base64url in JSON)', () => {
  // RFC 8428 §5.1.5
  const json = `[
    {"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
    {"n":"label","vs":"Machine Room"},
    {"n":"open","vb":false},
    {"n":"nfc-reader","vd":"aGkgCg"}
  ]`
  const expected = [
    { n: 'urn:dev:ow:10e2073a01080063:temp', u: 'Cel', v: 23.1, t: NOW },
    { n: 'urn:dev:ow:10e2073a01080063:label', vs: 'Machine Room', t: NOW },
    { n: 'urn:dev:ow:10e2073a01080063:open', vb: false, t: NOW },
    { n: 'urn:dev:ow:10e2073a01080063:nfc-reader', vd: 'aGkgCg', t: NOW },
  ]
  assert.deepEqual(resolve(json), expected)
  const cbor = encode([
    new Map<number, unknown>([[-2, 'urn:dev:ow:10e2073a01080063:'], [0, 'temp'], [1, 'Cel'], [2, 23.1]]),
    new Map<number, unknown>([[0, 'label'], [3, 'Machine Room']]),
    new Map<number, unknown>([[0, 'open'], [4, false]]),
    new Map<number, unknown>([[0, 'nfc-reader'], [8, new Uint8Array(Buffer.from('hi \n'))]]),
  ])
  assert.deepEqual(resolve(cbor, 'application/senml+cbor'), expected)
})

test('base value and base sum are added, a record with only base fields sets bases and is not output', () => {
  assert.deepEqual(resolve(`[
    {"bn":"dev1/","bt":1700000100,"bu":"W","bv":1000,"bs":50},
    {"n":"power","v":5,"s":2},
    {"n":"power","t":10,"v":-5,"u":"kW"},
    {"n":"energy","s":1,"ut":60}
  ]`), [
    { n: 'dev1/power', u: 'W', v: 1005, s: 52, t: 1700000100 },
    { n: 'dev1/energy', u: 'W', s: 51, t: 1700000100, ut: 60 },
    { n: 'dev1/power', u: 'kW', v: 995, t: 1700000110 },
  ])
})

test('times below 2^28 are relative to the receipt time; positive ones are in the future', () => {
  assert.deepEqual(resolve('[{"n":"a","v":1,"t":-60},{"n":"a","v":2,"t":0.5},{"bt":-10,"n":"b","v":3,"t":-20}]'), [
    { n: 'b', v: 3, t: NOW - 30 },
    { n: 'a', v: 1, t: NOW - 60 + 60 - 60 },
    { n: 'a', v: 2, t: NOW + 0.5 },
  ].sort((x, y) => x.t - y.t))
  assert.deepEqual(resolve(`[{"n":"a","v":1,"t":${2 ** 28}}]`), [{ n: 'a', v: 1, t: 2 ** 28 }])
})

test('extension fields are copied, must-understand ones (ending in _) are refused', () => {
  assert.deepEqual(resolve('[{"n":"a","v":1,"t":1700000000,"foo":{"x":[1]},"constructor":2}]'),
    [{ n: 'a', v: 1, t: 1700000000, foo: { x: [1] }, constructor: 2 }])
  assert.throws(() => resolve('[{"n":"a","v":1,"foo_":1}]'), invalid(/must-understand/))
  assert.throws(() => resolve('[{"n":"a","v":1,"__proto__":1}]'), invalid(/must-understand/))
})

test('invalid SenML packs are refused with GG_ERR_PAYLOAD_INVALID', () => {
  for (const [pack, why] of [
    ['{"n":"a","v":1}', /not an array/],
    ['[1]', /not an object/],
    ['[{"v":1}]', /no name/],
    ['[{"n":"a","v":1,"vs":"x"}]', /more than one value field \(v, vs\)/],
    ['[{"n":"a","vb":true,"vd":"aa"}]', /more than one value field/],
    ['[{"n":"a b","v":1}]', /name "a b"/],
    ['[{"n":"-a","v":1}]', /name "-a"/],
    ['[{"bn":"dev/","n":"temp°","v":1}]', /name "dev\/temp°"/],
    ['[{"n":"a","v":"1"}]', /invalid v/],
    ['[{"n":"a","vb":1}]', /invalid vb/],
    ['[{"n":"a","t":"now","v":1}]', /invalid t/],
    ['[{"n":"a","bver":0,"v":1}]', /invalid bver/],
    ['[{"n":1,"v":1}]', /invalid n/],
    ['[{"n":"a","vd":"not base64!"}]', /base64url/],
    ['[{"n":"a","v":1}', /not valid JSON/],
  ] as const) {
    assert.throws(() => resolve(pack), invalid(why), pack)
  }
  for (const [records, why] of [
    [[new Map<unknown, unknown>([[0, 'a'], [2, 1], [99, 1]])], /unknown integer label 99/],
    [[new Map<unknown, unknown>([[0, 'a'], [8, 'text']])], /vd that is not a byte string/],
    [[new Map<unknown, unknown>([[0, 'a'], [2, NaN]])], /invalid v/],
    [[new Map<unknown, unknown>([[0, 'a'], ['n', 'b'], [2, 1]])], /n twice/],
    [new Map([[0, 'a']]), /not an array/],
    [[[0, 'a']], /not a map/],
  ] as const) {
    assert.throws(() => resolve(encode(records), 'application/senml+cbor'), invalid(why), String(why))
  }
  assert.throws(() => resolve(hex('81 a1 00'), 'application/senml+cbor'), invalid(/truncated/))
})

test('an empty pack resolves to an empty list', () => {
  assert.deepEqual(resolve('[]'), [])
})
