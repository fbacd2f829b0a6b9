// The single-executable packaging, without building the executables (scripts/smoke-binary.sh does
// that in CI): the Dockerfile and the systemd unit are linted, and the SEA runtime pieces (addon
// extraction, a store worker started from source with an injected addon) run under this Node.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync, spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { pino } from 'pino'
import { addonDirs, extractAddon, removeStale } from '../../scripts/sea-addon.js'
import { setWorkerRuntime } from '../../store-forward/worker-client.js'
import { Store } from '../../store-forward/store.js'
import { loadConfig } from '../../config/load.js'
import { hasCommand, tempDir } from '../helpers/util.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const require = createRequire(path.join(root, 'package.json'))
const addonFile = path.join(path.dirname(require.resolve('better-sqlite3/package.json')), 'build', 'Release', 'better_sqlite3.node')

/** systemd unit file → section → key → values (a key may repeat). */
function parseUnit (text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>()
  let current: Map<string, string[]> | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const header = /^\[(.+)\]$/.exec(line)
    if (header !== null) {
      current = new Map()
      sections.set(header[1]!, current)
      continue
    }
    const eq = line.indexOf('=')
    assert.ok(current !== undefined && eq > 0, `not a key=value line in a section: ${line}`)
    const key = line.slice(0, eq)
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1)])
  }
  return sections
}

function seconds (v: string): number {
  const m = /^(\d+)(ms|s|min)?$/.exec(v)
  assert.ok(m !== null, `not a systemd time span this test knows: ${v}`)
  const n = Number(m[1])
  return m[2] === 'ms' ? n / 1000 : m[2] === 'min' ? n * 60 : n
}

test('Dockerfile.arm64 passes dockerfilelint', () => {
  const r = spawnSync(process.execPath, [require.resolve('dockerfilelint/bin/dockerfilelint'), path.join(root, 'Dockerfile.arm64')], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stdout + r.stderr)
  assert.match(r.stdout, /Issues: None found/)
})

test('Dockerfile.arm64 runs the arm64 executable as a non-root user with a data volume, the ports and a /healthz check', () => {
  const text = fs.readFileSync(path.join(root, 'Dockerfile.arm64'), 'utf8')
  assert.match(text, /^COPY .*dist\/bin\/gridgate-linux-arm64 \/usr\/local\/bin\/gridgate$/m)
  const user = /^USER (\S+)$/m.exec(text)
  assert.ok(user !== null && !/^(root|0)(:|$)/.test(user[1]!), 'a USER that is not root')
  assert.match(text, /^VOLUME \["\/var\/lib\/gridgate"\]$/m)
  assert.match(text, /^ENV GRIDGATE_GATEWAY_DATA_DIR=\/var\/lib\/gridgate/m)
  const exposed = /^EXPOSE (.+)$/m.exec(text)?.[1]?.split(/\s+/) ?? []
  for (const port of ['1883/tcp', '8883/tcp', '8080/tcp', '5683/udp', '9080/tcp']) assert.ok(exposed.includes(port), `EXPOSE ${port}`)
  assert.match(text, /^HEALTHCHECK .*\n\s+CMD .*\/healthz/m)
  // The environment override named in the image must be one the config accepts.
  const config = loadConfig({ env: { GRIDGATE_GATEWAY_DATA_DIR: '/var/lib/gridgate' } })
  assert.equal(config.gateway.dataDir, '/var/lib/gridgate')
  // The build context keeps only what the image copies.
  const ignore = fs.readFileSync(path.join(root, 'Dockerfile.arm64.dockerignore'), 'utf8')
  assert.match(ignore, /^!dist\/bin\/gridgate-linux-arm64$/m)
})

test('the systemd unit restarts on failure, keeps data in a state directory and outlasts the shutdown timeout', () => {
  const unit = parseUnit(fs.readFileSync(path.join(root, 'scripts', 'gridgate.service'), 'utf8'))
  const service = unit.get('Service')
  assert.ok(service !== undefined)
  const one = (k: string): string => {
    const v = service.get(k)
    assert.equal(v?.length, 1, `exactly one ${k}=`)
    return v[0]!
  }
  assert.equal(one('Restart'), 'on-failure')
  assert.equal(one('StateDirectory'), 'gridgate')
  assert.equal(one('RuntimeDirectory'), 'gridgate')
  assert.equal(one('Environment'), 'GRIDGATE_GATEWAY_DATA_DIR=%S/gridgate')
  assert.match(one('ExecStart'), /^\/usr\/local\/bin\/gridgate --config /)
  assert.notEqual(one('User'), 'root')
  assert.ok(Number(one('LimitNOFILE')) >= 16384, 'room for thousands of device connections')
  const defaultTimeoutMs = loadConfig({ env: {} }).gateway.shutdownTimeout
  assert.ok(seconds(one('TimeoutStopSec')) * 1000 > defaultTimeoutMs, 'TimeoutStopSec longer than gateway.shutdownTimeout')
  assert.equal(one('NoNewPrivileges'), 'yes')
  assert.equal(one('ProtectSystem'), 'strict')
  // These would break V8's JIT or dlopen() of the extracted addon.
  assert.equal(service.get('MemoryDenyWriteExecute'), undefined)
  assert.equal(service.get('NoExecPaths'), undefined)
  assert.deepEqual(unit.get('Install')?.get('WantedBy'), ['multi-user.target'])
})

