import assert from 'node:assert/strict'
import { scryptSync, timingSafeEqual } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { test, type TestContext } from 'node:test'
import { fileURLToPath } from 'node:url'
import { envOverrideNames, loadConfig, renderConfig, RESERVED_ENV } from '../../config/load.js'
import type { Config } from '../../config/schema.js'
import { GridgateError, type ErrorCode } from '../../gateway/errors.js'

// Tests run from dist/test/config/; the example lives in the source tree.
const repoRoot = fileURLToPath(new URL('../../../', import.meta.url))
const exampleFile = join(repoRoot, 'config', 'gridgate.example.yaml')

function tempDir (t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'gridgate-config-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function writeConfig (t: TestContext, yaml: string, name = 'gridgate.yaml'): string {
  const file = join(tempDir(t), name)
  writeFileSync(file, yaml)
  return file
}

function load (t: TestContext, yaml: string, env: NodeJS.ProcessEnv = {}): Config {
  return loadConfig({ path: writeConfig(t, yaml), env })
}

function loadError (t: TestContext, yaml: string, env: NodeJS.ProcessEnv = {}, code: ErrorCode = 'GG_ERR_CONFIG_INVALID'): GridgateError {
  try {
    load(t, yaml, env)
  } catch (err) {
    assert.ok(err instanceof GridgateError, `expected a GridgateError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    return err
  }
  assert.fail('expected loadConfig to throw')
}

const CLOUD = `
uplinks:
  - name: cloud
    type: http
    url: http://127.0.0.1:9000/events
`

const TWO_DEVICES = `
devices:
  - { id: sensor-1, token: sensor-1-secret-token }
  - { id: sensor.2, token: sensor-2-secret-token }
`

test('without a file every key takes its default', () => {
  const cwd = '/srv/gridgate'
  const config = loadConfig({ env: {}, cwd })
  assert.deepEqual(config, {
    gateway: {
      id: hostname().replace(/[^A-Za-z0-9._-]/g, '-'),
      dataDir: '/srv/gridgate/data',
      logLevel: 'info',
      shutdownTimeout: 10_000,
      gcWhenIdle: true,
    },
    mqtt: { enabled: true, host: '0.0.0.0', port: 1883, maxPacketSize: 262_144, maxRetained: 10_000, maxOfflineMessages: 1000, sessionExpiry: 3_600_000, maxSessions: 10_000 },
    coap: { enabled: true, host: '0.0.0.0', port: 5683, maxPayloadSize: 65_536, maxBlockwiseTransfers: 256, maxBlockwisePerEndpoint: 4, blockwiseTimeout: 60_000 },
    websocket: {
      enabled: true, host: '0.0.0.0', port: 8080, mqttPath: '/mqtt', eventsPath: '/ws', maxFrameSize: 262_144,
      maxBatch: 100, maxInflight: 16, maxBufferedBytes: 1_048_576, pingInterval: 30_000,
    },
    http: { enabled: true, maxBodySize: 1_048_576, pubsubName: 'gridgate' },
    admin: { host: '127.0.0.1', port: 9080 },
    auth: { allowAnonymous: false },
    devices: [],
    store: {
      maxBytes: 1024 ** 3,
      minFreeDisk: 64 * 1024 ** 2,
      ttl: 7 * 86_400_000,
      whenFull: 'drop-oldest',
      rejectWait: 10_000,
      walMaxBytes: 64 * 1024 ** 2,
      reserveBytes: 8 * 1024 ** 2,
      sync: 'full',
      dedupWindow: 120_000,
      commitDelay: 0,
    },
    uplinks: [],
    rules: [],
  })
})

test('an empty file and a file of comments both mean all defaults', (t) => {
  const defaults = loadConfig({ env: {}, cwd: '/x' })
  for (const yaml of ['', '# nothing here\n\n# at all\n']) {
    const config = loadConfig({ path: writeConfig(t, yaml), env: {} })
    assert.deepEqual({ ...config, gateway: { ...config.gateway, dataDir: '' } }, { ...defaults, gateway: { ...defaults.gateway, dataDir: '' } })
  }
})

test('defaults fill the keys a section leaves out, including list items', (t) => {
  const config = load(t, `
mqtt: { port: 1884 }
devices: [{ id: sensor-1, token: sensor-1-secret-token }]
${CLOUD}`)
  assert.deepEqual(config.mqtt, { enabled: true, host: '0.0.0.0', port: 1884, maxPacketSize: 262_144, maxRetained: 10_000, maxOfflineMessages: 1000, sessionExpiry: 3_600_000, maxSessions: 10_000 })
  assert.deepEqual(config.devices[0], {
    id: 'sensor-1',
    token: 'sensor-1-secret-token',
    publish: ['devices/sensor-1/#', '!devices/sensor-1/commands/#'],
    subscribe: ['devices/sensor-1/commands/#'],
    enabled: true,
  })
  assert.deepEqual(config.uplinks[0], {
    name: 'cloud',
    type: 'http',
    url: 'http://127.0.0.1:9000/events',
    batchMaxEvents: 500,
    batchMaxBytes: 1_048_576,
    batchMaxDelay: 20,
    timeout: 10_000,
    retry: { initialDelay: 100, maxDelay: 30_000 },
    startFrom: 'newest',
  })
})

test('sizes and durations in the file become bytes and milliseconds', (t) => {
  const config = load(t, `
gateway: { shutdownTimeout: 1m30s }
mqtt: { maxPacketSize: 1.5MiB }
store: { dedupWindow: 5m, commitDelay: 2 }
uplinks:
  - { name: cloud, type: http, url: "https://cloud.example/events", batchMaxBytes: 64KB, batchMaxDelay: 250ms,
      timeout: 2h, retry: { initialDelay: 1s, maxDelay: 7d } }
`)
  assert.equal(config.gateway.shutdownTimeout, 90_000)
  assert.equal(config.mqtt.maxPacketSize, 1_572_864)
  assert.equal(config.store.dedupWindow, 300_000)
  assert.equal(config.store.commitDelay, 2)
  const [cloud] = config.uplinks
  assert.ok(cloud !== undefined)
  assert.equal(cloud.batchMaxBytes, 64_000)
  assert.equal(cloud.batchMaxDelay, 250)
  assert.equal(cloud.timeout, 7_200_000)
  assert.deepEqual(cloud.retry, { initialDelay: 1000, maxDelay: 604_800_000 })
})

test('an unknown key is an error that names its full path', (t) => {
  const err = loadError(t, `
mqtts: {}
gateway: { logLevl: debug }
uplinks:
  - { name: cloud, type: http, urll: "http://x", retry: { maxDelai: 1s } }
`)
  assert.ok(err.details.includes('mqtts: unknown key'), err.message)
  assert.ok(err.details.includes('gateway.logLevl: unknown key'), err.message)
  assert.ok(err.details.includes('uplinks[0].urll: unknown key'), err.message)
  assert.ok(err.details.includes('uplinks[0].retry.maxDelai: unknown key'), err.message)
  assert.ok(err.details.includes('uplinks[0].url: required'), err.message)
})

test('several bad values are reported together, each with its path and what was given', (t) => {
  const err = loadError(t, `
gateway: { logLevel: loud, shutdownTimeout: soon }
mqtt: { port: abc, maxPacketSize: 10 }
admin: { port: 70000 }
store: { sync: sometimes }
uplinks:
  - { name: cloud, type: http, url: "ftp://x", batchMaxEvents: 0 }
`)
  assert.deepEqual(err.details, [
    'gateway.logLevel: expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent", got "loud"',
    'gateway.shutdownTimeout: expected a duration like 250ms, 30s, 5m, 1h30m, 7d or a whole number of milliseconds, got "soon"',
    'mqtt.port: expected integer 0..65535, got "abc"',
    'mqtt.maxPacketSize: expected a size of 1KiB to 256MiB, got 10',
    'admin.port: expected integer 0..65535, got 70000',
    'store.sync: expected one of "full", "normal", got "sometimes"',
    'uplinks[0].url: expected an http:// or https:// URL, got "ftp://x"',
    'uplinks[0].batchMaxEvents: expected at least 1, got 0',
  ])
  assert.match(err.message, /does not validate \(8 problems\)/)
})

test('a section of the wrong type is reported, not ignored', (t) => {
  const err = loadError(t, 'mqtt:\nadmin: 5\ndevices: { id: x }\n')
  assert.deepEqual(err.details, [
    'mqtt: expected a mapping, got null',
    'admin: expected a mapping, got 5',
    'devices: expected a list, got a mapping',
  ])
})

test('a YAML syntax error is reported with its line and column', (t) => {
  const err = loadError(t, 'mqtt:\n  port: 1883\n host: x\n')
  assert.equal(err.details.length, 1)
  assert.match(err.details[0] ?? '', /^line 3, column \d+: /)
})

test('a YAML tag outside the core schema is refused rather than turned into an object', (t) => {
  const err = loadError(t, 'gateway: !!binary aGVsbG8=\n')
  assert.match(err.details[0] ?? '', /^line 1, column \d+: .*tag/)
})

test('a key given twice in YAML is an error', (t) => {
  const err = loadError(t, 'mqtt: { port: 1 }\nmqtt: { port: 2 }\n')
  assert.match(err.details[0] ?? '', /^line 2, column 1: .*unique/)
})

test('a missing file is GG_ERR_CONFIG_NOT_FOUND, its relative path resolved against cwd', (t) => {
  const dir = tempDir(t)
  assert.throws(() => loadConfig({ path: 'nope.yaml', cwd: dir, env: {} }), (err: unknown) => {
    assert.ok(err instanceof GridgateError)
    assert.equal(err.code, 'GG_ERR_CONFIG_NOT_FOUND')
    assert.ok(err.message.includes(join(dir, 'nope.yaml')), err.message)
    return true
  })
  writeFileSync(join(dir, 'found.yaml'), 'mqtt: { port: 1 }\n')
  assert.equal(loadConfig({ path: 'found.yaml', cwd: dir, env: {} }).mqtt.port, 1)
})

test('a relative dataDir resolves against the config file directory, not the cwd', (t) => {
  const dir = tempDir(t)
  mkdirSync(join(dir, 'etc'))
  writeFileSync(join(dir, 'etc', 'gridgate.yaml'), 'gateway: { dataDir: ../var/data }\n')
  const config = loadConfig({ path: 'etc/gridgate.yaml', cwd: dir, env: {} })
  assert.equal(config.gateway.dataDir, join(dir, 'var', 'data'))

  writeFileSync(join(dir, 'etc', 'abs.yaml'), 'gateway: { dataDir: /var/lib/gridgate }\n')
  assert.equal(loadConfig({ path: join(dir, 'etc', 'abs.yaml'), env: {} }).gateway.dataDir, '/var/lib/gridgate')

  writeFileSync(join(dir, 'etc', 'default.yaml'), '')
  assert.equal(loadConfig({ path: join(dir, 'etc', 'default.yaml'), env: {} }).gateway.dataDir, join(dir, 'etc', 'data'))
})

test('a device needs exactly one of token and tokenHash, reported at the item', (t) => {
  const err = loadError(t, `
devices:
  - { id: none }
  - { id: both, token: both-secret-token, tokenHash: "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA" }
  - { id: short, token: short }
  - { id: plain, tokenHash: not-a-hash }
`)
  assert.deepEqual(err.details, [
    'devices[0]: one of token or tokenHash is required',
    'devices[1]: token and tokenHash are mutually exclusive, give only one',
    'devices[2].token: expected at least 8 characters',
    'devices[3].tokenHash: expected a PHC string starting with $scrypt$ (see gridgate hash-token)',
  ])
})

test('a token that is too short is not echoed in the error', (t) => {
  const err = loadError(t, 'devices: [{ id: d, token: s3cr3t }]\n')
  assert.ok(!err.message.includes('s3cr3t'), err.message)
})

test('duplicate device ids and uplink names are reported at the duplicate', (t) => {
  const err = loadError(t, `
devices:
  - { id: sensor-1, token: sensor-1-secret-token }
  - { id: sensor-2, token: sensor-2-secret-token }
  - { id: sensor-1, token: sensor-3-secret-token }
uplinks:
  - { name: cloud, type: http, url: "http://a" }
  - { name: cloud, type: http, url: "http://b" }
`)
  assert.deepEqual(err.details, [
    'devices[2].id: duplicate device id "sensor-1", first used at devices[0]',
    'uplinks[1].name: duplicate uplink name "cloud", first used at uplinks[0]',
  ])
})

test('duplicates are still found when another item has problems', (t) => {
  const err = loadError(t, `
devices:
  - { id: a, token: a-secret-token, publish: ["x/#/y"] }
  - { id: a, token: b-secret-token }
`)
  assert.equal(err.details.length, 2, err.message)
  assert.ok(err.details.includes('devices[1].id: duplicate device id "a", first used at devices[0]'), err.message)
})

test('invalid MQTT topic filters are rejected at their index, valid ones kept', (t) => {
  const err = loadError(t, `
devices:
  - id: d
    token: d-secret-token
    publish: ["a/#/b", "a+", "", "#/x", "a/b#"]
    subscribe: ["#", "+", "a/+/b/#", "+/+", "a//b"]
`)
  assert.deepEqual(err.details, [
    `devices[0].publish[0]: invalid MQTT topic filter "a/#/b": '#' must be alone in the last level`,
    `devices[0].publish[1]: invalid MQTT topic filter "a+": '+' must be alone in its level`,
    'devices[0].publish[2]: invalid MQTT topic filter "": a topic filter must not be empty',
    `devices[0].publish[3]: invalid MQTT topic filter "#/x": '#' must be alone in the last level`,
    `devices[0].publish[4]: invalid MQTT topic filter "a/b#": '#' must be alone in the last level`,
  ])
})

test('an invalid device id or uplink name is rejected', (t) => {
  const err = loadError(t, `
devices: [{ id: "-bad", token: bad-secret-token }, { id: "has space", token: bad-secret-token }]
uplinks: [{ name: "cloud.1", type: http, url: "http://x" }]
`)
  assert.deepEqual(err.details.map((d) => d.split(':')[0]), ['devices[0].id', 'devices[1].id', 'uplinks[0].name'])
})

test('an unknown uplink type names the types there are', (t) => {
  const err = loadError(t, 'uplinks: [{ name: a, type: carrier-pigeon }, { name: b }]\n')
  assert.deepEqual(err.details, ['uplinks[0].type: expected one of "http", "grpc", got "carrier-pigeon"', 'uplinks[1].type: expected one of "http", "grpc"'])
})

test('more than 53 uplinks are refused (one exact bit each in a routes mask)', (t) => {
  const uplinks = Array.from({ length: 54 }, (_, i) => `  - { name: u${i}, type: http, url: "http://x/${i}" }`).join('\n')
  const err = loadError(t, `uplinks:\n${uplinks}\n`)
  assert.deepEqual(err.details, ['uplinks: expected at most 53 uplinks'])
})

test('env overrides set top-level keys with YAML typing', (t) => {
  const config = load(t, 'mqtt: { port: 1883 }\n', {
    GRIDGATE_MQTT_PORT: '1884',
    GRIDGATE_MQTT_ENABLED: 'false',
    GRIDGATE_MQTT_MAX_PACKET_SIZE: '64KiB',
    GRIDGATE_GATEWAY_ID: 'gw-2',
    GRIDGATE_STORE_SYNC: 'normal',
    GRIDGATE_AUTH_ALLOW_ANONYMOUS: 'true',
    GRIDGATE_GATEWAY_SHUTDOWN_TIMEOUT: '1500',
  })
  assert.equal(config.mqtt.port, 1884)
  assert.equal(config.mqtt.enabled, false)
  assert.equal(config.mqtt.maxPacketSize, 65_536)
  assert.equal(config.gateway.id, 'gw-2')
  assert.equal(config.store.sync, 'normal')
  assert.equal(config.auth.allowAnonymous, true)
  assert.equal(config.gateway.shutdownTimeout, 1500)
})

test('env overrides address list items by name or id, nested keys included', (t) => {
  const config = load(t, TWO_DEVICES + CLOUD, {
    GRIDGATE_UPLINKS_CLOUD_URL: 'https://cloud.example/events',
    GRIDGATE_UPLINKS_CLOUD_RETRY_MAX_DELAY: '1m',
    GRIDGATE_UPLINKS_CLOUD_BATCH_MAX_EVENTS: '50',
    GRIDGATE_DEVICES_SENSOR_1_TOKEN: 'rotated-secret-token',
    GRIDGATE_DEVICES_SENSOR_2_ENABLED: 'false',
    GRIDGATE_DEVICES_SENSOR_2_PUBLISH: '["a/#", "b/+/c"]',
  })
  const [cloud] = config.uplinks
  assert.equal(cloud?.type === 'http' ? cloud.url : undefined, 'https://cloud.example/events')
  assert.equal(cloud?.retry.maxDelay, 60_000)
  assert.equal(cloud?.retry.initialDelay, 100)
  assert.equal(cloud?.batchMaxEvents, 50)
  assert.equal(config.devices[0]?.token, 'rotated-secret-token')
  assert.equal(config.devices[1]?.enabled, false)
  assert.deepEqual(config.devices[1]?.publish, ['a/#', 'b/+/c'])
})

test('env overrides of string keys keep the value verbatim', (t) => {
  const config = load(t, TWO_DEVICES, {
    GRIDGATE_GATEWAY_ID: '42',
    GRIDGATE_DEVICES_SENSOR_1_TOKEN: '12345678',
    GRIDGATE_DEVICES_SENSOR_2_TOKEN: '@weird #secret: [x',
  })
  assert.equal(config.gateway.id, '42')
  assert.equal(config.devices[0]?.token, '12345678')
  assert.equal(config.devices[1]?.token, '@weird #secret: [x')
})

test('env overrides work without a file and for sections the file leaves out', (t) => {
  const dir = tempDir(t)
  const config = loadConfig({ cwd: dir, env: { GRIDGATE_ADMIN_PORT: '0', GRIDGATE_GATEWAY_DATA_DIR: 'state' } })
  assert.equal(config.admin.port, 0)
  assert.equal(config.gateway.dataDir, join(dir, 'state'))
})

test('unknown GRIDGATE_ variables are all reported together', (t) => {
  const err = loadError(t, TWO_DEVICES + CLOUD, {
    GRIDGATE_MQTT_PROT: '1',
    GRIDGATE_UPLINKS_EDGE_URL: 'http://x',
    GRIDGATE_DEVICES_SENSOR_3_TOKEN: 'sensor-3-secret-token',
    GRIDGATE_MQTT: '{ port: 1 }',
    GRIDGATE_UPLINKS_CLOUD_NAME: 'other',
    GRIDGATE_UPLINKS_CLOUD_TYPE: 'http',
  }, 'GG_ERR_ENV_UNKNOWN')
  assert.deepEqual(err.details, [
    'GRIDGATE_DEVICES_SENSOR_3_TOKEN: names no configuration key (items of devices are addressed by their id; known: SENSOR_1, SENSOR_2)',
    'GRIDGATE_MQTT: names no configuration key',
    'GRIDGATE_MQTT_PROT: names no configuration key',
    'GRIDGATE_UPLINKS_CLOUD_NAME: names no configuration key (items of uplinks are addressed by their name; known: CLOUD)',
    'GRIDGATE_UPLINKS_CLOUD_TYPE: names no configuration key (items of uplinks are addressed by their name; known: CLOUD)',
    'GRIDGATE_UPLINKS_EDGE_URL: names no configuration key (items of uplinks are addressed by their name; known: CLOUD)',
  ])
})

test('reserved and non-GRIDGATE variables are ignored', (t) => {
  assert.deepEqual(RESERVED_ENV, ['GRIDGATE_TEST_FAULTS'])
  const config = load(t, '', { GRIDGATE_TEST_FAULTS: 'hold-commit', PATH: '/bin', gridgate_mqtt_port: '1', GRIDGATEMQTT: 'x' })
  assert.equal(config.mqtt.port, 1883)
})

test('a bad env value is reported at its key and names the variable', (t) => {
  const err = loadError(t, '', { GRIDGATE_MQTT_PORT: 'abc', GRIDGATE_STORE_SYNC: '[normal' })
  assert.equal(err.details.length, 2, err.message)
  assert.match(err.details[0] ?? '', /^store\.sync: GRIDGATE_STORE_SYNC is not a YAML value: line 1, column \d+: /)
  assert.equal(err.details[1], 'mqtt.port: expected integer 0..65535, got "abc" (from GRIDGATE_MQTT_PORT)')
})

test('an env name that two items share is refused rather than guessed', (t) => {
  const err = loadError(t, `
devices:
  - { id: a-b, token: first-secret-token }
  - { id: a_b, token: other-secret-token }
`, { GRIDGATE_DEVICES_A_B_TOKEN: 'third-secret-token' }, 'GG_ERR_ENV_UNKNOWN')
  assert.match(err.details[0] ?? '', /^GRIDGATE_DEVICES_A_B_TOKEN: names more than one key \(devices\[0\]\.token, devices\[1\]\.token\)/)
})

test('env names are derived from the schema, list items from the file', () => {
  const names = envOverrideNames({ devices: [{ id: 'sensor-1' }], uplinks: [{ name: 'cloud', type: 'http' }] })
  for (const name of [
    'GRIDGATE_GATEWAY_ID', 'GRIDGATE_GATEWAY_DATA_DIR', 'GRIDGATE_GATEWAY_LOG_LEVEL', 'GRIDGATE_GATEWAY_SHUTDOWN_TIMEOUT', 'GRIDGATE_GATEWAY_GC_WHEN_IDLE',
    'GRIDGATE_MQTT_ENABLED', 'GRIDGATE_MQTT_HOST', 'GRIDGATE_MQTT_PORT', 'GRIDGATE_MQTT_MAX_PACKET_SIZE',
    'GRIDGATE_MQTT_MAX_RETAINED', 'GRIDGATE_MQTT_MAX_OFFLINE_MESSAGES', 'GRIDGATE_MQTT_SESSION_EXPIRY', 'GRIDGATE_MQTT_MAX_SESSIONS',
    'GRIDGATE_ADMIN_HOST', 'GRIDGATE_ADMIN_PORT', 'GRIDGATE_AUTH_ALLOW_ANONYMOUS',
    'GRIDGATE_COAP_ENABLED', 'GRIDGATE_COAP_HOST', 'GRIDGATE_COAP_PORT', 'GRIDGATE_COAP_MAX_PAYLOAD_SIZE',
    'GRIDGATE_COAP_MAX_BLOCKWISE_TRANSFERS', 'GRIDGATE_COAP_MAX_BLOCKWISE_PER_ENDPOINT', 'GRIDGATE_COAP_BLOCKWISE_TIMEOUT',
    'GRIDGATE_STORE_SYNC', 'GRIDGATE_STORE_DEDUP_WINDOW', 'GRIDGATE_STORE_COMMIT_DELAY',
    'GRIDGATE_STORE_MAX_BYTES', 'GRIDGATE_STORE_MIN_FREE_DISK', 'GRIDGATE_STORE_TTL', 'GRIDGATE_STORE_WHEN_FULL',
    'GRIDGATE_STORE_REJECT_WAIT', 'GRIDGATE_STORE_WAL_MAX_BYTES', 'GRIDGATE_STORE_RESERVE_BYTES',
    'GRIDGATE_UPLINKS_CLOUD_FILTER_TYPES', 'GRIDGATE_UPLINKS_CLOUD_FILTER_SUBJECTS', 'GRIDGATE_UPLINKS_CLOUD_MAX_LAG_BYTES',
    'GRIDGATE_UPLINKS_CLOUD_MAX_LAG_AGE', 'GRIDGATE_UPLINKS_CLOUD_START_FROM',
    'GRIDGATE_DEVICES_SENSOR_1_TOKEN', 'GRIDGATE_DEVICES_SENSOR_1_TOKEN_HASH', 'GRIDGATE_DEVICES_SENSOR_1_PUBLISH',
    'GRIDGATE_DEVICES_SENSOR_1_SUBSCRIBE', 'GRIDGATE_DEVICES_SENSOR_1_ENABLED',
    'GRIDGATE_UPLINKS_CLOUD_URL', 'GRIDGATE_UPLINKS_CLOUD_BATCH_MAX_EVENTS', 'GRIDGATE_UPLINKS_CLOUD_BATCH_MAX_BYTES',
    'GRIDGATE_UPLINKS_CLOUD_BATCH_MAX_DELAY', 'GRIDGATE_UPLINKS_CLOUD_TIMEOUT',
    'GRIDGATE_UPLINKS_CLOUD_RETRY_INITIAL_DELAY', 'GRIDGATE_UPLINKS_CLOUD_RETRY_MAX_DELAY',
    'GRIDGATE_RULES',
    'GRIDGATE_MQTT_TLS_PORT', 'GRIDGATE_MQTT_TLS_CERT', 'GRIDGATE_MQTT_TLS_KEY', 'GRIDGATE_MQTT_TLS_CA', 'GRIDGATE_MQTT_TLS_REQUIRE_CLIENT_CERT',
    'GRIDGATE_WEBSOCKET_ENABLED', 'GRIDGATE_WEBSOCKET_HOST', 'GRIDGATE_WEBSOCKET_PORT', 'GRIDGATE_WEBSOCKET_MQTT_PATH',
    'GRIDGATE_WEBSOCKET_EVENTS_PATH', 'GRIDGATE_WEBSOCKET_MAX_FRAME_SIZE', 'GRIDGATE_WEBSOCKET_MAX_BATCH',
    'GRIDGATE_WEBSOCKET_MAX_INFLIGHT', 'GRIDGATE_WEBSOCKET_MAX_BUFFERED_BYTES', 'GRIDGATE_WEBSOCKET_PING_INTERVAL',
    'GRIDGATE_WEBSOCKET_TLS_CERT', 'GRIDGATE_WEBSOCKET_TLS_KEY',
    'GRIDGATE_HTTP_ENABLED', 'GRIDGATE_HTTP_MAX_BODY_SIZE', 'GRIDGATE_HTTP_PUBSUB_NAME',
    'GRIDGATE_UPLINKS_CLOUD_ENDPOINTS', 'GRIDGATE_UPLINKS_CLOUD_SELECTION', 'GRIDGATE_UPLINKS_CLOUD_HEADERS',
    'GRIDGATE_UPLINKS_CLOUD_BEARER_TOKEN', 'GRIDGATE_UPLINKS_CLOUD_GZIP', 'GRIDGATE_UPLINKS_CLOUD_TLS_CA',
    'GRIDGATE_UPLINKS_CLOUD_TLS_CERT', 'GRIDGATE_UPLINKS_CLOUD_TLS_KEY', 'GRIDGATE_UPLINKS_CLOUD_BREAKER_FAILURES',
    'GRIDGATE_UPLINKS_CLOUD_BREAKER_HALF_OPEN_AFTER',
  ]) assert.ok(names.includes(name), name)
  assert.equal(names.length, 81, names.join(' '))
})

test('the loaded config is deeply frozen', (t) => {
  const config = load(t, TWO_DEVICES + CLOUD)
  assert.ok(Object.isFrozen(config))
  assert.ok(Object.isFrozen(config.mqtt))
  assert.ok(Object.isFrozen(config.devices))
  assert.ok(Object.isFrozen(config.devices[0]?.publish))
  assert.ok(Object.isFrozen(config.uplinks[0]?.retry))
})

test('the example file validates and its hash is of the token its comment names', () => {
  const config = loadConfig({ path: exampleFile, env: {} })
  assert.equal(config.gateway.id, 'gw-01')
  assert.equal(config.gateway.dataDir, resolve(repoRoot, 'data'))
  assert.equal(config.mqtt.port, 1883)
  assert.deepEqual(config.admin, { host: '127.0.0.1', port: 9080 })
  assert.deepEqual(config.devices.map((d) => d.id), ['sensor-1', 'sensor-2'])
  assert.equal(config.devices[0]?.token, 'sensor-1-secret-token')
  assert.deepEqual(config.uplinks.map((u) => [u.name, u.type, u.type === 'http' ? u.url : u.address]), [['cloud', 'http', 'http://127.0.0.1:9000/events']])

  const [, , params, salt, hash] = (config.devices[1]?.tokenHash ?? '').split('$')
  assert.equal(params, 'ln=15,r=8,p=1')
  const expected = Buffer.from(hash ?? '', 'base64')
  const actual = scryptSync('sensor-2-secret-token', Buffer.from(salt ?? '', 'base64'), 32, { N: 2 ** 15, r: 8, p: 1, maxmem: 64 * 2 ** 20 })
  assert.ok(timingSafeEqual(actual, expected))
})

test('renderConfig prints units, redacts tokens and keeps token hashes', (t) => {
  const config = loadConfig({ path: exampleFile, env: {} })
  const text = renderConfig(config)
  assert.ok(!text.includes('sensor-1-secret-token'), text)
  assert.match(text, /token: <redacted>/)
  assert.ok(text.includes(config.devices[1]?.tokenHash ?? '-'), text)
  assert.match(text, /maxPacketSize: 256KiB/)
  assert.match(text, /batchMaxDelay: 20ms/)
  assert.match(text, /dedupWindow: 2m/)
  assert.match(text, /maxDelay: 30s/)

  // What check-config prints is itself a valid config that loads to the same values.
  const again = load(t, text)
  assert.deepEqual({ ...again, devices: again.devices.map(({ token: _, ...d }) => d) },
    { ...config, devices: config.devices.map(({ token: _, ...d }) => d) })
})

test('renderConfig says what store.sync normal gives up', (t) => {
  const text = renderConfig(load(t, 'store: { sync: normal }\n'))
  assert.match(text, /sync: normal # .*power loss/)
})

test('renderConfig redacts a password inside a URL', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gg-cfg-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'c.yaml')
  writeFileSync(file, 'uplinks:\n  - { name: cloud, type: http, url: "https://user:hunter2@example.test/events" }\n')
  const out = renderConfig(loadConfig({ path: file, env: {} }))
  assert.doesNotMatch(out, /hunter2/)
  assert.match(out, /https:\/\/user:<redacted>@example\.test\/events/)
})
