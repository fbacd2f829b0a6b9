import assert from 'node:assert/strict'
import { test } from 'node:test'
import { formatDuration, formatSize, parseDuration, parseSize } from '../../config/units.js'

test('a plain number or digit string is a size in bytes', () => {
  assert.equal(parseSize(0), 0)
  assert.equal(parseSize(4096), 4096)
  assert.equal(parseSize('4096'), 4096)
  assert.equal(parseSize('512B'), 512)
})

test('decimal and binary size units multiply by powers of 1000 and 1024', () => {
  assert.equal(parseSize('10KB'), 10_000)
  assert.equal(parseSize('1MB'), 1_000_000)
  assert.equal(parseSize('1GB'), 1_000_000_000)
  assert.equal(parseSize('64KiB'), 65_536)
  assert.equal(parseSize('1MiB'), 1_048_576)
  assert.equal(parseSize('1GiB'), 1_073_741_824)
})

test('size units are case-insensitive and may follow a space', () => {
  assert.equal(parseSize('64kib'), 65_536)
  assert.equal(parseSize('64KIB'), 65_536)
  assert.equal(parseSize('10kb'), 10_000)
  assert.equal(parseSize('512b'), 512)
  assert.equal(parseSize(' 64 KiB '), 65_536)
})

test('a decimal size is rounded to whole bytes', () => {
  assert.equal(parseSize('1.5MiB'), 1_572_864)
  assert.equal(parseSize('0.5KiB'), 512)
  assert.equal(parseSize('1.1KiB'), 1126)
})

test('a size that is negative, fractional in bytes or not a size throws', () => {
  for (const bad of ['', 'abc', '-1', '-1KiB', '1.5', '1.5B', '10XB', 'KiB', '1 2KiB', '1e3', '0x10']) {
    assert.throws(() => parseSize(bad), RangeError, bad)
  }
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) assert.throws(() => parseSize(bad), RangeError, String(bad))
  assert.throws(() => parseSize('99999999TiB'), /too large/)
})

test('a plain number or digit string is a duration in milliseconds', () => {
  assert.equal(parseDuration(0), 0)
  assert.equal(parseDuration('0'), 0)
  assert.equal(parseDuration(1500), 1500)
  assert.equal(parseDuration('1500'), 1500)
})

test('every duration unit is understood', () => {
  assert.equal(parseDuration('250ms'), 250)
  assert.equal(parseDuration('30s'), 30_000)
  assert.equal(parseDuration('5m'), 300_000)
  assert.equal(parseDuration('2h'), 7_200_000)
  assert.equal(parseDuration('7d'), 604_800_000)
  assert.equal(parseDuration('1.5s'), 1500)
  assert.equal(parseDuration(' 10s '), 10_000)
})

test('a compound duration adds its parts, largest unit first', () => {
  assert.equal(parseDuration('1h30m'), 5_400_000)
  assert.equal(parseDuration('1d2h3m4s5ms'), 93_784_005)
  assert.equal(parseDuration('1m30s'), 90_000)
})

test('a duration that is negative, out of order, repeated or not a duration throws', () => {
  for (const bad of ['', 'abc', '-1s', '-5', '30m1h', '1m1m', '1h 30m', '5M', '10S', 's', '1.5', '10sec', '1w']) {
    assert.throws(() => parseDuration(bad), RangeError, bad)
  }
  for (const bad of [-1, 0.5, Number.NaN]) assert.throws(() => parseDuration(bad), RangeError, String(bad))
})

test('formatSize prints the largest unit that divides exactly', () => {
  assert.equal(formatSize(0), '0B')
  assert.equal(formatSize(512), '512B')
  assert.equal(formatSize(262_144), '256KiB')
  assert.equal(formatSize(1_048_576), '1MiB')
  assert.equal(formatSize(1_073_741_824), '1GiB')
  assert.equal(formatSize(10_000), '10KB')
  assert.equal(formatSize(1_572_864), '1536KiB')
  assert.equal(formatSize(1001), '1001B')
})

test('formatDuration prints compound units without zero parts', () => {
  assert.equal(formatDuration(0), '0ms')
  assert.equal(formatDuration(20), '20ms')
  assert.equal(formatDuration(120_000), '2m')
  assert.equal(formatDuration(10_000), '10s')
  assert.equal(formatDuration(5_400_000), '1h30m')
  assert.equal(formatDuration(604_800_000), '7d')
  assert.equal(formatDuration(1500), '1s500ms')
})

test('formatted sizes and durations parse back to the same number', () => {
  for (const n of [0, 1, 512, 1000, 1024, 262_144, 1_048_577, 10_000_000, 2 ** 40]) assert.equal(parseSize(formatSize(n)), n)
  for (const n of [0, 1, 20, 999, 1000, 61_001, 5_400_000, 93_784_005]) assert.equal(parseDuration(formatDuration(n)), n)
})
