import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isGridgateError } from '../../gateway/errors.js'
import {
  decodeLenient, DecoderRegistry, defaultDecoders, parseMediaType,
  type DecodeResult, type Decoder,
} from '../../gateway/decoders/index.js'

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s)
const INVALID_UTF8 = new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d]) // {"a":"\xc3("}

function payloadInvalid (err: unknown): boolean {
  return isGridgateError(err, 'GG_ERR_PAYLOAD_INVALID')
}

function json (text: string, sourcecontenttype?: string): DecodeResult {
  const r: DecodeResult = { data: { kind: 'json', text }, datacontenttype: 'application/json' }
  if (sourcecontenttype !== undefined) r.sourcecontenttype = sourcecontenttype
  return r
}

test('application/json is parsed and normalized without a sourcecontenttype', () => {
  const r = defaultDecoders().decode(utf8(' { "temp" : 21.5,\n "ok": true } '), 'application/json')
  assert.deepEqual(r, json('{"temp":21.5,"ok":true}'))
})

test('content types match case-insensitively and ignore parameters', () => {
  const d = defaultDecoders()
  assert.deepEqual(d.decode(utf8('[1, 2]'), 'Application/JSON; charset=utf-8'), json('[1,2]'))
  assert.deepEqual(d.decode(utf8('[1]'), '  application/json ;charset="UTF-8" '), json('[1]'))
  assert.deepEqual(d.decode(utf8('7'), 'TEXT/PLAIN; charset=utf-8'), json('{"value":7}', 'TEXT/PLAIN; charset=utf-8'))
})

test('text/json and +json types are JSON and keep the original type in sourcecontenttype', () => {
  const d = defaultDecoders()
  assert.deepEqual(d.decode(utf8('{"a": 1}'), 'text/json'), json('{"a":1}', 'text/json'))
  assert.deepEqual(d.decode(utf8('[{"n":"t","v":1}]'), 'application/geo+json'), json('[{"n":"t","v":1}]', 'application/geo+json'))
  assert.deepEqual(d.decode(utf8('{}'), 'application/vnd.acme.reading+JSON'), json('{}', 'application/vnd.acme.reading+JSON'))
})

test('invalid JSON and invalid UTF-8 under a JSON type throw GG_ERR_PAYLOAD_INVALID', () => {
  const d = defaultDecoders()
  for (const [payload, type] of [
    [utf8('{"a":'), 'application/json'],
    [utf8(''), 'application/json'],
    [utf8("{'a': 1}"), 'text/json'],
    [utf8('NaN'), 'application/json'],
    [INVALID_UTF8, 'application/json'],
    [utf8('{"a":1} trailing'), 'application/cloudevents+json'],
  ] as const) {
    assert.throws(() => d.decode(payload, type), payloadInvalid, `${type}: ${Buffer.from(payload).toString('hex')}`)
  }
})

test('JSON numbers a double cannot hold are kept as the device wrote them', () => {
  const d = defaultDecoders()
  assert.deepEqual(d.decode(utf8(' {"counter": 18446744073709551615} '), 'application/json'), json('{"counter": 18446744073709551615}'))
  assert.deepEqual(d.decode(utf8('{"big": 1e400}'), 'application/json'), json('{"big": 1e400}'))
  assert.deepEqual(d.decode(utf8('{"ok": 1e30}'), 'application/json'), json('{"ok":1e+30}'))
})

test('JSON nested deeper than JSON.stringify can recurse is kept, not a crash', () => {
  const depth = 200_000
  const text = '['.repeat(depth) + ']'.repeat(depth)
  const r = defaultDecoders().decode(utf8(text), 'application/json')
  assert.equal(r.data.kind, 'json')
  assert.equal(r.data.kind === 'json' ? r.data.text.length : 0, text.length)
})

test('a text/plain number becomes {"value": n} as JSON', () => {
  const d = defaultDecoders()
  assert.deepEqual(d.decode(utf8(' 21.5\n'), 'text/plain'), json('{"value":21.5}', 'text/plain'))
  assert.deepEqual(d.decode(utf8('-3'), 'text/plain'), json('{"value":-3}', 'text/plain'))
  assert.deepEqual(d.decode(utf8('1e3'), 'text/plain'), json('{"value":1000}', 'text/plain'))
  assert.deepEqual(d.decode(utf8('+.5'), 'text/plain'), json('{"value":0.5}', 'text/plain'))
  assert.deepEqual(d.decode(utf8('007'), 'text/plain'), json('{"value":7}', 'text/plain'))
})

test('other text/plain stays text, including what Number() would accept', () => {
  const d = defaultDecoders()
  for (const s of ['hello', '', '0x10', 'Infinity', 'NaN', '1,5', '12 34', '1e999', '12345678901234567890']) {
    assert.deepEqual(d.decode(utf8(s), 'text/plain'), { data: { kind: 'text', text: s }, datacontenttype: 'text/plain' }, s)
  }
})

test('text/plain that is not UTF-8 throws GG_ERR_PAYLOAD_INVALID', () => {
  assert.throws(() => defaultDecoders().decode(new Uint8Array([0xff, 0xfe, 0x41]), 'text/plain'), payloadInvalid)
})

