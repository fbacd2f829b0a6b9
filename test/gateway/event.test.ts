import { test } from 'node:test'
import assert from 'node:assert/strict'
import protobuf from 'protobufjs'
import {
  JsonOut, decodeDirect, decodeEvent, decodeEventReference, encodeEvent, encodeEventReference, encodeProtoBatch, formatSequence, renderJson, renderJsonBatch, toProtoWithSequence, writeJson,
  type EventData, type GridEvent,
} from '../../gateway/event.js'
import { renderJsonBatchDirect, transcodeJson, writeJsonBatch } from '../../gateway/event-wire.js'
import { embedProto, protoPath, protoSource } from '../../gateway/proto/index.js'

const STORE = '5f0c7a4e-8a3b-4c1e-9d2f-1b2c3d4e5f60'

function event (data?: EventData, datacontenttype?: string): GridEvent {
  const ev: GridEvent = {
    id: '0190b4b6-8f2a-7c3d-9e4f-5a6b7c8d9e0f',
    source: '/gateways/gw1/devices/sensor-1',
    type: 'gridgate.telemetry',
    subject: 'devices/sensor-1/temp',
    time: '2024-05-01T12:00:00.123Z',
    extensions: {
      deviceid: 'sensor-1',
      protocol: 'mqtt',
      gatewayid: 'gw1',
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    },
  }
  if (data !== undefined) ev.data = data
  if (datacontenttype !== undefined) ev.datacontenttype = datacontenttype
  return ev
}

// A second, independent reading of the repository's .proto, to build and inspect raw messages.
function rawSchema (): { event: protobuf.Type, batch: protobuf.Type } {
  const root = protobuf.loadSync(protoPath('cloudevents.proto'), new protobuf.Root())
  return { event: root.lookupType('io.cloudevents.v1.CloudEvent'), batch: root.lookupType('io.cloudevents.v1.CloudEventBatch') }
}

test('the proto is the CloudEvents format with the specification field numbers', () => {
  const { event: ce, batch } = rawSchema()
  const fields = Object.fromEntries(Object.values(ce.fields).map(f => [f.name, f.id]))
  assert.deepEqual(fields, { id: 1, source: 2, specVersion: 3, type: 4, attributes: 5, binaryData: 6, textData: 7, protoData: 8 })
  assert.deepEqual(ce.oneofs['data']?.fieldsArray.map(f => f.name), ['binaryData', 'textData', 'protoData'])
  const attr = ce.lookupType('CloudEventAttributeValue')
  assert.equal(attr.fullName, '.io.cloudevents.v1.CloudEvent.CloudEventAttributeValue')
  const attrFields = Object.fromEntries(Object.values(attr.fields).map(f => [f.name, [f.id, f.type]]))
  assert.deepEqual(attrFields, {
    ceBoolean: [1, 'bool'],
    ceInteger: [2, 'int32'],
    ceString: [3, 'string'],
    ceBytes: [4, 'bytes'],
    ceUri: [5, 'string'],
    ceUriRef: [6, 'string'],
    ceTimestamp: [7, 'google.protobuf.Timestamp'],
  })
  assert.equal(batch.fields['events']?.id, 1)
  assert.equal(batch.fields['events']?.repeated, true)
})

test('an embedded proto text is used instead of the file', (t) => {
  const original = protoSource('cloudevents.proto')
  embedProto('cloudevents.proto', '// embedded\n' + original)
  t.after(() => embedProto('cloudevents.proto', original))
  assert.ok(protoSource('cloudevents.proto').startsWith('// embedded'))
  assert.throws(() => protoPath('../package.json'), TypeError)
})

test('every data kind survives a protobuf round trip', () => {
  const cases: GridEvent[] = [
    event({ kind: 'json', text: '{"temp":21.5,"tags":["a","b"]}' }, 'application/json'),
    event({ kind: 'json', text: '42' }, 'application/json'),
    event({ kind: 'text', text: 'hello, wörld ✓ \u{1F600}' }, 'text/plain'),
    event({ kind: 'text', text: '' }, 'text/plain'),
    event({ kind: 'binary', bytes: new Uint8Array([0, 1, 2, 254, 255]) }, 'application/octet-stream'),
    event({ kind: 'binary', bytes: new Uint8Array(0) }, 'application/octet-stream'),
    event(),
  ]
  for (const ev of cases) {
    const back = decodeEvent(encodeEvent(ev))
    if (ev.data?.kind === 'binary') {
      assert.equal(back.data?.kind, 'binary')
      assert.deepEqual(Uint8Array.from((back.data as { bytes: Uint8Array }).bytes), ev.data.bytes)
      back.data = ev.data
    }
    assert.deepEqual(back, ev)
  }
})

