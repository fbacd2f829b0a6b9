// `npm run build:binary`: dist/bin/gridgate-linux-x64 and dist/bin/gridgate-linux-arm64, each a Node
// single executable application (SEA) holding one esbuild bundle of the CLI, the SQLite worker's
// bundle, the .proto files and a better-sqlite3 addon built for the embedded Node's ABI.
//
// Everything comes from the npm registry and Debian packages: the Node binaries and their headers
// from the node-linux-<arch> packages (pinned with their integrity in scripts/sea-node.json), the
// arm64 addon from Debian's g++-aarch64-linux-gnu. Runs on an x64 Linux host (the arm64 blob is made
// by the x64 Node of the same version, without code cache or snapshot, as Node requires across
// architectures). Node binaries and addons are cached in ~/.cache/gridgate (or $XDG_CACHE_HOME).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import { createHash } from 'node:crypto'
import { build } from 'esbuild'
import { compileMallocAddon } from './build-native.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const require = createRequire(path.join(root, 'package.json'))
const pins = JSON.parse(fs.readFileSync(path.join(root, 'scripts', 'sea-node.json'), 'utf8')) as {
  version: string
  integrity: Record<Arch, string>
}
const ARCHES = ['x64', 'arm64'] as const
type Arch = typeof ARCHES[number]
const HOST: Arch = 'x64'
/** Bumped whenever the addon's compile recipe changes, so a cached addon built differently is not reused. */
const ADDON_RECIPE = 2
const COMPAT_FILES = ['sea-glibc-compat.h', 'sea-glibc-compat.c'].map(n => path.join(root, 'scripts', n))
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'
const CROSS: Record<Arch, string> = { x64: '', arm64: 'aarch64-linux-gnu-' }

const cacheRoot = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'gridgate')
const outDir = path.join(root, 'dist', 'bin')
const work = path.join(root, 'dist', 'sea')

const t0 = performance.now()
function step (msg: string): void {
  process.stdout.write(`[build-binary +${((performance.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`)
}