test('text/plain in another charset is kept as bytes under its declared type', () => {
  const bytes = new Uint8Array([0x63, 0x61, 0x66, 0xe9])
  assert.deepEqual(defaultDecoders().decode(bytes, 'text/plain; charset=ISO-8859-1'), {
    data: { kind: 'binary', bytes }, datacontenttype: 'text/plain; charset=ISO-8859-1',
  })
})

test('types without a decoder are kept as binary with the declared type', () => {
  const d = defaultDecoders()
  const bytes = new Uint8Array([0xa1, 0x61, 0x74, 0x01])
  assert.deepEqual(d.decode(bytes, 'application/zip'), { data: { kind: 'binary', bytes }, datacontenttype: 'application/zip' })
  assert.deepEqual(d.decode(bytes, 'application/octet-stream'), { data: { kind: 'binary', bytes }, datacontenttype: 'application/octet-stream' })
  assert.deepEqual(d.decode(bytes, 'image/png; q=1'), { data: { kind: 'binary', bytes }, datacontenttype: 'image/png; q=1' })
})

test('a declared type that is not a media type is kept as octet-stream with the claim recorded', () => {
  const bytes = utf8('{"a":1}')
  assert.deepEqual(defaultDecoders().decode(bytes, 'json please'), {
    data: { kind: 'binary', bytes }, datacontenttype: 'application/octet-stream', sourcecontenttype: 'json please',
  })
})

test('without a content type valid JSON is sniffed as JSON', () => {
  const d = defaultDecoders()
  for (const [s, text] of [
    ['{"a": [1, 2]}', '{"a":[1,2]}'],
    ['  [true]', '[true]'],
    ['"str"', '"str"'],
    ['-1.5', '-1.5'],
    ['42', '42'],
    ['true', 'true'],
    ['false', 'false'],
    ['null', 'null'],
    ['\ufeff{"bom":1}', '{"bom":1}'],
  ] as const) {
    assert.deepEqual(d.decode(utf8(s), undefined), json(text), s)
  }
  assert.deepEqual(d.decode(utf8('{"a":1}'), ''), json('{"a":1}'), 'an empty type is no type')
})

test('without a content type anything else is application/octet-stream and never throws', () => {
  const d = defaultDecoders()
  for (const bytes of [utf8('hello'), utf8('{"a":'), utf8('nope'), utf8('12 apples'), INVALID_UTF8, new Uint8Array(0), utf8('   '), new Uint8Array([0x00, 0x01])]) {
    assert.deepEqual(d.decode(bytes, undefined), { data: { kind: 'binary', bytes }, datacontenttype: 'application/octet-stream' })
  }
})

test('decodeLenient keeps bytes that do not parse, with the claimed type and normalizeerror', () => {
  const d = defaultDecoders()
  const bad = utf8('{"a":')
  assert.deepEqual(decodeLenient(d, bad, 'application/json'), {
    data: { kind: 'binary', bytes: bad },
    datacontenttype: 'application/octet-stream',
    sourcecontenttype: 'application/json',
    normalizeerror: 'GG_ERR_PAYLOAD_INVALID',
  })
  assert.equal(decodeLenient(d, INVALID_UTF8, 'text/plain').normalizeerror, 'GG_ERR_PAYLOAD_INVALID')
  assert.deepEqual(decodeLenient(d, utf8('{"a":1}'), 'application/json'), json('{"a":1}'), 'good payloads decode as usual')
})

test('decodeLenient lets errors other than GG_ERR_PAYLOAD_INVALID through', () => {
  const r = new DecoderRegistry()
  r.register({ contentTypes: ['application/x-broken'], decode () { throw new Error('bug') } })
  assert.throws(() => decodeLenient(r, utf8('x'), 'application/x-broken'), /bug/)
})

test('a registered decoder takes its types from the built-in ones, exact types before suffixes', () => {
  const d = defaultDecoders()
  const calls: string[] = []
  const senml: Decoder = {
    contentTypes: ['application/senml+json'],
    decode (_payload, contentType) {
      calls.push(contentType)
      return { data: { kind: 'json', text: '[]' }, datacontenttype: 'application/json', sourcecontenttype: contentType }
    },
  }
  d.register(senml)
  assert.deepEqual(d.decode(utf8('[{"n":"x"}]'), 'Application/SenML+JSON'), json('[]', 'Application/SenML+JSON'))
  assert.deepEqual(calls, ['Application/SenML+JSON'])
  assert.deepEqual(d.decode(utf8('{}'), 'application/other+json'), json('{}', 'application/other+json'), '+json still goes to JSON')
})

test('parseMediaType splits the essence and parameters', () => {
  assert.deepEqual(parseMediaType('Text/Plain; Charset="UTF-8"; x=y'), { essence: 'text/plain', params: new Map([['charset', 'UTF-8'], ['x', 'y']]) })
  assert.equal(parseMediaType('text'), undefined)
  assert.equal(parseMediaType('a/b/c'), undefined)
  assert.equal(parseMediaType('x/' + 'y'.repeat(300)), undefined)
})