test('the stored message uses spec_version 1.0, a ce_timestamp time and ce_string attributes', () => {
  const { event: ce } = rawSchema()
  const ev = event({ kind: 'json', text: '{"a":1}' }, 'application/json')
  ev.extensions['sourcecontenttype'] = 'text/plain'
  const message = ce.decode(encodeEvent(ev))
  assert.equal((message as unknown as { data: string }).data, 'textData')
  const raw = ce.toObject(message, { longs: Number }) as {
    specVersion: string, textData: string, attributes: Record<string, Record<string, unknown>>
  }
  assert.equal(raw.specVersion, '1.0')
  assert.equal(raw.textData, '{"a":1}')
  assert.deepEqual(raw.attributes['time'], { ceTimestamp: { seconds: 1714564800, nanos: 123_000_000 } })
  assert.deepEqual(raw.attributes['subject'], { ceString: 'devices/sensor-1/temp' })
  assert.deepEqual(raw.attributes['datacontenttype'], { ceString: 'application/json' })
  assert.deepEqual(raw.attributes['sourcecontenttype'], { ceString: 'text/plain' })
  assert.deepEqual(raw.attributes['deviceid'], { ceString: 'sensor-1' })
})

test('every attribute kind of a foreign event decodes to a string extension', () => {
  const { event: ce } = rawSchema()
  const bytes = ce.encode(ce.fromObject({
    id: 'e1',
    source: 'urn:x',
    specVersion: '1.0',
    type: 't',
    attributes: {
      time: { ceTimestamp: { seconds: 1714564800, nanos: 5_000_000 } },
      subject: { ceString: 's' },
      flag: { ceBoolean: true },
      off: { ceBoolean: false },
      count: { ceInteger: -7 },
      zero: { ceInteger: 0 },
      blob: { ceBytes: Buffer.from([1, 2, 3]) },
      dataschema: { ceUri: 'https://example.com/schema' },
      ref: { ceUriRef: '/relative' },
      seen: { ceTimestamp: { seconds: 0, nanos: 0 } },
      empty: { ceString: '' },
    },
    binaryData: Buffer.from('xyz'),
  })).finish()
  const ev = decodeEvent(bytes)
  assert.equal(ev.time, '2024-05-01T12:00:00.005Z')
  assert.equal(ev.subject, 's')
  assert.deepEqual(ev.extensions, {
    flag: 'true',
    off: 'false',
    count: '-7',
    zero: '0',
    blob: 'AQID',
    dataschema: 'https://example.com/schema',
    ref: '/relative',
    seen: '1970-01-01T00:00:00.000Z',
    empty: '',
  })
  assert.equal(ev.data?.kind, 'binary')
})

test('proto_data of a foreign event is kept as its packed bytes', () => {
  const { event: ce } = rawSchema()
  const bytes = ce.encode(ce.fromObject({
    id: 'e1', source: 'urn:x', specVersion: '1.0', type: 't',
    protoData: { type_url: 'type.googleapis.com/x.Y', value: Buffer.from([8, 1]) },
  })).finish()
  const ev = decodeEvent(bytes)
  assert.deepEqual(ev.data?.kind === 'binary' ? [...ev.data.bytes] : undefined, [8, 1])
  assert.equal(ev.datacontenttype, 'application/protobuf')
  assert.equal(ev.extensions['dataschema'], 'type.googleapis.com/x.Y')
})

test('encodeEvent refuses invalid extension names, a bad time and missing required attributes', () => {
  for (const name of ['DeviceId', 'device_id', 'data', 'id', 'specversion', '']) {
    const ev = event()
    ev.extensions[name] = 'x'
    assert.throws(() => encodeEvent(ev), TypeError, name)
  }
  assert.throws(() => encodeEvent({ ...event(), time: 'yesterday' }), TypeError)
  assert.throws(() => encodeEvent({ ...event(), id: '' }), TypeError)
})

test('decodeEvent refuses bytes that are not a CloudEvent', () => {
  assert.throws(() => decodeEvent(new Uint8Array([0x0a, 0xff, 0xff, 0xff])), TypeError)
})

test('formatSequence pads to 20 digits and refuses what a sequence cannot be', () => {
  assert.equal(formatSequence(0), '00000000000000000000')
  assert.equal(formatSequence(42), '00000000000000000042')
  assert.equal(formatSequence(Number.MAX_SAFE_INTEGER), '00009007199254740991')
  assert.ok(formatSequence(9) < formatSequence(10), 'orders lexicographically')
  for (const bad of [-1, 1.5, Number.NaN, Number.MAX_SAFE_INTEGER + 1]) assert.throws(() => formatSequence(bad), RangeError)
})

