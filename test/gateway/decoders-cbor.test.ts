import { test } from 'node:test'
import assert from 'node:assert/strict'
import { encode, Tag } from 'cbor2'
import { isGridgateError } from '../../gateway/errors.js'
import { decodeLenient, defaultDecoders, type DecodeResult } from '../../gateway/decoders/index.js'
import { MAX_CBOR_DEPTH, scanCbor } from '../../gateway/decoders/cbor.js'

const hex = (h: string): Uint8Array => Buffer.from(h.replace(/\s+/g, ''), 'hex')
const payloadInvalid = (pattern: RegExp) => (err: unknown): boolean => isGridgateError(err, 'GG_ERR_PAYLOAD_INVALID') && pattern.test((err as Error).message)

function cbor (text: string, sourcecontenttype = 'application/cbor'): DecodeResult {
  return { data: { kind: 'json', text }, datacontenttype: 'application/json', sourcecontenttype }
}

test('a CBOR map encoded by cbor2 becomes JSON data with sourcecontenttype application/cbor', () => {
  const payload = encode({ temp: 21.5, ok: true, tags: ['a', 'b'], nested: { n: -3, none: null } })
  assert.deepEqual(defaultDecoders().decode(payload, 'application/cbor'),
    cbor('{"temp":21.5,"ok":true,"tags":["a","b"],"nested":{"n":-3,"none":null}}'))
})

test('hand-written CBOR (RFC 8949 Appendix A) decodes to the documented JSON form', () => {
  const d = defaultDecoders()
  for (const [h, json] of [
    ['a2 61 61 01 61 62 82 02 03', '{"a":1,"b":[2,3]}'],
    ['bf 61 61 01 61 62 9f 02 03 ff ff', '{"a":1,"b":[2,3]}'], // indefinite-length map and array
    ['9f 01 82 02 03 9f 04 05 ff ff', '[1,[2,3],[4,5]]'],
    ['1b ff ff ff ff ff ff ff ff', '18446744073709551615'], // 64-bit integers are written exactly
    ['3b ff ff ff ff ff ff ff ff', '-18446744073709551616'],
    ['c2 49 01 00 00 00 00 00 00 00 00', '18446744073709551616'], // bignum
    ['c3 49 01 00 00 00 00 00 00 00 00', '-18446744073709551617'],
    ['f9 3c 00', '1'], // half-precision 1.0
    ['fb 3f f1 99 99 99 99 99 9a', '1.1'],
    ['44 01 02 03 04', '"AQIDBA"'], // byte string → base64url, no padding (RFC 8949 §6.1)
    ['43 fb ff bf', '"-_-_"'],
    ['c0 74 32 30 31 33 2d 30 33 2d 32 31 54 32 30 3a 30 34 3a 30 30 5a', '"2013-03-21T20:04:00.000Z"'], // tag 0
    ['c1 1a 51 4b 67 b0', '"2013-03-21T20:04:00.000Z"'], // tag 1
    ['d9 d9 f7 a1 61 78 f5', '{"x":true}'], // self-described CBOR (tag 55799)
    ['f7', 'null'], // undefined → null
    ['a1 61 78 f7', '{"x":null}'],
    ['62 c3 bc', '"ü"'],
  ] as const) {
    assert.deepEqual(d.decode(hex(h), 'application/cbor'), cbor(json), h)
  }
})

test('CBOR values without a JSON form are refused with GG_ERR_PAYLOAD_INVALID', () => {
  const d = defaultDecoders()
  for (const [h, why] of [
    ['f9 7e 00', /NaN/],
    ['fb 7f f0 00 00 00 00 00 00', /Infinity/],
    ['fa ff 80 00 00', /-Infinity/],
    ['a1 01 02', /map key that is not a text string/],
    ['a1 41 61 02', /map key that is not a text string/],
    ['d8 20 76 68 74 74 70 3a 2f 2f 77 77 77 2e 65 78 61 6d 70 6c 65 2e 63 6f 6d', /tag 32/], // URI tag
    ['d9 01 02 80', /tag 258/], // a set
    ['f0', /simple value 16/],
    ['f8 ff', /simple value 255/],
    ['5f 42 01 02 43 03 04 05 ff', /indefinite-length string/],
    ['c2 51 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00', /bignum/], // 17 bytes
    ['c0 61 61', /not a valid time/],
    ['a2 61 61 01', /truncated/],
    ['01 02', /after its first item/],
    ['62 c3 28', /not valid UTF-8/],
    ['1c', /reserved/],
    ['ff', /break/],
    ['', /empty/],
  ] as const) {
    assert.throws(() => d.decode(hex(h), 'application/cbor'), payloadInvalid(why), h)
  }
  assert.throws(() => d.decode(encode(new Tag(1000, 'x')), 'application/cbor'), payloadInvalid(/tag 1000/))
})

test('CBOR nesting deeper than the limit is refused without recursion, up to the limit it decodes', () => {
  const d = defaultDecoders()
  const nested = (depth: number): Uint8Array => new Uint8Array([...new Array<number>(depth).fill(0x81), 0x00])
  assert.throws(() => d.decode(nested(200_000), 'application/cbor'), payloadInvalid(/nests deeper than 64/))
  assert.throws(() => d.decode(nested(MAX_CBOR_DEPTH + 1), 'application/cbor'), payloadInvalid(/nests deeper/))
  const ok = d.decode(nested(MAX_CBOR_DEPTH), 'application/cbor')
  assert.equal(ok.data.kind === 'json' ? ok.data.text : '', '['.repeat(MAX_CBOR_DEPTH) + '0' + ']'.repeat(MAX_CBOR_DEPTH))
  // Tags count as a level too, and so do indefinite-length containers.
  assert.throws(() => scanCbor(new Uint8Array([...new Array<number>(100).fill(0x9f), 0x00])), payloadInvalid(/nests deeper/))
})

test('a count larger than the payload is refused before anything is allocated', () => {
  assert.throws(() => defaultDecoders().decode(hex('9b 00 00 00 00 ff ff ff ff 00'), 'application/cbor'), payloadInvalid(/truncated/))
  assert.throws(() => defaultDecoders().decode(hex('5a ff ff ff ff 00'), 'application/cbor'), payloadInvalid(/truncated/))
})

test('CBOR content types match case-insensitively, +cbor types are CBOR, and the declared type is kept', () => {
  const d = defaultDecoders()
  assert.deepEqual(d.decode(hex('a1 61 74 01'), 'Application/CBOR; foo=bar'), cbor('{"t":1}', 'Application/CBOR; foo=bar'))
  assert.deepEqual(d.decode(hex('a1 61 74 01'), 'application/vnd.acme.reading+cbor'), cbor('{"t":1}', 'application/vnd.acme.reading+cbor'))
  assert.equal(d.normalizes('application/cbor'), true)
  assert.equal(d.normalizes('application/zip'), false)
})

test('invalid CBOR from a protocol that cannot refuse is kept raw with normalizeerror', () => {
  const bytes = hex('a2 61 61 01')
  assert.deepEqual(decodeLenient(defaultDecoders(), bytes, 'application/cbor'), {
    data: { kind: 'binary', bytes },
    datacontenttype: 'application/octet-stream',
    sourcecontenttype: 'application/cbor',
    normalizeerror: 'GG_ERR_PAYLOAD_INVALID',
  })
})
