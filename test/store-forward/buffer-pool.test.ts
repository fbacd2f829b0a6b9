import { test } from 'node:test'
import assert from 'node:assert/strict'
import { BufferPool } from '../../store-forward/buffer-pool.js'

test('a pool hands out the smallest kept buffer that fits, and allocates when none does', () => {
  const pool = new BufferPool()
  const small = new ArrayBuffer(1000)
  const mid = new ArrayBuffer(5000)
  const large = new ArrayBuffer(20_000)
  pool.put([large, small, mid])
  assert.equal(pool.take(900), small)
  assert.equal(pool.take(900).byteLength, 900, 'the one that fitted best is gone: a new buffer of the size asked for')
  assert.equal(pool.take(4000), mid)
  assert.equal(pool.take(6000), large, 'within four times the request')
  assert.deepEqual(pool.size, { buffers: 0, bytes: 0 })
  assert.deepEqual([pool.reused, pool.allocated], [3, 1])
})

test('a pool does not give a large buffer for a small request, nor a small one for a large request', () => {
  const pool = new BufferPool()
  const large = new ArrayBuffer(100_000)
  pool.put([large])
  const b = pool.take(1000)
  assert.notEqual(b, large)
  assert.equal(b.byteLength, 1000)
  assert.notEqual(pool.take(200_000), large)
  assert.equal(pool.take(0).byteLength, 0, 'an empty page takes nothing kept')
  assert.deepEqual(pool.size, { buffers: 1, bytes: 100_000 })
})

test('a pool keeps at most its number of buffers and bytes, and skips detached buffers', () => {
  const pool = new BufferPool(2, 10_000)
  pool.put([new ArrayBuffer(4000), new ArrayBuffer(4000), new ArrayBuffer(100)])
  assert.deepEqual(pool.size, { buffers: 2, bytes: 8000 }, 'the third is over the count')
  const again = new BufferPool(4, 10_000)
  again.put([new ArrayBuffer(6000), new ArrayBuffer(6000), new ArrayBuffer(3000)])
  assert.deepEqual(again.size, { buffers: 2, bytes: 9000 }, 'the second is over the bytes; the third still fits')
  const detached = new ArrayBuffer(500)
  structuredClone(detached, { transfer: [detached] })
  assert.equal(detached.byteLength, 0)
  again.put([detached])
  assert.deepEqual(again.size, { buffers: 2, bytes: 9000 })
})
