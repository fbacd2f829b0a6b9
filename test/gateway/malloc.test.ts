import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { isAbsolute } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { mallocTrimUnavailable, trimMalloc } from '../../gateway/malloc.js'
import { hasCommand } from '../helpers/util.js'

const addon = fileURLToPath(new URL('../../native/gridgate_malloc.node', import.meta.url))

function hasCompiler (): boolean {
  const cc = process.env.CC ?? 'cc'
  return isAbsolute(cc) ? existsSync(cc) : hasCommand(cc)
}

const skip = process.platform !== 'linux'
  ? 'malloc_trim is glibc\'s'
  : hasCompiler() ? false : 'no C compiler here, so npm run build did not make the addon'

test('npm run build makes the malloc addon, and it loads', { skip }, () => {
  assert.ok(existsSync(addon), `${addon} is missing: see npm run build's output`)
  assert.equal(typeof trimMalloc(), 'boolean', String(mallocTrimUnavailable()))
  assert.equal(mallocTrimUnavailable(), null)
})

test('what a thread that ended left in its malloc arena goes back to the system when trimmed', { skip }, async () => {
  // About 40 MB of small C allocations (Buffer bodies) made and freed on a thread that then exits:
  // glibc keeps them in that thread's arena, counted in RSS, until malloc_trim.
  const worker = new Worker(`
    const keep = []
    for (let i = 0; i < 40000; i++) keep.push(Buffer.from(new Uint8Array(1000 + (i % 7))))
    require('node:worker_threads').parentPort.postMessage(keep.length)
  `, { eval: true })
  assert.equal(await new Promise(resolve => worker.once('message', resolve)), 40000)
  await new Promise(resolve => worker.once('exit', resolve))
  const before = process.memoryUsage.rss()
  assert.equal(trimMalloc(), true)
  const released = before - process.memoryUsage.rss()
  assert.ok(released > 16 * 2 ** 20, `released ${(released / 2 ** 20).toFixed(1)} MiB`)
})
