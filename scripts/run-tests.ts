// Runs every compiled test file explicitly: on Node 20, `node --test <dir>` silently runs nothing.
import { readdirSync, statSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'test')

function find (dir: string): string[] {
  return readdirSync(dir).sort().flatMap((name) => {
    const p = path.join(dir, name)
    if (statSync(p).isDirectory()) return name === 'helpers' ? [] : find(p)
    return name.endsWith('.test.js') ? [p] : []
  })
}

const filter = process.argv.slice(2)
const files = find(root).filter(f => filter.length === 0 || filter.some(x => f.includes(x)))
if (files.length === 0) {
  process.stderr.write('no test files found\n')
  process.exit(1)
}
// --test-timeout bounds a whole test file too (each file is one test of the runner): some files run
// several real gateways one after another and need minutes on a loaded 2-core machine. A stuck test
// is still caught by its own waitFor deadlines.
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=600000', ...files], {
  stdio: 'inherit',
  env: { ...process.env, NODE_ENV: 'test' },
})
process.exit(result.status ?? 1)
