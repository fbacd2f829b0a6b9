import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { ErrorCodes, GridgateError, isGridgateError } from '../../gateway/errors.js'
import { repoRoot } from '../helpers/util.js'

test('every error code is documented in the README and every documented code exists', () => {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8')
  for (const code of Object.keys(ErrorCodes)) assert.ok(readme.includes(`\`${code}\``), `${code} is missing from the README's error table`)
  const documented = new Set(readme.match(/GG_ERR_[A-Z_]+/g) ?? [])
  for (const code of documented) assert.ok(code in ErrorCodes, `the README mentions ${code}, which does not exist`)
})

test('a GridgateError carries its code, a default message, details and its cause', () => {
  const cause = new Error('inner')
  const err = new GridgateError('GG_ERR_CONFIG_INVALID', undefined, { cause, details: ['a: b'] })
  assert.equal(err.code, 'GG_ERR_CONFIG_INVALID')
  assert.equal(err.message, ErrorCodes.GG_ERR_CONFIG_INVALID)
  assert.deepEqual(err.details, ['a: b'])
  assert.equal(err.cause, cause)
  assert.ok(isGridgateError(err, 'GG_ERR_CONFIG_INVALID'))
  assert.ok(!isGridgateError(err, 'GG_ERR_USAGE'))
})