test('renderJson gives one structured CloudEvent with every attribute', () => {
  const ev = event({ kind: 'json', text: '{"temp":21.5,"ok":true}' }, 'application/json')
  ev.extensions['sourcecontenttype'] = 'text/plain'
  ev.extensions['normalizeerror'] = 'GG_ERR_PAYLOAD_INVALID'
  const text = renderJson(ev, STORE, 42)
  assert.deepEqual(JSON.parse(text), {
    specversion: '1.0',
    id: ev.id,
    source: ev.source,
    type: ev.type,
    subject: ev.subject,
    time: ev.time,
    datacontenttype: 'application/json',
    deviceid: 'sensor-1',
    protocol: 'mqtt',
    gatewayid: 'gw1',
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    sourcecontenttype: 'text/plain',
    normalizeerror: 'GG_ERR_PAYLOAD_INVALID',
    storeid: STORE,
    sequence: '00000000000000000042',
    data: { temp: 21.5, ok: true },
  })
  assert.ok(text.includes('"data":{"temp":21.5,"ok":true}'), 'JSON data is inlined as stored')
})

test('renderJson renders text as a JSON string and binary as data_base64', () => {
  const text = JSON.parse(renderJson(event({ kind: 'text', text: 'a "quoted"\nline\u2028' }, 'text/plain'), STORE, 1)) as Record<string, unknown>
  assert.equal(text['data'], 'a "quoted"\nline\u2028')
  assert.equal(text['data_base64'], undefined)
  const bytes = new Uint8Array([0, 255, 10, 13])
  const bin = JSON.parse(renderJson(event({ kind: 'binary', bytes: bytes.subarray(1, 3) }, 'application/octet-stream'), STORE, 2)) as Record<string, unknown>
  assert.equal(bin['data_base64'], Buffer.from([255, 10]).toString('base64'))
  assert.equal(bin['data'], undefined)
  const none = JSON.parse(renderJson(event(), STORE, 3)) as Record<string, unknown>
  assert.ok(!('data' in none) && !('data_base64' in none) && !('datacontenttype' in none))
})

test('renderJson escapes every string and ignores extensions that would clash', () => {
  const ev = event({ kind: 'text', text: '' })
  ev.subject = 'devices/"x"/\\/\u0000'
  ev.extensions['storeid'] = 'stale'
  ev.extensions['sequence'] = '1'
  ev.extensions['data'] = 'nope'
  ev.extensions['Odd Name"'] = 'v'
  const parsed = JSON.parse(renderJson(ev, STORE, 7)) as Record<string, unknown>
  assert.equal(parsed['subject'], 'devices/"x"/\\/\u0000')
  assert.equal(parsed['storeid'], STORE)
  assert.equal(parsed['sequence'], '00000000000000000007')
  assert.equal(parsed['data'], '')
  assert.equal(parsed['Odd Name"'], 'v')
})

test('renderJsonBatch renders stored events in order as one JSON array', () => {
  const bodies = [
    encodeEvent(event({ kind: 'json', text: '[1,2]' }, 'application/json')),
    encodeEvent(event({ kind: 'text', text: 't' }, 'text/plain')),
    encodeEvent(event({ kind: 'binary', bytes: new Uint8Array([1]) }, 'application/octet-stream')),
  ]
  const batch = JSON.parse(renderJsonBatch(bodies.map((body, i) => ({ seq: 10 + i, body })), STORE)) as Array<Record<string, unknown>>
  assert.deepEqual(batch.map(e => e['sequence']), ['00000000000000000010', '00000000000000000011', '00000000000000000012'])
  assert.deepEqual(batch.map(e => e['data'] ?? e['data_base64']), [[1, 2], 't', 'AQ=='])
  assert.ok(batch.every(e => e['storeid'] === STORE))
  assert.equal(renderJsonBatch([], STORE), '[]')
})

/** The renderer as it was written with strings (JSON.stringify for every string): the reference. */
function referenceJson (ev: GridEvent, storeId: string, sequence: number): string {
  const q = JSON.stringify
  let s = '{"specversion":"1.0","id":' + q(ev.id) + ',"source":' + q(ev.source) + ',"type":' + q(ev.type)
  if (ev.subject !== '') s += ',"subject":' + q(ev.subject)
  if (ev.time !== '') s += ',"time":' + q(ev.time)
  if (ev.datacontenttype !== undefined) s += ',"datacontenttype":' + q(ev.datacontenttype)
  const skip = new Set(['specversion', 'id', 'source', 'type', 'subject', 'time', 'datacontenttype', 'dataschema', 'data', 'data_base64', 'storeid', 'sequence'])
  for (const [name, value] of Object.entries(ev.extensions)) {
    if (skip.has(name)) continue
    s += ',' + q(name) + ':' + q(value)
  }
  s += ',"storeid":' + q(storeId) + ',"sequence":"' + formatSequence(sequence) + '"'
  const data = ev.data
  if (data?.kind === 'json') s += ',"data":' + data.text
  else if (data?.kind === 'text') s += ',"data":' + q(data.text)
  else if (data?.kind === 'binary') s += ',"data_base64":"' + Buffer.from(data.bytes).toString('base64') + '"'
  return s + '}'
}

