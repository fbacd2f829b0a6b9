import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, renderConfig } from '../../config/load.js'
import { GridgateError } from '../../gateway/errors.js'
import { deviceTime, parseTopicPattern, Rules, type RuleConfig } from '../../gateway/rules.js'
import { tempDir } from '../helpers/util.js'
import { writeProtos } from '../helpers/protos.js'

test('topic patterns: literals, +, # and named captures match like MQTT filters', () => {
  const cases: Array<[string, string, string[] | null]> = [
    ['devices/{deviceId}/{kind}', 'devices/s1/temp', ['s1', 'temp']],
    ['devices/{deviceId}/{kind}', 'devices/s1/temp/x', null],
    ['devices/{deviceId}/{kind}', 'devices/s1', null],
    ['devices/{deviceId}/{kind}', 'devices/s1/', ['s1', '']], // an empty level is a level
    ['devices/+/temp', 'devices/s1/temp', []],
    ['devices/+/temp', 'devices/s1/hum', null],
    ['devices/#', 'devices', []], // '#' also matches the parent [MQTT-4.7.1-2]
    ['devices/#', 'devices/a/b/c', []],
    ['devices/{id}/#', 'devices/a/b/c', ['a']],
    ['#', 'anything/at/all', []],
    ['+/x', '$SYS/x', null], // [MQTT-4.7.2-1]
    ['devices/a', 'devices/ab', null],
    ['devices/ab', 'devices/a', null],
  ]
  for (const [pattern, topic, expected] of cases) {
    const rules = Rules.compile([{ topic: pattern, type: 'x' }])
    const m = rules.match(topic)
    assert.equal(m === undefined ? null : 'matched', expected === null ? null : 'matched', `${pattern} ~ ${topic}`)
    if (expected !== null && expected.length > 0) {
      const named = Rules.compile([{ topic: pattern, type: expected.map((_, i) => `{${(parseTopicPattern(pattern) as { captures: string[] }).captures[i]}}`).join('|') }])
      assert.equal(named.match(topic)?.type, expected.join('|'), `${pattern} ~ ${topic}`)
    }
  }
})

test('invalid topic patterns say what is wrong', () => {
  for (const [pattern, why] of [
    ['', /empty/],
    ['a/#/b', /'#' must be the last level/],
    ['a/b#', /'#' must be alone/],
    ['a/+b', /'\+' must be alone/],
    ['a/x{id}', /a capture is a whole level/],
    ['a/{1id}', /a capture is a whole level/],
    ['a/{id}/{id}', /\{id\} is used twice/],
  ] as const) {
    const parsed = parseTopicPattern(pattern)
    assert.ok(typeof parsed === 'string' && why.test(parsed), `${pattern}: ${String(parsed)}`)
  }
})

test('the first matching rule wins, its type fills in captures, content type and deviceTime come with it', () => {
  const rules = Rules.compile([
    { topic: 'devices/{deviceId}/cbor/{kind}', type: 'sensor.{kind}.{deviceId}', contentType: 'application/cbor', deviceTime: 'meta.ts' },
    { topic: 'devices/+/cbor/#', type: 'fallback' },
    { topic: 'devices/#' },
  ])
  assert.deepEqual(rules.match('devices/s1/cbor/temp'), { type: 'sensor.temp.s1', contentType: 'application/cbor', deviceTime: ['meta', 'ts'] })
  assert.deepEqual(rules.match('devices/s1/cbor/temp/extra'), { type: 'fallback' })
  assert.deepEqual(rules.match('devices/s1/json'), {})
  assert.equal(rules.match('other/s1'), undefined)
  assert.equal(Rules.none.match('devices/s1'), undefined)
})

test('deviceTime reads RFC 3339 strings and epoch seconds or milliseconds at a dotted path', () => {
  const json = (v: unknown) => ({ kind: 'json' as const, text: JSON.stringify(v) })
  assert.equal(deviceTime(json({ ts: '2024-05-01T12:00:00.5+02:00' }), ['ts']), '2024-05-01T10:00:00.500Z')
  assert.equal(deviceTime(json({ meta: { ts: 1_714_564_800 } }), ['meta', 'ts']), '2024-05-01T12:00:00.000Z')
  assert.equal(deviceTime(json({ ts: 1_714_564_800_123 }), ['ts']), '2024-05-01T12:00:00.123Z')
  assert.equal(deviceTime(json({ ts: 1_714_564_800.25 }), ['ts']), '2024-05-01T12:00:00.250Z')
  assert.equal(deviceTime(json({ ts: '1714564800123' }), ['ts']), '2024-05-01T12:00:00.123Z') // protobuf int64
  assert.equal(deviceTime(json([{ t: 1_714_564_800 }]), ['0', 't']), '2024-05-01T12:00:00.000Z') // SenML: first record
  for (const bad of [{}, { ts: 'yesterday' }, { ts: '2024-05-01' }, { ts: '2024-13-01T00:00:00Z' }, { ts: true }, { ts: null }, { ts: 1e300 }, { ts: { a: 1 } }]) {
    assert.equal(deviceTime(json(bad), ['ts']), undefined, JSON.stringify(bad))
  }
  assert.equal(deviceTime({ kind: 'text', text: '{"ts":1}' }, ['ts']), undefined)
  assert.equal(deviceTime(json({ ts: 1 }), ['ts', 'x']), undefined)
})

