// The uplink keys for endpoints, auth, TLS, compression and breakers: validation, defaults left to
// the code, path resolution, and check-config redaction of secrets.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, renderConfig } from '../../config/load.js'
import { GridgateError } from '../../gateway/errors.js'
import { tempDir } from '../helpers/util.js'

function load (t: TestContext, yaml: string) {
  const dir = tempDir(t)
  const file = path.join(dir, 'gridgate.yaml')
  fs.writeFileSync(file, yaml)
  return { config: loadConfig({ path: file, env: {} }), dir }
}

function problems (t: TestContext, yaml: string): readonly string[] {
  try {
    load(t, yaml)
  } catch (err) {
    assert.ok(err instanceof GridgateError && err.code === 'GG_ERR_CONFIG_INVALID', String(err))
    return err.details
  }
  assert.fail('expected the config to be refused')
}

test('a gRPC uplink with several endpoints, breaker and TLS files resolved against the config file', (t) => {
  const { config, dir } = load(t, `
uplinks:
  - name: analytics
    type: grpc
    endpoints: ["10.0.0.1:50051", "ingest.example.com:443"]
    selection: round-robin
    breaker: { failures: 3, halfOpenAfter: 15s }
    tls: { ca: certs/ca.pem, cert: certs/gw.pem, key: /etc/gw-key.pem }
    gzip: true
`)
  const u = config.uplinks[0]!
  assert.equal(u.type, 'grpc')
  assert.deepEqual(u.endpoints, ['10.0.0.1:50051', 'ingest.example.com:443'])
  assert.equal(u.selection, 'round-robin')
  assert.deepEqual(u.breaker, { failures: 3, halfOpenAfter: 15_000 })
  assert.deepEqual(u.tls, { ca: path.join(dir, 'certs/ca.pem'), cert: path.join(dir, 'certs/gw.pem'), key: '/etc/gw-key.pem' })
  assert.equal(u.gzip, true)
})

test('url (or address) and endpoints: exactly one of them', (t) => {
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: grpc }]\n'), ['uplinks[0].address: required'])
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: http, url: "http://x/e", endpoints: ["http://y/e"] }]\n'),
    ['uplinks[0].endpoints: give url or endpoints, not both'])
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: http, endpoints: [] }]\n'), ['uplinks[0].endpoints: expected at least 1 items'])
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: grpc, address: "http://x:1/" }]\n'), ['uplinks[0].address: expected host:port, got "http://x:1/"'])
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: grpc, address: "http://x:1" }]\n'), ['uplinks[0].address: expected host:port, got "http://x:1"'])
  assert.equal(load(t, 'uplinks: [{ name: a, type: grpc, endpoints: ["[::1]:50051", "dns:///ingest.example.com:443"] }]\n').config.uplinks[0]?.type, 'grpc')
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: http, url: "http://x/e", selection: random }]\n'),
    ['uplinks[0].selection: expected one of "failover", "round-robin", got "random"'])
  assert.deepEqual(problems(t, 'uplinks: [{ name: a, type: http, url: "https://x/e", tls: { cert: c.pem } }]\n'),
    ['uplinks[0].tls: cert and key go together, give both or neither'])
})

test('check-config redacts the bearer token and header values', (t) => {
  const { config } = load(t, `
uplinks:
  - { name: cloud, type: http, url: "https://x.example/e", bearerToken: "tok-very-secret", headers: { X-Api-Key: key-very-secret } }
  - { name: backup, type: http, endpoints: ["https://u:pw-very-secret@a.example/e", "https://b.example/e"] }
`)
  const text = renderConfig(config)
  assert.doesNotMatch(text, /very-secret/)
  assert.match(text, /bearerToken: <redacted>/)
  assert.match(text, /headers: <redacted>/)
  assert.match(text, /https:\/\/u:<redacted>@a\.example\/e/)
})

test('an unreadable uplink TLS file stops the start with the path that failed', async (t) => {
  const { Gateway } = await import('../../gateway/gateway.js')
  const { pino } = await import('pino')
  const { config } = load(t, `
gateway: { dataDir: data }
mqtt: { port: 0, host: 127.0.0.1 }
admin: { port: 0 }
uplinks: [{ name: cloud, type: http, url: "https://x.example/e", tls: { ca: missing-ca.pem } }]
`)
  const gw = new Gateway(config, { log: pino({ level: 'silent' }) })
  await assert.rejects(gw.start(), (err: GridgateError) => err.code === 'GG_ERR_CONFIG_INVALID' && /uplinks\.cloud\.tls\.ca: cannot read .*missing-ca\.pem: ENOENT/.test(err.message))
})