test('the byte writer writes exactly the UTF-8 of the string renderer, escapes, non-ASCII and lone surrogates included', () => {
  const tricky = ['plain', 'quote " and backslash \\', 'tab\tnewline\ncontrol\u0001\u001f', 'é ü ß — 温度 🌡️', 'lone \ud800 high', 'lone \udc00 low', 'pair \ud83c\udf21 ok', '', '\u007f del', '</script>']
  const shapes: GridEvent[] = []
  for (const t of tricky) {
    const ev = event({ kind: 'text', text: t }, 'text/plain; charset=utf-8')
    ev.subject = `devices/${t}`
    ev.extensions = { ...ev.extensions, deviceid: t, 'not-an-attribute-name': t }
    shapes.push(ev)
  }
  shapes.push(event({ kind: 'json', text: '{"t":21.5,"s":"温度","e":"\\u0000"}' }, 'application/json'))
  shapes.push(event({ kind: 'binary', bytes: new Uint8Array([0, 1, 2, 250, 251, 252, 253]) }, 'application/octet-stream'))
  shapes.push(event())
  const noSubject = event({ kind: 'json', text: '[1,2,3]' })
  noSubject.subject = ''
  noSubject.time = ''
  shapes.push(noSubject)
  // A writer that starts small has to grow several times within one event.
  const batch = new JsonOut(8)
  shapes.forEach((ev, i) => {
    const want = Buffer.from(referenceJson(ev, STORE, 1000 + i), 'utf8')
    const one = new JsonOut(16)
    writeJson(one, ev, STORE, 1000 + i)
    assert.deepEqual(one.bytes(), want, `shape ${i}`)
    assert.equal(renderJson(ev, STORE, 1000 + i), want.toString('utf8'), `shape ${i} as a string`)
    if (i > 0) batch.byte(0x2c)
    writeJson(batch, ev, STORE, 1000 + i)
  })
  const text = batch.bytes().toString('utf8')
  assert.equal(text, shapes.map((ev, i) => referenceJson(ev, STORE, 1000 + i)).join(','))
  assert.equal(JSON.parse(`[${text}]`).length, shapes.length)
})

test('toProtoWithSequence adds storeid and sequence and keeps everything else', () => {
  const ev = event({ kind: 'json', text: '{"a":1}' }, 'application/json')
  const back = decodeEvent(toProtoWithSequence(encodeEvent(ev), STORE, 99))
  assert.equal(back.extensions['storeid'], STORE)
  assert.equal(back.extensions['sequence'], '00000000000000000099')
  delete back.extensions['storeid']
  delete back.extensions['sequence']
  assert.deepEqual(back, ev)
})

test('toProtoWithSequence appends the two attributes to the stored bytes: decoded, that is the event with them set, whatever it held', () => {
  const { event: ce } = rawSchema()
  const plain = (bytes: Uint8Array): unknown => ce.toObject(ce.decode(bytes), { longs: String, bytes: String, defaults: false })
  // The reference: decode, set both attributes (replacing any), encode again.
  const reference = (body: Uint8Array, storeId: string, seq: number): unknown => {
    const m = ce.toObject(ce.decode(body)) as { attributes?: Record<string, unknown> }
    m.attributes = { ...(m.attributes ?? {}), storeid: { ceString: storeId }, sequence: { ceString: String(seq).padStart(20, '0') } }
    return plain(ce.encode(ce.fromObject(m)).finish())
  }
  const bodies = [
    encodeEvent(event({ kind: 'json', text: '{"a":1}' }, 'application/json')),
    encodeEvent(event({ kind: 'binary', bytes: new Uint8Array([0, 1, 255]) })),
    encodeEvent(event()),
    // A device's own storeid and sequence attributes lose to the gateway's.
    ce.encode(ce.fromObject({ id: 'x', source: '/s', specVersion: '1.0', type: 't', attributes: { sequence: { ceInteger: 7 }, storeid: { ceString: 'theirs' }, flag: { ceBoolean: true } }, textData: 'grüße' })).finish(),
  ]
  // A store id long enough that the lengths take two varint bytes, and one that is not ASCII.
  for (const storeId of [STORE, 'ü'.repeat(150), '']) {
    for (const [i, body] of bodies.entries()) {
      for (const seq of [0, 99, Number.MAX_SAFE_INTEGER]) {
        assert.deepEqual(plain(toProtoWithSequence(body, storeId, seq)), reference(body, storeId, seq), `body ${i}, store id of ${storeId.length}, sequence ${seq}`)
      }
    }
  }
  // Fields this gateway does not know are kept (a decode and encode with protobufjs dropped them).
  const unknown = Buffer.concat([bodies[0]!, Buffer.from([0x98, 0x06, 0x2a])]) // field 99, varint 42
  const out = toProtoWithSequence(unknown, STORE, 5)
  assert.deepEqual([...out.subarray(bodies[0]!.byteLength, bodies[0]!.byteLength + 3)], [0x98, 0x06, 0x2a])
})

