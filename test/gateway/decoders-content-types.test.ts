import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isGridgateError } from '../../gateway/errors.js'
import { defaultDecoders, isSupportedContentType, unsupportedContentType } from '../../gateway/decoders/index.js'

test('isSupportedContentType tells "unsupported content type" apart from "does not parse"', () => {
  for (const ct of ['application/json', 'Application/CBOR; x=1', 'application/senml+cbor', 'application/x-protobuf', 'image/png', ' text/plain ; charset=latin1 ']) {
    assert.equal(isSupportedContentType(ct), true, ct)
  }
  for (const ct of ['json please', '', 'application/', '/json', 'a'.repeat(300) + '/json']) {
    assert.equal(isSupportedContentType(ct), false, ct)
  }
  const err = unsupportedContentType('json please')
  assert.ok(isGridgateError(err, 'GG_ERR_CONTENT_TYPE_UNSUPPORTED'))
  assert.match(err.message, /"json please" is not a media type/)
  // A supported type whose payload does not parse is a different error.
  assert.throws(() => defaultDecoders().decode(new Uint8Array([0xff]), 'application/cbor'), (e: unknown) => isGridgateError(e, 'GG_ERR_PAYLOAD_INVALID'))
})

test('the registry says which types it normalizes and which it keeps as bytes', () => {
  const d = defaultDecoders()
  for (const ct of ['application/json', 'application/ld+json', 'text/plain', 'application/cbor', 'application/foo+cbor',
    'application/senml+json', 'APPLICATION/SENML+CBOR', 'application/protobuf', 'application/x-protobuf']) {
    assert.equal(d.normalizes(ct), true, ct)
  }
  for (const ct of ['application/octet-stream', 'image/png', 'not a type']) assert.equal(d.normalizes(ct), false, ct)
})