function run (cmd: string, args: string[], opts: { cwd?: string, env?: NodeJS.ProcessEnv, quiet?: boolean } = {}): string {
  return execFileSync(cmd, args, {
    cwd: opts.cwd ?? root,
    env: opts.env ?? process.env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', opts.quiet === true ? 'pipe' : 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  })
}

function need (tool: string, pkg: string): void {
  try {
    run('sh', ['-c', `command -v ${tool}`], { quiet: true })
  } catch {
    throw new Error(`${tool} is missing: apt-get install ${pkg}`)
  }
}

/** Moves a finished directory or file into the cache in one rename, so an interrupted build leaves no half entry. */
function publish (tmp: string, dest: string): void {
  fs.mkdirSync(path.dirname(dest), { recursive: true })
  fs.rmSync(dest, { recursive: true, force: true })
  fs.renameSync(tmp, dest)
}

/** The node-linux-<arch> package (bin/node and include/node), fetched with `npm pack` and checked against the pin. */
function nodePackage (arch: Arch): string {
  const dir = path.join(cacheRoot, `node-v${pins.version}-linux-${arch}`)
  if (fs.existsSync(path.join(dir, 'bin', 'node')) && fs.existsSync(path.join(dir, 'include', 'node', 'node.h'))) return dir
  step(`fetching node-linux-${arch}@${pins.version} from the npm registry`)
  fs.mkdirSync(cacheRoot, { recursive: true })
  const tmp = fs.mkdtempSync(path.join(cacheRoot, 'tmp-'))
  const packed = JSON.parse(run('npm', ['pack', `node-linux-${arch}@${pins.version}`, '--json', '--pack-destination', tmp], { quiet: true })) as Array<{ filename: string, integrity: string }>
  const entry = packed[0]
  if (entry === undefined) throw new Error(`npm pack node-linux-${arch} returned nothing`)
  if (entry.integrity !== pins.integrity[arch]) {
    throw new Error(`node-linux-${arch}@${pins.version}: integrity ${entry.integrity} does not match scripts/sea-node.json`)
  }
  run('tar', ['xzf', path.join(tmp, entry.filename), '-C', tmp, '--strip-components=1'])
  fs.rmSync(path.join(tmp, entry.filename))
  publish(tmp, dir)
  return dir
}

function nodeGyp (): string {
  const fromNpm = process.env.npm_config_node_gyp
  if (fromNpm !== undefined && fs.existsSync(fromNpm)) return fromNpm
  const npmRoot = run('npm', ['root', '-g'], { quiet: true }).trim()
  return path.join(npmRoot, 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')
}

/**
 * better-sqlite3's addon for the embedded Node: built in a temporary copy of the installed package
 * (never in node_modules, whose addon serves the machine's own Node), with node-gyp pointed at the
 * headers inside node-linux-<arch> so nothing is downloaded; stripped; cached by versions and recipe.
 */
function addon (arch: Arch, nodeDir: string): string {
  const bsDir = path.dirname(require.resolve('better-sqlite3/package.json'))
  const bsVersion = (JSON.parse(fs.readFileSync(path.join(bsDir, 'package.json'), 'utf8')) as { version: string }).version
  const recipe = createHash('sha256').update(String(ADDON_RECIPE))
  for (const f of COMPAT_FILES) recipe.update(fs.readFileSync(f))
  const key = `better-sqlite3-${bsVersion}-node-v${pins.version}-linux-${arch}-${recipe.digest('hex').slice(0, 12)}`
  const file = path.join(cacheRoot, key, 'better_sqlite3.node')
  if (fs.existsSync(file)) {
    step(`better-sqlite3 ${bsVersion} for Node ${pins.version} ${arch}: cached (${file})`)
    return file
  }
  step(`building better-sqlite3 ${bsVersion} for Node ${pins.version} linux-${arch}`)
  fs.mkdirSync(cacheRoot, { recursive: true })
  const tmp = fs.mkdtempSync(path.join(cacheRoot, 'tmp-'))
  const src = path.join(tmp, 'better-sqlite3')
  fs.cpSync(bsDir, src, { recursive: true, filter: (p) => path.basename(p) !== 'build' && path.basename(p) !== 'node_modules' })
  const env: NodeJS.ProcessEnv = { ...process.env }
  // A user-level nodedir (e.g. the machine's /usr headers) must not win over the embedded Node's.
  for (const k of Object.keys(env)) if (k.toLowerCase() === 'npm_config_nodedir') delete env[k]
  if (arch !== HOST) {
    const p = CROSS[arch]
    Object.assign(env, { CC: `${p}gcc`, CXX: `${p}g++`, LINK: `${p}g++`, AR: `${p}ar`, CC_host: 'gcc', CXX_host: 'g++' })
  }
  // Keep the addon's glibc floor at the embedded Node's (see scripts/sea-glibc-compat.h and .c).
  const compatObj = path.join(tmp, 'sea-glibc-compat.o')
  run(`${CROSS[arch]}gcc`, ['-O2', '-fPIC', '-c', path.join(root, 'scripts', 'sea-glibc-compat.c'), '-o', compatObj])
  env.CPPFLAGS = `${env.CPPFLAGS ?? ''} -include ${path.join(root, 'scripts', 'sea-glibc-compat.h')}`.trim()
  env.LDFLAGS = `${env.LDFLAGS ?? ''} -Wl,--wrap=stat64,--wrap=fstat64,--wrap=lstat64,--wrap=_ZSt28__throw_bad_array_new_lengthv ${compatObj}`.trim()
  run(process.execPath, [nodeGyp(), 'rebuild', '--release', `--nodedir=${nodeDir}`, `--arch=${arch}`, '--jobs=max'], { cwd: src, env })
  const built = path.join(src, 'build', 'Release', 'better_sqlite3.node')
  run(`${CROSS[arch]}strip`, ['--strip-unneeded', built])
  const out = path.join(tmp, 'out')
  fs.mkdirSync(out)
  fs.copyFileSync(built, path.join(out, 'better_sqlite3.node'))
  publish(out, path.dirname(file))
  fs.rmSync(tmp, { recursive: true, force: true })
  return file
}

/** One CommonJS bundle per entry; `import.meta.url` becomes the executable's own file URL. */
async function bundle (): Promise<{ main: string, worker: string, configWorker: string }> {
  const common = {
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'none',
    logLevel: 'warning',
    absWorkingDir: root,
  } as const
  const main = path.join(work, 'gridgate.cjs')
  const worker = path.join(work, 'sqlite-worker.cjs')
  await build({
    ...common,
    entryPoints: [path.join(root, 'dist', 'scripts', 'sea-main.js')],
    outfile: main,
    define: { 'import.meta.url': '__gridgateModuleUrl' },
    banner: { js: 'var __gridgateModuleUrl=require("node:url").pathToFileURL(__filename).href;' },
  })
  await build({ ...common, entryPoints: [path.join(root, 'dist', 'store-forward', 'sqlite-worker.js')], outfile: worker })
  // The config loader thread (config/isolated.ts): the YAML parser and the schema library live there.
  const configWorker = path.join(work, 'config-worker.cjs')
  await build({ ...common, entryPoints: [path.join(root, 'dist', 'config', 'load-worker.js')], outfile: configWorker })
  return { main, worker, configWorker }
}

/** The symbol versions (e.g. GLIBC_2.28) of one library that file needs, oldest first. */
function symbolVersions (file: string, arch: Arch, lib: 'GLIBC' | 'GLIBCXX'): string[] {
  const out = run(`${CROSS[arch]}objdump`, ['-T', file], { quiet: true })
  const versions = new Set(out.match(new RegExp(`\\b${lib}_[0-9.]+`, 'g')) ?? [])
  return [...versions].sort((a, b) => {
    const pa = a.slice(lib.length + 1).split('.').map(Number)
    const pb = b.slice(lib.length + 1).split('.').map(Number)
    for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
      const d = (pa[i] ?? 0) - (pb[i] ?? 0)
      if (d !== 0) return d
    }
    return 0
  })
}

async function main (): Promise<void> {
  if (process.platform !== 'linux' || process.arch !== HOST) {
    throw new Error(`build:binary runs on linux-${HOST} (this is ${process.platform}-${process.arch})`)
  }
  need('aarch64-linux-gnu-g++', 'g++-aarch64-linux-gnu libc6-dev-arm64-cross')
  need('aarch64-linux-gnu-strip', 'binutils-aarch64-linux-gnu')
  need('strip', 'binutils')
  fs.rmSync(work, { recursive: true, force: true })
  fs.mkdirSync(work, { recursive: true })
  fs.mkdirSync(outDir, { recursive: true })

  const nodeDirs = { x64: nodePackage('x64'), arm64: nodePackage('arm64') }
  const hostNode = path.join(nodeDirs[HOST], 'bin', 'node')
  const addons = { x64: addon('x64', nodeDirs.x64), arm64: addon('arm64', nodeDirs.arm64) }

  // The malloc_trim addon (gateway/native/malloc.c): Node-API only, so one build per architecture.
  const mallocAddons = Object.fromEntries(ARCHES.map((arch) => {
    const file = path.join(work, `gridgate_malloc-linux-${arch}.node`)
    compileMallocAddon(`${CROSS[arch]}gcc`, file)
    run(`${CROSS[arch]}strip`, ['--strip-unneeded', file])
    return [arch, file]
  })) as Record<Arch, string>

  step('bundling with esbuild')
  const { main, worker, configWorker } = await bundle()
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { name: string, version: string }
  const protoDir = path.join(root, 'gateway', 'proto')
  const protos = fs.readdirSync(protoDir).filter(n => n.endsWith('.proto')).sort()
  fs.writeFileSync(path.join(work, 'package.json'), JSON.stringify({ name: pkg.name, version: pkg.version }))
  fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify({ version: pkg.version, node: pins.version, protos }))

  for (const arch of ARCHES) {
    const assets: Record<string, string> = {
      'package.json': path.join(work, 'package.json'),
      'manifest.json': path.join(work, 'manifest.json'),
      'sqlite-worker.js': worker,
      'config-worker.js': configWorker,
      'better_sqlite3.node': addons[arch],
      'gridgate_malloc.node': mallocAddons[arch],
    }
    for (const name of protos) assets[`proto/${name}`] = path.join(protoDir, name)
    // The addon as embedded, for scripts/smoke-binary.sh's glibc check.
    fs.copyFileSync(addons[arch], path.join(work, `better_sqlite3-linux-${arch}.node`))
    const blob = path.join(work, `sea-${arch}.blob`)
    const seaConfig = path.join(work, `sea-${arch}.json`)
    // A code cache or snapshot made by the x64 Node would not load in the arm64 Node.
    const native = arch === HOST
    fs.writeFileSync(seaConfig, JSON.stringify({
      main, output: blob, disableExperimentalSEAWarning: true, useSnapshot: false, useCodeCache: native, assets,
    }, null, 2))
    step(`making the SEA blob for ${arch} with Node ${pins.version} (${HOST}), code cache ${native ? 'on' : 'off'}`)
    run(hostNode, ['--experimental-sea-config', seaConfig], { cwd: work })

    const exe = path.join(outDir, `gridgate-linux-${arch}`)
    fs.rmSync(exe, { force: true })
    fs.copyFileSync(path.join(nodeDirs[arch], 'bin', 'node'), exe)
    fs.chmodSync(exe, 0o755)
    // Strip first: stripping after the blob is injected would corrupt the executable.
    run(`${CROSS[arch]}strip`, ['--strip-all', exe])
    step(`injecting the blob into ${path.relative(root, exe)}`)
    run(process.execPath, [require.resolve('postject/dist/cli.js'), exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE], { quiet: true })
    const size = fs.statSync(exe).size
    const glibc = symbolVersions(addons[arch], arch, 'GLIBC')
    const glibcxx = symbolVersions(addons[arch], arch, 'GLIBCXX')
    step(`${path.relative(root, exe)}: ${(size / 2 ** 20).toFixed(1)} MiB; addon needs up to ${glibc.at(-1) ?? 'no GLIBC'}, ${glibcxx.at(-1) ?? 'no GLIBCXX'}`)
  }
  step('done')
}

main().catch((err: unknown) => {
  process.stderr.write(`build-binary: ${(err as Error).message}\n`)
  process.exitCode = 1
})
