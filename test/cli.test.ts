import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { spawn } from 'node:child_process'
import type { AddressInfo } from 'node:net'
import { tempDir, cliPath, repoRoot } from './helpers/util.js'
import { baseConfig, spawnGateway, writeConfig } from './helpers/gateway.js'
import { verifyTokenHash } from '../gateway/identity.js'

function gridgate (args: string[], opts: { env?: Record<string, string>, input?: string } = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { env: { PATH: process.env.PATH ?? '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    child.stdin.end(opts.input ?? '')
    child.on('exit', (code) => resolve({ code, stdout, stderr }))
  })
}

test('--help and --version answer and exit 0', async () => {
  const help = await gridgate(['--help'])
  assert.equal(help.code, 0)
  assert.match(help.stdout, /check-config/)
  assert.match(help.stdout, /hash-token/)
  const version = await gridgate(['--version'])
  assert.equal(version.code, 0)
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }
  assert.equal(version.stdout.trim(), pkg.version)
})

test('an unknown command or flag is a usage error with exit code 2', async () => {
  const r = await gridgate(['frobnicate'])
  assert.equal(r.code, 2)
  assert.match(r.stderr, /GG_ERR_USAGE/)
  assert.equal((await gridgate(['--nope'])).code, 2)
})

test('check-config prints the effective config with env overrides and secrets redacted', async (t) => {
  const dir = tempDir(t)
  const file = writeConfig(dir, baseConfig('./data', { cloud: 'http://127.0.0.1:9000/events' }))
  const r = await gridgate(['check-config', '--config', file], { env: { GRIDGATE_MQTT_MAX_PACKET_SIZE: '64KiB', GRIDGATE_UPLINKS_CLOUD_URL: 'http://127.0.0.1:9999/x' } })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /maxPacketSize: 64KiB/)
  assert.match(r.stdout, /http:\/\/127\.0\.0\.1:9999\/x/)
  assert.match(r.stdout, new RegExp(`dataDir: ${path.join(dir, 'data').replace(/[/.]/g, '\\$&')}`), 'dataDir resolved against the config file')
  assert.doesNotMatch(r.stdout, /sensor-1-secret/)
})

test('check-config names every bad key at once and exits 2', async (t) => {
  const dir = tempDir(t)
  const file = path.join(dir, 'bad.yaml')
  fs.writeFileSync(file, [
    'mqtt:',
    '  port: 99999',
    '  maxPacketSize: lots',
    'store:',
    '  sync: sometimes',
    'uplinks:',
    '  - name: cloud',
    '    type: http',
    '    urll: http://127.0.0.1:9000/events',
    'colour: blue',
  ].join('\n'))
  const r = await gridgate(['check-config', '--config', file], { env: { GRIDGATE_MQTT_PORTT: '1' } })
  assert.equal(r.code, 2)
  assert.match(r.stderr, /GG_ERR_ENV_UNKNOWN/)
  assert.match(r.stderr, /GRIDGATE_MQTT_PORTT/)
  const r2 = await gridgate(['check-config', '--config', file])
  assert.equal(r2.code, 2)
  for (const p of ['mqtt.port', 'mqtt.maxPacketSize', 'store.sync', 'uplinks[0].urll', 'uplinks[0].url', 'colour']) {
    assert.ok(r2.stderr.includes(p), `${p} is named in:\n${r2.stderr}`)
  }
  assert.match(r2.stderr, /GG_ERR_CONFIG_INVALID/)
})

test('hash-token prints a scrypt PHC hash that verifies, and generates a token when given none', async () => {
  const r = await gridgate(['hash-token', 'my-device-secret'])
  assert.equal(r.code, 0)
  const hash = r.stdout.trim()
  assert.match(hash, /^\$scrypt\$ln=15,r=8,p=1\$/)
  assert.equal(await verifyTokenHash('my-device-secret', hash), true)
  const piped = await gridgate(['hash-token'], { input: 'piped-secret\n' })
  assert.equal(await verifyTokenHash('piped-secret', piped.stdout.trim()), true)
})

test('a port in use, a locked store and an unwritable data dir stop start-up with their codes', async (t) => {
  const dir = tempDir(t)
  const blocker = net.createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.after(() => blocker.close())
  const busy = (blocker.address() as AddressInfo).port
  const cfg = baseConfig(path.join(dir, 'data'), {})
  const portFile = writeConfig(dir, { ...cfg, mqtt: { host: '127.0.0.1', port: busy } }, 'busy.yaml')
  const r1 = await gridgate(['--config', portFile])
  assert.equal(r1.code, 1)
  assert.match(r1.stderr, /GG_ERR_PORT_IN_USE/)

  const okFile = writeConfig(dir, cfg, 'ok.yaml')
  const first = await spawnGateway(t, okFile)
  const r2 = await gridgate(['--config', okFile])
  assert.equal(r2.code, 1)
  assert.match(r2.stderr, /GG_ERR_STORE_LOCKED/)
  first.child.kill('SIGKILL')
  await first.exited
  // After kill -9 the lock is stale and the next start takes it.
  const again = await spawnGateway(t, okFile)
  again.child.kill('SIGTERM')
  assert.equal((await again.exited).code, 0)

  fs.writeFileSync(path.join(dir, 'not-a-dir'), 'x')
  const badDir = writeConfig(dir, baseConfig(path.join(dir, 'not-a-dir'), {}), 'baddir.yaml')
  const r3 = await gridgate(['--config', badDir])
  assert.equal(r3.code, 1)
  assert.match(r3.stderr, /GG_ERR_DATA_DIR/)
})

test('test fault hooks are refused outside a test run', async (t) => {
  const dir = tempDir(t)
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), {}))
  const r = await gridgate(['--config', file], { env: { GRIDGATE_TEST_FAULTS: '1', NODE_ENV: 'production' } })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /GG_ERR_FAULTS_FORBIDDEN/)
})