test('encodeProtoBatch is a CloudEventBatch of the events with their sequences', () => {
  const { batch } = rawSchema()
  const bodies = [encodeEvent(event({ kind: 'text', text: 'a' })), encodeEvent(event({ kind: 'text', text: 'b' }))]
  const raw = batch.toObject(batch.decode(encodeProtoBatch(bodies.map((body, i) => ({ seq: i + 1, body })), STORE))) as {
    events: Array<{ textData: string, attributes: Record<string, { ceString?: string }> }>
  }
  assert.deepEqual(raw.events.map(e => [e.textData, e.attributes['sequence']?.ceString, e.attributes['storeid']?.ceString]), [
    ['a', '00000000000000000001', STORE],
    ['b', '00000000000000000002', STORE],
  ])
})

test('the direct encoder writes exactly the bytes protobufjs writes, for every shape of event', () => {
  const long = (n: number, unit: string): string => unit.repeat(n)
  const base: GridEvent = { id: '0190b8c4-7c1e-7a8e-9f00-000000000001', source: '/gateways/gw/devices/d1', type: 'gridgate.telemetry', subject: 'devices/d1/telemetry', time: '2026-11-22T08:00:00.123Z', datacontenttype: 'application/json', data: { kind: 'json', text: '{"t":21.5}' }, extensions: { deviceid: 'd1', protocol: 'mqtt', gatewayid: 'gw' } }
  const cases: GridEvent[] = [
    base,
    { ...base, subject: '' },
    { ...base, datacontenttype: undefined, data: undefined } as unknown as GridEvent,
    { ...base, data: { kind: 'binary', bytes: new Uint8Array([0, 1, 2, 255]) }, datacontenttype: 'application/octet-stream' },
    { ...base, data: { kind: 'binary', bytes: new Uint8Array(0) } },
    { ...base, data: { kind: 'text', text: '' } },
    { ...base, data: { kind: 'text', text: 'grüße, 温度 🌡️' }, subject: 'devices/d1/温度/🌡️' },
    { ...base, time: '1970-01-01T00:00:00.000Z' },
    { ...base, time: '2262-04-11T23:47:16.854Z' },
    { ...base, extensions: {} },
    { ...base, extensions: { a: '', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', normalizeerror: long(300, 'é') } },
    // Lengths that need two- and three-byte varints.
    { ...base, data: { kind: 'json', text: `"${long(200, 'x')}"` }, source: long(130, 's') },
    { ...base, data: { kind: 'binary', bytes: new Uint8Array(70_000).fill(7) } },
    { ...base, data: { kind: 'text', text: long(20_000, '€') } },
  ]
  for (const [i, ev] of cases.entries()) {
    const direct = Buffer.from(encodeEvent(ev))
    const reference = Buffer.from(encodeEventReference(ev))
    assert.equal(direct.toString('hex'), reference.toString('hex'), `case ${i}`)
    assert.deepEqual(decodeEvent(direct), decodeEventReference(reference), `case ${i} decodes the same both ways`)
    assert.notEqual(decodeDirect(direct), null, `case ${i}: the direct decoder reads what the direct encoder writes`)
  }
  // Before 1970 (a negative int64) both are the general encoder's bytes.
  const old = { ...base, time: '1969-12-31T23:59:59.500Z' }
  assert.equal(Buffer.from(encodeEvent(old)).toString('hex'), Buffer.from(encodeEventReference(old)).toString('hex'))
  assert.equal(decodeEvent(encodeEvent(old)).time, '1969-12-31T23:59:59.500Z')
  assert.throws(() => encodeEvent({ ...base, extensions: { 'Bad-Name': 'x' } }), /invalid CloudEvents extension name/)
  assert.throws(() => encodeEvent({ ...base, extensions: { time: 'x' } }), /invalid CloudEvents extension name/)
})

test('the direct decoder leaves every shape it does not write to protobufjs, with the same result', () => {
  const root = protobuf.parse(protoSource('cloudevents.proto'), { keepCase: true }).root
  for (const name of ['google/protobuf/any.proto', 'google/protobuf/timestamp.proto']) root.addJSON((protobuf.common as unknown as Record<string, { nested: Record<string, protobuf.AnyNestedObject> }>)[name]!.nested)
  const CE = root.lookupType('io.cloudevents.v1.CloudEvent')
  const foreign = [
    { id: 'x', source: '/s', spec_version: '1.0', type: 't', attributes: { flag: { ce_boolean: false }, n: { ce_integer: -5 }, blob: { ce_bytes: Buffer.from('hi') }, uri: { ce_uri: 'https://e/x' }, ref: { ce_uri_ref: '/r' }, time: { ce_string: 'not a stamp' } }, text_data: 'hello' },
    { id: 'y', source: '/s', spec_version: '1.0', type: 't', attributes: {}, proto_data: { type_url: 'type.googleapis.com/x.Y', value: Buffer.from([1, 2]) } },
    { id: 'z', source: '/s', spec_version: '1.0', type: 't', attributes: { empty: {} } },
  ]
  for (const [i, m] of foreign.entries()) {
    const bytes = CE.encode(CE.fromObject(m)).finish()
    assert.deepEqual(decodeEvent(bytes), decodeEventReference(bytes), `foreign ${i}`)
    assert.equal(decodeDirect(bytes), null, `foreign ${i} goes to protobufjs`)
  }
  // Unknown fields, repeated fields and truncation.
  const ours = Buffer.from(encodeEvent({ id: 'a', source: '/s', type: 't', subject: 's', time: '2026-01-01T00:00:00.000Z', extensions: { deviceid: 'd' } }))
  const unknown = Buffer.concat([ours, Buffer.from([0x4a, 0x01, 0x41])]) // field 9, length-delimited
  assert.deepEqual(decodeEvent(unknown), decodeEventReference(unknown))
  const repeated = Buffer.concat([ours, Buffer.from([0x0a, 0x01, 0x62])]) // id again: the last one wins
  assert.deepEqual(decodeEvent(repeated), decodeEventReference(repeated))
  assert.equal(decodeEvent(repeated).id, 'b')
  assert.throws(() => decodeEvent(ours.subarray(0, ours.length - 3)), TypeError)
  assert.throws(() => decodeEvent(Buffer.from([0xff, 0xff, 0xff])), TypeError)
})

test('backlog pages go from protobuf to JSON without decoding, byte for byte as decoding and rendering would', () => {
  const reference = (rows: Array<{ seq: number, body: Uint8Array }>): Buffer | null => writeJsonBatch(rows, STORE, decodeDirect)
  const same = (rows: Array<{ seq: number, body: Uint8Array }>, label: string): void => {
    const run = (f: () => Buffer | null): string => { try { return f()?.toString('hex') ?? 'null' } catch (err) { return `throws ${String(err)}` } }
    assert.equal(run(() => renderJsonBatchDirect(rows, STORE)), run(() => reference(rows)), label)
  }
  const transcodes = (body: Uint8Array): boolean => {
    const out = new JsonOut(4)
    out.byte(0x5b)
    const ok = transcodeJson(out, Buffer.from(body), Buffer.from(JSON.stringify(STORE)), 7)
    if (!ok) assert.equal(out.length, 1, 'a refused event leaves the writer as it was')
    return ok
  }
  // Random events from gridgate's own encoder: escapes, controls, non-ASCII, lone surrogates (stored
  // as U+FFFD), every data kind, optional subject and content type, many extension sets.
  let seed = 42
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  const pieces = ['a', 'Z', '7', ' ', '"', '\\', '/', '\n', '\t', '\b', '\f', '\r', '\u0000', '\u001f', '\u007f', 'é', '温', '🌡️', '\u2028', '\ud800', '\udc00', '</']
  const text = (): string => Array.from({ length: rnd(12) }, () => pieces[rnd(pieces.length)]).join('')
  const names = ['deviceid', 'protocol', 'gatewayid', 'sourcecontenttype', 'normalizeerror', 'traceparent', 'a', 'x1', 'storeid', 'sequence']
  const rows: Array<{ seq: number, body: Uint8Array }> = []
  for (let i = 0; i < 3000; i++) {
    const ev: GridEvent = { id: `e-${text()}`, source: `/gateways/${text()}`, type: `t.${text()}`, subject: rnd(4) === 0 ? '' : text(), time: new Date(1_700_000_000_000 + (rnd(2) === 0 ? rnd(1e9) : rnd(3) * 1000 + rnd(1000))).toISOString(), extensions: {} }
    for (const n of names) if (rnd(2) === 0) ev.extensions[n] = text()
    switch (rnd(5)) {
      case 0: ev.data = { kind: 'json', text: JSON.stringify({ t: text(), n: rnd(100) }) }; ev.datacontenttype = 'application/json'; break
      case 1: ev.data = { kind: 'text', text: text() }; ev.datacontenttype = 'text/plain'; break
      case 2: ev.data = { kind: 'binary', bytes: Buffer.from(text()) }; break
      case 3: ev.data = { kind: 'text', text: text() }; break
      default: break
    }
    const body = encodeEvent(ev)
    assert.ok(transcodes(body), `event ${i} is transcoded, not decoded`)
    rows.push({ seq: 1000 + i, body })
  }
  same(rows, 'a batch of 3000 random events')
  for (let i = 0; i < 200; i++) same([rows[i]!], `event ${i} alone`)

  // Shapes only another producer writes, from protobufjs: attributes in any order and kind.
  const root = protobuf.parse(protoSource('cloudevents.proto'), { keepCase: true }).root
  for (const name of ['google/protobuf/any.proto', 'google/protobuf/timestamp.proto']) root.addJSON((protobuf.common as unknown as Record<string, { nested: Record<string, protobuf.AnyNestedObject> }>)[name]!.nested)
  const CE = root.lookupType('io.cloudevents.v1.CloudEvent')
  const foreign = (attributes: Record<string, unknown>, extra: Record<string, unknown> = {}): Uint8Array =>
    CE.encode(CE.fromObject({ id: 'f-1', source: '/f', spec_version: '1.0', type: 't', attributes, ...extra })).finish()
  const stamp = { ce_timestamp: { seconds: 1_700_000_000, nanos: 123_000_000 } }
  const decodedCases: Array<[string, Uint8Array]> = [
    ['time as a string attribute', foreign({ time: { ce_string: 'yesterday "noon"' }, deviceid: { ce_string: 'd' } }, { text_data: 'x' })],
    ['subject and an extension as time stamps', foreign({ subject: stamp, when: stamp, time: stamp })],
    ['content type after the data', foreign({ deviceid: { ce_string: 'd' }, datacontenttype: { ce_string: 'application/json' } }, { text_data: '{"a":1}' })],
    ['names that are not attribute names', foreign({ 'Up-per': { ce_string: 'v' }, 'q"uote': { ce_string: 'w' }, '': { ce_string: 'empty name' } })],
    ['reserved and rendered names as attributes', foreign({ id: { ce_string: 'no' }, specversion: { ce_string: '0.3' }, data: { ce_string: 'no' }, storeid: { ce_string: 'no' }, sequence: { ce_string: 'no' }, data_base64: { ce_string: 'no' }, type: { ce_string: 'no' }, source: { ce_string: 'no' } })],
    ['empty subject and time', foreign({ subject: { ce_string: '' }, time: { ce_string: '' } })],
    ['no attributes, binary data', foreign({}, { binary_data: Buffer.from([0, 255, 1]) })],
    ['a time stamp after the year 9999', foreign({ time: { ce_timestamp: { seconds: 253_402_300_800, nanos: 5_000_000 } } })],
    ['a time stamp at 0', foreign({ time: { ce_timestamp: {} } })],
  ]
  for (const [label, body] of decodedCases) {
    assert.ok(transcodes(body), `${label}: transcoded`)
    same([{ seq: 5, body }], label)
  }
  // What the transcoder leaves to the decoder: all-digit names (a JS object lists them first),
  // non-ASCII names, invalid UTF-8, and what decodeDirect itself refuses (a foreign attribute kind).
  const ours = Buffer.from(encodeEvent({ id: 'id-MARK', source: '/s', type: 't', subject: 'sub', time: '2026-01-01T00:00:00.000Z', datacontenttype: 'application/json', data: { kind: 'json', text: '{"v":"MARK"}' }, extensions: { deviceid: 'dev-MARK' } }))
  const corrupt = (occurrence: number): Buffer => {
    const b = Buffer.from(ours)
    let at = -1
    for (let k = 0; k <= occurrence; k++) at = b.indexOf('MARK', at + 1)
    b[at] = 0xff
    return b
  }
  const fallbackCases: Array<[string, Uint8Array]> = [
    ['an all-digit name', foreign({ deviceid: { ce_string: 'd' }, 123: { ce_string: 'n' } })],
    ['a non-ASCII name', foreign({ température: { ce_string: 'v' } })],
    // protobufjs cannot write this one (its map would take the key as the prototype): by hand.
    ['__proto__ as a name', Buffer.concat([ours, Buffer.from([0x2a, 0x10, 0x0a, 0x09]), Buffer.from('__proto__'), Buffer.from([0x12, 0x03, 0x1a, 0x01, 0x70])])],
    ['invalid UTF-8 in the id', corrupt(0)],
    ['invalid UTF-8 in JSON data', corrupt(1)],
    ['invalid UTF-8 in an extension', corrupt(2)],
    ['a time stamp Date cannot hold', foreign({ time: { ce_timestamp: { seconds: 9_000_000_000_000 } } })],
    ['nanoseconds past a second', foreign({ time: { ce_timestamp: { seconds: 5, nanos: 1_500_000_000 } } })],
    ['a boolean attribute', foreign({ flag: { ce_boolean: true } })],
  ]
  for (const [label, body] of fallbackCases) {
    assert.equal(transcodes(body), false, `${label}: left to the decoder`)
    same([{ seq: 5, body }, rows[0]!], label)
  }
  assert.equal(renderJsonBatchDirect([{ seq: 5, body: fallbackCases.at(-1)![1] }], STORE), null, 'what decodeDirect refuses still goes to protobufjs')
})

test('consecutive events of a device reuse their constant parts, byte for byte as encoding and rendering each in full would', () => {
  // A stream where most neighbours share source, type, subject, content type and extensions (the
  // encoder's and the transcoder's templates) and some differ in one byte, in a length, in the data kind
  // or in the time stamp's shape (no nanos, a second varint byte).
  let seed = 7
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  const subjects = ['devices/d1/t', 'devices/d1/u', 'devices/d1/temperature', 'devices/d1/"q"', 'devices/d1/温度']
  const sources = ['/gateways/gw/devices/d1', '/gateways/gw/devices/d2']
  const extensionSets: Array<Record<string, string>> = [
    { deviceid: 'd1', protocol: 'mqtt', gatewayid: 'gw' },
    { deviceid: 'd1', protocol: 'mqtt', gatewayid: 'gw', sourcecontenttype: 'text/plain' },
    { deviceid: 'd1', protocol: 'coap', gatewayid: 'gw' },
    { deviceid: 'd1', protocol: 'mqtt', gatewayid: 'gw', traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
  ]
  const events: GridEvent[] = []
  for (let i = 0; i < 4000; i++) {
    const change = rnd(10) === 0
    const ev: GridEvent = {
      id: rnd(50) === 0 ? `id-${'x'.repeat(130)}-${i}` : `0190b8c4-7c1e-7a8e-9f00-${String(i).padStart(12, '0')}`,
      source: change ? sources[rnd(sources.length)]! : sources[0]!,
      type: change && rnd(2) === 0 ? 'gridgate.other' : 'gridgate.telemetry',
      subject: change ? subjects[rnd(subjects.length)]! : subjects[0]!,
      time: new Date(1_700_000_000_000 + i * 1000 + (rnd(3) === 0 ? 0 : rnd(1000))).toISOString(),
      extensions: { ...extensionSets[change ? rnd(extensionSets.length) : 0]! },
    }
    switch (change ? rnd(4) : 0) {
      case 0: ev.datacontenttype = 'application/json'; ev.data = { kind: 'json', text: JSON.stringify({ t: rnd(1000) / 10, s: 'é"'.repeat(rnd(3)) }) }; break
      case 1: ev.datacontenttype = 'application/json'; ev.data = { kind: 'text', text: `not "json" ${i}` }; break
      case 2: ev.datacontenttype = 'application/octet-stream'; ev.data = { kind: 'binary', bytes: Buffer.from([i & 255, 0, 255]) }; break
      default: break
    }
    events.push(ev)
  }
  const rows = events.map((ev, i) => {
    const body = Buffer.from(encodeEvent(ev))
    assert.equal(body.toString('hex'), Buffer.from(encodeEventReference(ev)).toString('hex'), `event ${i} encodes as protobufjs does`)
    return { seq: 1 + i, body }
  })
  const reference = writeJsonBatch(rows, STORE, decodeDirect)!.toString('utf8')
  assert.equal(renderJsonBatchDirect(rows, STORE)!.toString('utf8'), reference)
  // Events the transcoder must not take from the template although their constant parts match it:
  // invalid UTF-8 in the id or in JSON data, a time stamp it leaves to Date, trailing fields.
  const template = rows[0]!.body
  const withId = (id: Buffer): Buffer => Buffer.concat([Buffer.from([0x0a, id.length]), id, template.subarray(2 + template[1]!)])
  const badData = Buffer.from(template)
  badData[badData.length - 2] = 0xff
  const cases: Array<[string, Buffer]> = [
    ['invalid UTF-8 in the id', withId(Buffer.from([0x61, 0xff, 0x62]))],
    ['invalid UTF-8 in JSON data', badData],
    ['a field after the data', Buffer.concat([template, Buffer.from([0x4a, 0x01, 0x41])])],
    ['the data twice', Buffer.concat([template, template.subarray(template.lastIndexOf(0x3a))])],
  ]
  for (const [label, body] of cases) {
    const batch = [rows[0]!, { seq: 9000, body }]
    const run = (f: () => Buffer | null): string => { try { return f()?.toString('hex') ?? 'null' } catch (err) { return `throws ${String(err)}` } }
    assert.equal(run(() => renderJsonBatchDirect(batch, STORE)), run(() => writeJsonBatch(batch, STORE, decodeDirect)), label)
  }
})
