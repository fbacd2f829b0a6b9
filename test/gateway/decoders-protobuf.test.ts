import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import protobuf from 'protobufjs'
import { isGridgateError } from '../../gateway/errors.js'
import { decodeLenient, defaultDecoders } from '../../gateway/decoders/index.js'
import { loadProtobufType } from '../../gateway/decoders/protobuf.js'
import { tempDir } from '../helpers/util.js'
import { writeProtos } from '../helpers/protos.js'

test('a protobuf payload decodes with the rule\'s message type into the documented JSON form', (t) => {
  const type = loadProtobufType(writeProtos(tempDir(t)), 'demo.v1.Reading')
  const payload = type.encode(type.fromObject({
    sensor_id: 't-1',
    value: 21.5,
    unit: 1,
    counter: '18446744073709551615',
    raw: Buffer.from([0xfb, 0xff]),
    samples: [1.5, NaN],
    where: { lat: 60.1 },
    taken: { seconds: 1_700_000_000, nanos: 0 },
  })).finish()
  const r = defaultDecoders().decode(payload, 'application/x-protobuf', { protobuf: type })
  assert.equal(r.datacontenttype, 'application/json')
  assert.equal(r.sourcecontenttype, 'application/x-protobuf')
  assert.deepEqual(JSON.parse(r.data.kind === 'json' ? r.data.text : ''), {
    sensor_id: 't-1', // names as in the .proto
    value: 21.5,
    unit: 'CELSIUS', // enums as names
    counter: '18446744073709551615', // 64-bit integers as strings
    raw: '+/8=', // bytes as standard base64
    samples: [1.5, 'NaN'],
    where: { lat: 60.1 }, // defaults off: lon was not sent
    taken: { seconds: '1700000000' },
  })
})

test('content types are matched case-insensitively with parameters ignored; without a message type the bytes are kept', (t) => {
  const type = loadProtobufType(writeProtos(tempDir(t)), '.demo.v1.Reading')
  const payload = type.encode({ sensor_id: 'x' }).finish()
  const d = defaultDecoders()
  const r = d.decode(payload, 'Application/Protobuf; proto=demo.v1.Reading', { protobuf: type })
  assert.deepEqual(r.data, { kind: 'json', text: '{"sensor_id":"x"}' })
  // No rule names a message type: not an error, the payload is kept as data_base64 under its type.
  assert.deepEqual(d.decode(payload, 'application/protobuf'), { data: { kind: 'binary', bytes: payload }, datacontenttype: 'application/protobuf' })
  assert.deepEqual(d.decode(payload, 'application/x-protobuf', {}), { data: { kind: 'binary', bytes: payload }, datacontenttype: 'application/x-protobuf' })
})

test('a payload that does not decode as the message type is GG_ERR_PAYLOAD_INVALID, or kept raw where the protocol cannot refuse', (t) => {
  const type = loadProtobufType(writeProtos(tempDir(t)), 'demo.v1.Reading')
  const d = defaultDecoders()
  for (const bytes of [
    Buffer.from([0x0a, 0x05, 0x61]), // string field 1 of length 5 with 1 byte
    Buffer.from([0x0f]), // wire type 7
    Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // varint over 10 bytes
  ]) {
    assert.throws(() => d.decode(bytes, 'application/protobuf', { protobuf: type }),
      (err: unknown) => isGridgateError(err, 'GG_ERR_PAYLOAD_INVALID') && /demo\.v1\.Reading/.test((err as Error).message), bytes.toString('hex'))
    assert.deepEqual(decodeLenient(d, bytes, 'application/protobuf', { protobuf: type }), {
      data: { kind: 'binary', bytes }, datacontenttype: 'application/octet-stream', sourcecontenttype: 'application/protobuf', normalizeerror: 'GG_ERR_PAYLOAD_INVALID',
    })
  }
})

test('loading a .proto says what is wrong: missing file, syntax error, unknown message, an enum instead of a message', (t) => {
  const dir = tempDir(t)
  const file = writeProtos(dir)
  assert.throws(() => loadProtobufType(path.join(dir, 'missing.proto'), 'demo.v1.Reading'), /cannot load .*missing\.proto/)
  fs.writeFileSync(path.join(dir, 'bad.proto'), 'syntax = "proto3"; message {')
  assert.throws(() => loadProtobufType(path.join(dir, 'bad.proto'), 'X'), /cannot load .*bad\.proto/)
  assert.throws(() => loadProtobufType(file, 'demo.v1.Nope'), /defines no message type "demo\.v1\.Nope"/)
  assert.throws(() => loadProtobufType(file, 'demo.v1.Unit'), /defines no message type "demo\.v1\.Unit" \(it is a Enum\)/)
  const cache = new Map<string, protobuf.Root>()
  const a = loadProtobufType(file, 'demo.v1.Reading', cache)
  assert.equal(loadProtobufType(file, 'demo.v1.Reading.Location', cache).parent, a, 'one Root per file')
})
