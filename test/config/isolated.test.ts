import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { loadConfigIsolated } from '../../config/isolated.js'
import { loadConfig } from '../../config/load.js'
import { GridgateError } from '../../gateway/errors.js'
import { spawnGatewayProcess } from '../../scripts/gateway-process.js'
import { repoRoot, tempDir } from '../helpers/util.js'

const exampleFile = join(repoRoot, 'config', 'gridgate.example.yaml')

function isDeepFrozen (v: unknown): boolean {
  if (typeof v !== 'object' || v === null) return true
  return Object.isFrozen(v) && Object.values(v).every(isDeepFrozen)
}

async function rejection (p: Promise<unknown>): Promise<unknown> {
  try {
    await p
  } catch (err) {
    return err
  }
  return assert.fail('expected a rejection')
}

test('the config loaded in its own thread equals the one loaded in-process, frozen all the way down', async () => {
  const env = { GRIDGATE_MQTT_PORT: '18830', GRIDGATE_STORE_SYNC: 'normal' }
  const inProcess = loadConfig({ path: exampleFile, env })
  const isolated = await loadConfigIsolated({ path: exampleFile, env })
  assert.deepEqual(isolated, inProcess)
  assert.equal(isolated.mqtt.port, 18830)
  assert.equal(isolated.store.sync, 'normal')
  assert.ok(isDeepFrozen(isolated))
  // Without a path: the defaults, relative to the given working directory.
  assert.deepEqual(await loadConfigIsolated({ env: {}, cwd: '/var/tmp' }), loadConfig({ env: {}, cwd: '/var/tmp' }))
})

test('a config that does not load rejects with the same code, message and details as in-process', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'bad.yaml')
  writeFileSync(file, 'mqtt:\n  port: 99999\n  bogus: 1\nuplinks:\n  - { name: a, type: http, url: "ftp://x" }\n')
  const cases: Array<[string, { path?: string, env: NodeJS.ProcessEnv }]> = [
    ['GG_ERR_CONFIG_INVALID', { path: file, env: {} }],
    ['GG_ERR_CONFIG_NOT_FOUND', { path: join(dir, 'missing.yaml'), env: {} }],
    ['GG_ERR_ENV_UNKNOWN', { env: { GRIDGATE_NO_SUCH_KEY: '1' } }],
  ]
  for (const [code, opts] of cases) {
    let expected: GridgateError | undefined
    try { loadConfig(opts) } catch (err) { expected = err as GridgateError }
    assert.ok(expected instanceof GridgateError, code)
    const err = await rejection(loadConfigIsolated(opts))
    assert.ok(err instanceof GridgateError, `${code}: ${String(err)}`)
    assert.equal(err.code, code)
    assert.equal(err.message, expected.message)
    assert.deepEqual(err.details, expected.details)
    if (code === 'GG_ERR_CONFIG_INVALID') assert.ok(err.details.length >= 3, err.message)
  }
})

test('a running gateway never loads the YAML parser or the schema library on its main thread', async (t) => {
  const dir = tempDir(t)
  const record = join(dir, 'imports.txt')
  const config = join(dir, 'gridgate.yaml')
  writeFileSync(config, [
    `gateway: { id: gw-isolated, dataDir: ${JSON.stringify(join(dir, 'data'))} }`,
    'mqtt: { host: 127.0.0.1, port: 0 }',
    'coap: { host: 127.0.0.1, port: 0 }',
    'websocket: { host: 127.0.0.1, port: 0 }',
    'admin: { host: 127.0.0.1, port: 0 }',
    'devices: [{ id: dev-1, token: secret-token-1, publish: ["devices/dev-1/#"] }]',
    '',
  ].join('\n'))
  const preload = fileURLToPath(new URL('../helpers/record-imports.js', import.meta.url))
  const gw = await spawnGatewayProcess({
    configFile: config,
    env: { PATH: process.env.PATH, NODE_OPTIONS: `--import=${preload}`, RECORD_IMPORTS_TO: record },
  })
  t.after(async () => { gw.child.kill('SIGKILL'); await gw.exited })
  const urls = readFileSync(record, 'utf8').split('\n').filter(u => u !== '')
  // The recorder works: the gateway's own modules are there, the config loader's thread module too.
  assert.ok(urls.some(u => u.endsWith('/gateway/gateway.js')), `recorded ${urls.length} modules`)
  assert.ok(urls.some(u => u.endsWith('/config/isolated.js')))
  const loaded = urls.filter(u => /\/node_modules\/(zod|yaml)\//.test(u) || /\/config\/(load|schema)\.js$/.test(u))
  assert.deepEqual(loaded, [])
  // The device registry's add, which needs the schema library, loads it on first use.
  const res = await fetch(`http://127.0.0.1:${gw.adminPort}/api/v1/devices`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: 'dev-2', publish: ['#/bad'] }) })
  assert.equal(res.status, 400)
  assert.equal(((await res.json()) as { code: string }).code, 'GG_ERR_DEVICE_INVALID')
  assert.ok(readFileSync(record, 'utf8').includes('/node_modules/zod/'))
})
