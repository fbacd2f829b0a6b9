import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { lockDataDir, lockSocketPath, LOCK_SOCKET } from '../../gateway/lock.js'
import { isGridgateError } from '../../gateway/errors.js'
import { tempDir } from '../helpers/util.js'

test('a data dir is locked once; a second lock is refused until the first is released', async (t) => {
  const dir = tempDir(t)
  const first = await lockDataDir(dir)
  assert.equal(first.path, path.join(dir, LOCK_SOCKET))
  await assert.rejects(lockDataDir(dir), (err: unknown) => isGridgateError(err, 'GG_ERR_STORE_LOCKED'))
  await first.release()
  const again = await lockDataDir(dir)
  await again.release()
})

test('a stale lock socket left by a dead process is taken over', async (t) => {
  const dir = tempDir(t)
  fs.writeFileSync(path.join(dir, LOCK_SOCKET), '')
  const lock = await lockDataDir(dir)
  await lock.release()
})

test('a data dir whose socket path is too long is locked through an abstract socket, not a truncated path', async (t) => {
  const dir = path.join(tempDir(t), 'x'.repeat(60), 'y'.repeat(60))
  fs.mkdirSync(dir, { recursive: true })
  assert.match(lockSocketPath(dir), /^\0gridgate-[0-9a-f]{32}$/)
  const first = await lockDataDir(dir)
  await assert.rejects(lockDataDir(dir), (err: unknown) => isGridgateError(err, 'GG_ERR_STORE_LOCKED'))
  await first.release()
  const again = await lockDataDir(dir)
  await again.release()
})