function configFile (t: TestContext, rules: unknown): string {
  const dir = tempDir(t)
  const file = path.join(dir, 'gridgate.yaml')
  fs.writeFileSync(file, JSON.stringify({ rules }))
  return file
}

test('rules load from the config: proto paths resolve against its directory and the rules compile', (t) => {
  const dir = tempDir(t)
  writeProtos(path.join(dir))
  fs.mkdirSync(path.join(dir, 'conf'))
  const file = path.join(dir, 'conf', 'gridgate.yaml')
  fs.writeFileSync(file, `rules:
  - topic: devices/{deviceId}/pb/{kind}
    type: sensor.{kind}
    protobuf: { file: ../reading.proto, message: demo.v1.Reading }
    deviceTime: epoch_ms
  - { topic: "devices/+/cbor/#", contentType: application/cbor }
`)
  const config = loadConfig({ path: file, env: {} })
  assert.equal(config.rules[0]?.protobuf?.file, path.join(dir, 'reading.proto'))
  assert.equal(config.rules[1]?.contentType, 'application/cbor')
  const rules = Rules.compile(config.rules as RuleConfig[])
  assert.equal(rules.size, 2)
  assert.equal(rules.match('devices/s1/pb/temp')?.protobuf?.fullName, '.demo.v1.Reading')
  assert.match(renderConfig(config), /rules:\n {2}- topic: devices\/\{deviceId\}\/pb\/\{kind\}/)
  assert.deepEqual(loadConfig({ env: {} }).rules, [], 'no rules by default')
})

test('every rule problem is reported at once, each with its path', (t) => {
  const file = configFile(t, [
    { topic: 'devices/#/x', type: 'a' },
    { topic: 'devices/{id}/{kind}', type: 'sensor.{knd}' },
    { topic: 'devices/{id}', protobuf: { file: 'missing.proto', message: 'demo.v1.Reading' } },
    { topic: 'devices/{id}', protobuf: { file: 'protos/reading.proto', message: 'demo.v1.Nope' } },
    { topic: 'devices/{id}', contentType: 'not a type', deviceTime: 'a..b', extra: 1 },
    { topic: 'devices/{id}', protobuf: { file: 'protos/reading.proto' } },
  ])
  fs.mkdirSync(path.join(path.dirname(file), 'protos'))
  writeProtos(path.join(path.dirname(file), 'protos'))
  let err: unknown
  try { loadConfig({ path: file, env: {} }) } catch (e) { err = e }
  assert.ok(err instanceof GridgateError && err.code === 'GG_ERR_CONFIG_INVALID', String(err))
  const details = err.details.join('\n')
  for (const expected of [
    /^rules\[0\]\.topic: invalid topic pattern "devices\/#\/x": '#' must be the last level$/m,
    /^rules\[1\]\.type: \{knd\} is not a capture of the topic pattern \(captures: \{id\}, \{kind\}\)$/m,
    /^rules\[2\]\.protobuf\.file: cannot load .*missing\.proto/m,
    /^rules\[3\]\.protobuf\.message: .*reading\.proto defines no message type "demo\.v1\.Nope"$/m,
    /^rules\[4\]\.contentType: expected a media type/m,
    /^rules\[4\]\.deviceTime: expected a dotted field path/m,
    /^rules\[4\]\.extra: unknown key$/m,
    /^rules\[5\]\.protobuf\.message: required$/m,
  ]) assert.match(details, expected)
  assert.equal(err.details.length, 8, details)
})

test('Rules.compile refuses a rule whose .proto disappeared after loading, with GG_ERR_CONFIG_INVALID', () => {
  assert.throws(() => Rules.compile([{ topic: 'a', protobuf: { file: '/nonexistent/x.proto', message: 'X' } }]),
    (err: unknown) => err instanceof GridgateError && err.code === 'GG_ERR_CONFIG_INVALID' && /rules\[0\]\.protobuf: cannot load/.test(err.message))
})
