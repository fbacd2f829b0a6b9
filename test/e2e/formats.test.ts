// Payload formats and mapping rules end to end: MQTT 5 device → gateway (in-process) → HTTP receiver.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { encode } from 'cbor2'
import protobuf from 'protobufjs'
import { tempDir, waitFor } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import { writeProtos } from '../helpers/protos.js'

test('rules give protobuf and CBOR payloads a type, JSON data and devicetime; invalid CBOR gets PUBACK 0x99 and stores nothing', async (t) => {
  const dir = tempDir(t)
  const protoFile = writeProtos(dir)
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(dir, 'data'), { cloud: rx.url }, {
    rules: [
      // Relative to the config file, which startInProcess writes into dir.
      { topic: 'devices/{deviceId}/pb/{kind}', type: 'sensor.{kind}', protobuf: { file: 'reading.proto', message: 'demo.v1.Reading' }, deviceTime: 'epoch_ms' },
      { topic: 'devices/+/cbor/#', type: 'sensor.cbor', contentType: 'application/cbor', deviceTime: 'ts' },
    ],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })

  const Reading = protobuf.loadSync(protoFile).lookupType('demo.v1.Reading')
  const pb = Reading.encode(Reading.fromObject({ sensorId: 't-1', value: 21.5, unit: 2, epochMs: 1_714_564_800_123 })).finish()
  await client.publishAsync('devices/sensor-1/pb/temp', Buffer.from(pb), { qos: 1, properties: { contentType: 'application/x-protobuf' } })
  // No content-type property: the rule's contentType applies.
  await client.publishAsync('devices/sensor-1/cbor/hum', Buffer.from(encode({ rh: 40.5, ts: 1_714_564_800 })), { qos: 1 })
  // Declares CBOR and is not: refused with "payload format invalid" (MQTT 5.0 §3.4.2.1).
  await assert.rejects(client.publishAsync('devices/sensor-1/cbor/bad', Buffer.from([0xa2, 0x61, 0x61, 0x01]), { qos: 1, properties: { contentType: 'application/cbor' } }),
    (err: Error & { code?: number }) => err.code === 0x99)
  // A topic no rule matches keeps the defaults.
  await client.publishAsync('devices/sensor-1/plain', '{"c":1}', { qos: 1, properties: { contentType: 'application/json' } })
  // No content-type property on a protobuf rule's topic: application/protobuf is implied.
  await client.publishAsync('devices/sensor-1/pb/hum', Buffer.from(Reading.encode({ value: 40 }).finish()), { qos: 1 })

  await waitFor(() => rx.events.length >= 4, 'four events at the receiver')
  const [pbEvent, cborEvent, plain, implied] = rx.events
  assert.equal(rx.events.length, 4, 'the refused publish stored nothing')
  assert.equal(implied!.type, 'sensor.hum')
  assert.equal(implied!.sourcecontenttype, 'application/protobuf')
  assert.deepEqual(implied!.data, { value: 40 })
  assert.equal(implied!.devicetime, undefined, 'no epoch_ms field, no devicetime')
  assert.equal(pbEvent!.type, 'sensor.temp')
  assert.equal(pbEvent!.datacontenttype, 'application/json')
  assert.equal(pbEvent!.sourcecontenttype, 'application/x-protobuf')
  assert.deepEqual(pbEvent!.data, { sensor_id: 't-1', value: 21.5, unit: 'KELVIN', epoch_ms: '1714564800123' })
  assert.equal(pbEvent!.devicetime, '2024-05-01T12:00:00.123Z')

  assert.equal(cborEvent!.type, 'sensor.cbor')
  assert.equal(cborEvent!.subject, 'devices/sensor-1/cbor/hum')
  assert.equal(cborEvent!.datacontenttype, 'application/json')
  assert.equal(cborEvent!.sourcecontenttype, 'application/cbor')
  assert.deepEqual(cborEvent!.data, { rh: 40.5, ts: 1_714_564_800 })
  assert.equal(cborEvent!.devicetime, '2024-05-01T12:00:00.000Z')

  assert.equal(plain!.type, 'gridgate.telemetry')
  assert.equal(plain!.devicetime, undefined)
  assert.deepEqual(plain!.data, { c: 1 })
  assert.ok(Number(pbEvent!.sequence) < Number(cborEvent!.sequence) && Number(cborEvent!.sequence) < Number(plain!.sequence))

  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  assert.ok(metrics.includes('gridgate_ingress_total{protocol="mqtt",outcome="refused"} 1'), 'the refused publish is counted')
  assert.ok(metrics.includes('gridgate_ingress_total{protocol="mqtt",outcome="stored"} 4'))
})

test('MQTT 3.1.1 cannot refuse: invalid CBOR on a CBOR rule topic is kept raw with normalizeerror and counted', async (t) => {
  const dir = tempDir(t)
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(dir, 'data'), { cloud: rx.url }, {
    rules: [{ topic: 'devices/+/cbor/#', contentType: 'application/cbor' }],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/cbor/bad', Buffer.from([0xf9, 0x7e, 0x00]), { qos: 1 }) // NaN
  await waitFor(() => rx.events.length === 1, 'the raw event')
  const ev = rx.events[0]!
  assert.equal(ev.data_base64, '+X4A')
  assert.equal(ev.datacontenttype, 'application/octet-stream')
  assert.equal(ev.sourcecontenttype, 'application/cbor')
  assert.equal(ev.normalizeerror, 'GG_ERR_PAYLOAD_INVALID')
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  assert.match(metrics, /gridgate_normalize_failures_total\{protocol="mqtt"\} 1/)
})
