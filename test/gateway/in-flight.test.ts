import { test } from 'node:test'
import assert from 'node:assert/strict'
import { InFlight } from '../../gateway/in-flight.js'

test('idle() resolves at once when nothing is under way, else when the last request ends', async () => {
  const f = new InFlight()
  await f.idle()
  f.begin()
  f.begin()
  let idle = false
  const p = f.idle().then(() => { idle = true })
  f.end()
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(idle, false, 'one request is still under way')
  assert.equal(f.size, 1)
  f.end()
  await p
  assert.equal(f.size, 0)
  // A new request after idle: a new wait.
  f.begin()
  let again = false
  const q = f.idle().then(() => { again = true })
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(again, false)
  f.end()
  await q
})

test('end() without begin() throws instead of going negative', () => {
  const f = new InFlight()
  assert.throws(() => f.end(), /without begin/)
  assert.equal(f.size, 0)
})
