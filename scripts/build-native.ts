// Part of `npm run build`: compiles gateway/native/malloc.c into dist/native/gridgate_malloc.node with
// the system's C compiler ($CC, else cc) against Node-API's headers from the node-api-headers package:
// no node-gyp, no Node headers, nothing downloaded. The addon is optional: without a compiler the
// build says so and goes on, and the gateway runs without handing freed C heap back (gateway/malloc.ts).
// scripts/build-binary.ts compiles the same file for the single executables with compileMallocAddon.
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const MALLOC_SOURCE = path.join(root, 'gateway', 'native', 'malloc.c')
export const MALLOC_ADDON = path.join(root, 'dist', 'native', 'gridgate_malloc.node')

function napiInclude (): string {
  const require = createRequire(path.join(root, 'package.json'))
  return (require('node-api-headers') as { include_dir: string }).include_dir
}

/** Compiles the addon with cc (a compiler command such as `cc` or `aarch64-linux-gnu-gcc`) into out. */
export function compileMallocAddon (cc: string, out: string): void {
  fs.mkdirSync(path.dirname(out), { recursive: true })
  const tmp = `${out}.${process.pid}.tmp`
  try {
    execFileSync(cc, ['-O2', '-fPIC', '-shared', '-std=c11', '-Wall', '-Wextra', '-Werror', '-DNAPI_VERSION=8',
      `-I${napiInclude()}`, MALLOC_SOURCE, '-o', tmp], { stdio: ['ignore', 'inherit', 'pipe'] })
    fs.renameSync(tmp, out)
  } finally {
    fs.rmSync(tmp, { force: true })
  }
}

function main (): void {
  if (process.platform !== 'linux') {
    process.stdout.write('build-native: skipped (malloc_trim is glibc\'s; this is not Linux)\n')
    return
  }
  const fresh = fs.existsSync(MALLOC_ADDON) && fs.statSync(MALLOC_ADDON).mtimeMs >= fs.statSync(MALLOC_SOURCE).mtimeMs
  if (fresh) return
  const cc = process.env.CC ?? 'cc'
  try {
    compileMallocAddon(cc, MALLOC_ADDON)
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? (err as Error).message).trim()
    process.stderr.write(`build-native: ${path.relative(root, MALLOC_SOURCE)} was not built with ${cc} (${stderr.split('\n')[0] ?? ''}).\n` +
      'The gateway runs without it, but cannot hand freed C heap memory back to the system when idle. ' +
      'Install a C compiler (Debian: apt-get install gcc) and run npm run build again.\n')
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main()