test('systemd-analyze verify accepts the unit', (t) => {
  if (!hasCommand('systemd-analyze')) {
    t.skip('systemd-analyze is not installed (Debian package systemd)')
    return
  }
  // verify checks that ExecStart= exists: point it at an executable that does.
  const dir = tempDir(t)
  const text = fs.readFileSync(path.join(root, 'scripts', 'gridgate.service'), 'utf8')
  assert.match(text, /^ExecStart=\/usr\/local\/bin\/gridgate /m)
  const file = path.join(dir, 'gridgate.service')
  fs.writeFileSync(file, text.replace(/^ExecStart=\/usr\/local\/bin\/gridgate /m, `ExecStart=${process.execPath} `))
  const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  // Unknown keys and bad values are only warnings: the unit must produce none.
  assert.equal(r.stderr.trim(), '')
})

test('the addon goes to the runtime directory first, then XDG_RUNTIME_DIR, then next to the database', () => {
  assert.deepEqual(addonDirs({ RUNTIME_DIRECTORY: '/run/gridgate:/run/other', XDG_RUNTIME_DIR: '/run/user/1000' }, '/var/lib/gridgate/gridgate.db'),
    ['/run/gridgate', '/run/user/1000', '/var/lib/gridgate'])
  assert.deepEqual(addonDirs({}, '/data/gridgate.db'), ['/data'])
})

test('the addon is extracted into a private directory, loaded, and the next directory is used when one fails', (t) => {
  const base = tempDir(t)
  const notADir = path.join(base, 'file')
  fs.writeFileSync(notADir, '')
  const noexec = path.join(base, 'noexec')
  const good = path.join(base, 'good')
  fs.mkdirSync(noexec)
  fs.mkdirSync(good)
  const bytes = fs.readFileSync(addonFile)
  const loaded: string[] = []
  const file = extractAddon(bytes, [notADir, noexec, good], (f) => {
    // Simulates a noexec mount: dlopen fails with EPERM there.
    if (f.startsWith(noexec)) throw new Error('failed to map segment from shared object: Operation not permitted')
    process.dlopen({ exports: {} }, f)
    loaded.push(f)
  })
  assert.deepEqual(loaded, [file])
  assert.equal(path.dirname(path.dirname(file)), good)
  assert.deepEqual(fs.readdirSync(noexec), [], 'nothing is left where loading failed')
  assert.equal(fs.statSync(path.dirname(file)).mode & 0o777, 0o700)
  assert.ok(fs.readFileSync(file).equals(bytes))
  assert.throws(() => extractAddon(bytes, [notADir]), /cannot extract the SQLite addon/)
})

test('addon directories of processes that no longer run are removed, others are kept', (t) => {
  const dir = tempDir(t)
  // A pid that cannot be running: a child that has already exited.
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!
  const stale = path.join(dir, `gridgate-addon-${dead}-abc123`)
  const mine = path.join(dir, `gridgate-addon-${process.pid}-def456`)
  const other = path.join(dir, 'unrelated')
  for (const d of [stale, mine, other]) fs.mkdirSync(d)
  removeStale(dir)
  assert.deepEqual(fs.readdirSync(dir).sort(), [path.basename(mine), 'unrelated'].sort())
})

test('a store runs with its worker started from bundled source and the addon loaded with process.dlopen', async (t) => {
  // What the single executable does: no worker file, the addon given by path to each worker thread.
  const bundled = await build({
    entryPoints: [path.join(root, 'dist', 'store-forward', 'sqlite-worker.js')],
    bundle: true, platform: 'node', format: 'cjs', write: false, logLevel: 'silent',
  })
  const source = bundled.outputFiles[0]!.text
  const asked: string[] = []
  setWorkerRuntime({ source, nativeBinding: (dbPath) => { asked.push(dbPath); return addonFile } })
  t.after(() => setWorkerRuntime(null))
  const dir = tempDir(t)
  const store = new Store({
    dataDir: dir, sync: 'full', dedupWindowMs: 120_000, commitDelayMs: 0, uplinks: ['a'],
    floorMs: () => Date.now(), now: () => Date.now(), log: pino({ level: 'silent' }), faults: false,
  })
  await store.open()
  t.after(() => store.close().catch(() => {}))
  const r = await store.append({ ingestMs: Date.now(), routes: 1, body: Buffer.from('hello'), eventId: 'e1' })
  assert.ok(r.seq >= 1)
  const rows = await store.readPage(0, 0, 10, 1 << 20)
  assert.deepEqual(rows.map(row => Buffer.from(row.body).toString()), ['hello'])
  // readPage answered from the in-memory tail; a page from SQLite needs the reader thread.
  const stored = await store.readStoredPage(0, 0, 10, 1 << 20)
  assert.deepEqual(stored.map(row => Buffer.from(row.body).toString()), ['hello'])
  assert.ok(asked.length >= 2, 'the writer and the reader each load the addon')
  assert.ok(asked.every(p => p === path.join(dir, 'gridgate.db')))
})

test('the smoke script is valid bash and executable, and npm run build:binary exists', () => {
  // The smoke script (run by .ci/run) builds and runs the executables; here only its presence and syntax.
  const smoke = path.join(root, 'scripts', 'smoke-binary.sh')
  assert.ok((fs.statSync(smoke).mode & 0o111) !== 0, 'scripts/smoke-binary.sh is executable')
  execFileSync('bash', ['-n', smoke])
  assert.ok(fs.existsSync(path.join(root, 'config', 'gridgate.example.yaml')))
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  assert.match(pkg.scripts['build:binary'] ?? '', /build-binary/)
})
