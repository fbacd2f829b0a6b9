import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isGridgateError } from '../../gateway/errors.js'
import {
  DEFAULT_PUBLISH, DEFAULT_SUBSCRIBE, DeviceRegistry, deviceIdOfTopic, filterCovers, filtersIntersect,
  generateToken, hashToken, isCommandTopic, topicMatches, verifyTokenHash, type DeviceRecord,
} from '../../gateway/identity.js'

const SECRET = 'correct horse battery staple'
const HASH = await hashToken(SECRET)

function device (id: string, extra: Partial<DeviceRecord> = {}): DeviceRecord {
  return { id, tokenHash: HASH, publish: DEFAULT_PUBLISH, subscribe: DEFAULT_SUBSCRIBE, enabled: true, ...extra }
}

test('hashToken writes a PHC scrypt string that verifyTokenHash accepts', async () => {
  assert.match(HASH, /^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/)
  assert.equal(await verifyTokenHash(SECRET, HASH), true)
  assert.notEqual(await hashToken(SECRET), HASH, 'a new salt each time')
})

test('verifyTokenHash refuses a wrong token', async () => {
  assert.equal(await verifyTokenHash(SECRET + '!', HASH), false)
  assert.equal(await verifyTokenHash('', HASH), false)
})

test('verifyTokenHash gives false for malformed or unsupported PHC strings', async () => {
  const [, , , salt = '', hash = ''] = HASH.split('$')
  for (const phc of [
    '',
    'plaintext',
    `$argon2id$v=19$m=65536,t=3,p=4$${salt}$${hash}`,
    `$scrypt$ln=15,r=8$${salt}$${hash}`,
    `$scrypt$ln=15,r=8,p=1,ln=15$${salt}$${hash}`,
    `$scrypt$ln=x,r=8,p=1$${salt}$${hash}`,
    `$scrypt$ln=99,r=8,p=1$${salt}$${hash}`,
    `$scrypt$ln=15,r=8,p=1$${salt}`,
    `$scrypt$ln=15,r=8,p=1$${salt}$${hash}$extra`,
    `$scrypt$ln=15,r=8,p=1$not*base64$${hash}`,
    `$scrypt$ln=15,r=8,p=1$${salt}$AAAA`,
    `$scrypt$ln=15,r=8,p=1$$${hash}`,
    `$scrypt$ln=16,r=32,p=1$${salt}$${hash}`, // needs 512 MiB: beyond maxmem
  ]) {
    assert.equal(await verifyTokenHash(SECRET, phc), false, phc)
  }
})

test('verifyTokenHash reads the cost parameters from the string', async () => {
  const [, , , salt = '', hash = ''] = HASH.split('$')
  assert.equal(await verifyTokenHash(SECRET, `$scrypt$ln=14,r=8,p=1$${salt}$${hash}`), false, 'other parameters, other key')
  assert.equal(await verifyTokenHash(SECRET, `$scrypt$p=1,r=8,ln=15$${salt}$${hash}`), true, 'parameter order does not matter')
})

test('generateToken gives 32 random bytes in base64url', () => {
  const a = generateToken()
  assert.match(a, /^[A-Za-z0-9_-]{43}$/)
  assert.equal(Buffer.from(a, 'base64url').length, 32)
  assert.notEqual(generateToken(), a)
})

test('authenticate accepts the right secret and refuses wrong, unknown and disabled devices', async () => {
  const reg = new DeviceRegistry([device('sensor-1'), device('off-1', { enabled: false }), device('nocred', { tokenHash: undefined })])
  assert.equal((await reg.authenticate('sensor-1', SECRET))?.id, 'sensor-1')
  assert.equal(await reg.authenticate('sensor-1', 'wrong'), undefined)
  assert.equal(await reg.authenticate('ghost', SECRET), undefined)
  assert.equal(await reg.authenticate('off-1', SECRET), undefined)
  assert.equal(await reg.authenticate('nocred', ''), undefined)
})

test('a plaintext token is compared without scrypt', async () => {
  const reg = new DeviceRegistry([device('dev', { tokenHash: undefined, token: 'plain-secret' })])
  assert.equal((await reg.authenticate('dev', 'plain-secret'))?.id, 'dev')
  assert.equal(await reg.authenticate('dev', 'plain-secreT'), undefined)
  assert.equal(await reg.authenticate('dev', 'plain-secret-longer'), undefined)
  assert.equal(reg.stats.scryptRuns, 0)
})

test('a cached verification answers without running scrypt again', async () => {
  const reg = new DeviceRegistry([device('sensor-1')])
  assert.ok(await reg.authenticate('sensor-1', SECRET))
  assert.deepEqual(reg.stats, { scryptRuns: 1, cacheHits: 0 })
  const started = process.hrtime.bigint()
  assert.ok(await reg.authenticate('sensor-1', SECRET))
  const micros = Number(process.hrtime.bigint() - started) / 1000
  assert.deepEqual(reg.stats, { scryptRuns: 1, cacheHits: 1 })
  assert.ok(micros < 20_000, `cache hit took ${micros} µs`)
  assert.equal(await reg.authenticate('sensor-1', 'wrong'), undefined, 'a different secret is not a cache hit')
  assert.deepEqual(reg.stats, { scryptRuns: 2, cacheHits: 1 })
})

test('failed verifications are not cached', async () => {
  const reg = new DeviceRegistry([device('sensor-1')])
  await reg.authenticate('sensor-1', 'wrong')
  await reg.authenticate('sensor-1', 'wrong')
  assert.deepEqual(reg.stats, { scryptRuns: 2, cacheHits: 0 })
})

test('concurrent attempts with one credential share one scrypt run', async () => {
  const reg = new DeviceRegistry([device('sensor-1')])
  const results = await Promise.all(Array.from({ length: 5 }, () => reg.authenticate('sensor-1', SECRET)))
  assert.ok(results.every(r => r?.id === 'sensor-1'))
  assert.equal(reg.stats.scryptRuns, 1)
})

test('replace invalidates the cache: a disabled or re-keyed device is refused at once', async () => {
  const reg = new DeviceRegistry([device('sensor-1')])
  assert.ok(await reg.authenticate('sensor-1', SECRET))
  reg.replace([device('sensor-1', { enabled: false })])
  assert.equal(await reg.authenticate('sensor-1', SECRET), undefined)
  reg.replace([device('sensor-1', { tokenHash: await hashToken('new-secret') })])
  assert.equal(await reg.authenticate('sensor-1', SECRET), undefined)
  assert.equal((await reg.authenticate('sensor-1', 'new-secret'))?.id, 'sensor-1')
  assert.equal(reg.stats.cacheHits, 0)
})

test('a replace during verification makes the attempt use the new registry', async () => {
  const reg = new DeviceRegistry([device('sensor-1')])
  const pending = reg.authenticate('sensor-1', SECRET)
  reg.replace([device('sensor-1', { enabled: false })])
  assert.equal(await pending, undefined)
})

test('the registry refuses invalid and duplicate ids and invalid patterns with GG_ERR_CONFIG_INVALID', () => {
  for (const devices of [
    [device('a/b')],
    [device('+')],
    [device('$sys')],
    [device('')],
    [device('x'), device('x')],
    [device('x', { publish: ['devices/#/x'] })],
    [device('x', { subscribe: ['a+/b'] })],
  ]) {
    assert.throws(() => new DeviceRegistry(devices), (err: unknown) => isGridgateError(err, 'GG_ERR_CONFIG_INVALID'), JSON.stringify(devices.map(d => d.id)))
  }
  const reg = new DeviceRegistry([device('ok')])
  assert.throws(() => reg.replace([device('a b')]), (err: unknown) => isGridgateError(err, 'GG_ERR_CONFIG_INVALID'))
  assert.ok(reg.get('ok'), 'a refused replace leaves the registry as it was')
})

test('topicMatches follows the MQTT wildcard rules', () => {
  const table: Array<[string, string, boolean]> = [
    ['sport/tennis/player1/#', 'sport/tennis/player1', true], // [MQTT-4.7.1-2] parent level
    ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
    ['sport/#', 'sport', true],
    ['#', 'sport/tennis', true],
    ['#', '/', true],
    ['sport/tennis/+', 'sport/tennis/player1', true],
    ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
    ['sport/+', 'sport', false],
    ['sport/+', 'sport/', true],
    ['+/+', '/finance', true],
    ['/+', '/finance', true],
    ['+', '/finance', false],
    ['+', 'a', true],
    ['a/b', 'a/b', true],
    ['a/b', 'a/B', false],
    ['a/b', 'a/b/c', false],
    ['a/b/c', 'a/b', false],
    ['#', '$SYS/broker/uptime', false], // [MQTT-4.7.2-1]
    ['+/broker/uptime', '$SYS/broker/uptime', false],
    ['$SYS/#', '$SYS/broker/uptime', true],
    ['$SYS/+/uptime', '$SYS/broker/uptime', true],
    ['a/#/b', 'a/x/b', false], // invalid filter
    ['a+', 'a+', false], // invalid filter
    ['a/#', 'a/+', false], // a topic name has no wildcards
    ['', '', false],
  ]
  for (const [filter, topic, expected] of table) assert.equal(topicMatches(filter, topic), expected, `${filter} ~ ${topic}`)
})

test('filterCovers is true only when the pattern matches every topic the filter can', () => {
  const table: Array<[string, string, boolean]> = [
    ['devices/d1/commands/#', 'devices/d1/commands/#', true],
    ['devices/d1/commands/#', 'devices/d1/commands/+', true],
    ['devices/d1/commands/#', 'devices/d1/commands/x', true],
    ['devices/d1/commands/#', 'devices/d1/commands', true],
    ['devices/d1/commands/#', 'devices/d1/commands/+/y/#', true],
    ['devices/d1/#', '#', false],
    ['devices/d1/#', 'devices/#', false],
    ['devices/d1/#', 'devices/+/commands', false],
    ['devices/+/status', 'devices/d1/status', true],
    ['devices/+/status', 'devices/+/status', true],
    ['devices/+/status', 'devices/+/status/#', false],
    ['a/+', 'a/#', false],
    ['a/+/#', 'a/#', false],
    ['a/b', 'a/b', true],
    ['a/b', 'a/b/c', false],
    ['a/b/c', 'a/b', false],
    ['#', '#', true],
    ['#', 'a/+/b', true],
    ['#', '$SYS/#', false],
    ['+/x', '$SYS/x', false],
    ['$SYS/#', '$SYS/broker/+', true],
    ['a/#', 'a/#/b', false], // invalid filter
  ]
  for (const [pattern, filter, expected] of table) assert.equal(filterCovers(pattern, filter), expected, `${pattern} ⊇ ${filter}`)
})

test('filtersIntersect finds overlapping filters', () => {
  const table: Array<[string, string, boolean]> = [
    ['devices/d1/commands/#', '#', true],
    ['devices/d1/commands/#', 'devices/+/commands', true],
    ['devices/d1/commands/#', 'devices/d1/status', false],
    ['devices/d1/commands/#', 'devices/d2/#', false],
    ['a/+', '+/b', true],
    ['a', 'a/#', true],
    ['a/b', 'a', false],
    ['#', '$SYS/x', false],
    ['+/x', '$SYS/x', false],
  ]
  for (const [a, b, expected] of table) {
    assert.equal(filtersIntersect(a, b), expected, `${a} ∩ ${b}`)
    assert.equal(filtersIntersect(b, a), expected, `${b} ∩ ${a}`)
  }
})

test('{id} expands to the device id, so the defaults hold for every device', () => {
  const reg = new DeviceRegistry([device('d1'), device('d2')])
  const d1 = reg.get('d1') as DeviceRecord
  assert.equal(reg.canPublish(d1, 'devices/d1/temp'), true)
  assert.equal(reg.canPublish(d1, 'devices/d1'), true)
  assert.equal(reg.canPublish(d1, 'devices/d2/temp'), false)
  assert.equal(reg.canPublish(d1, 'devices/{id}/temp'), false)
  assert.equal(reg.canSubscribe(d1, 'devices/d1/commands/#'), true)
  assert.equal(reg.canSubscribe(d1, 'devices/d1/commands/reboot'), true)
  assert.equal(reg.canSubscribe(d1, 'devices/d2/commands/#'), false)
  assert.equal(reg.canSubscribe(d1, 'devices/+/commands/#'), false)
  assert.equal(reg.canSubscribe(d1, '#'), false)
})

test('publish answers stay right when remembered: per device, past the memo\'s size, and after the device changes', () => {
  const reg = new DeviceRegistry([device('d1'), device('d2')])
  const d1 = reg.get('d1') as DeviceRecord
  const d2 = reg.get('d2') as DeviceRecord
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 40; i++) {
      assert.equal(reg.canPublish(d1, `devices/d1/t${i}`), true)
      assert.equal(reg.canPublish(d2, `devices/d1/t${i}`), false, 'd1\'s answer is not d2\'s')
      assert.equal(reg.canPublish(d1, `devices/d1/commands/c${i}`), false)
    }
  }
  assert.equal(reg.canPublish(d1, '$SYS/x'), false)
  assert.equal(reg.canPublish(d1, 'devices/d1/+'), false, 'not a topic name')
  // A changed record (gridgate device ...) brings its own patterns; a disabled device may publish nothing.
  reg.set(device('d1', { publish: ['other/{id}/#'] }))
  const changed = reg.get('d1') as DeviceRecord
  assert.equal(reg.canPublish(changed, 'devices/d1/t1'), false)
  assert.equal(reg.canPublish(changed, 'other/d1/t1'), true)
  reg.set(device('d1', { enabled: false }))
  assert.equal(reg.canPublish(reg.get('d1') as DeviceRecord, 'devices/d1/t1'), false)
})

test('the default publish patterns exclude the device\'s own command topics', () => {
  const reg = new DeviceRegistry([device('d1')])
  const d1 = reg.get('d1') as DeviceRecord
  assert.equal(reg.canPublish(d1, 'devices/d1/commands/reboot'), false)
  assert.equal(reg.canPublish(d1, 'devices/d1/commands'), false)
  assert.equal(reg.canPublish(d1, 'devices/d1/commandsx'), true)
})

test('a controller may be allowed to publish other devices\' commands', () => {
  const ctl = device('ctl', { publish: ['devices/+/commands/#'], subscribe: ['devices/+/status', '!devices/secret/#'] })
  const reg = new DeviceRegistry([ctl])
  assert.equal(reg.canPublish(ctl, 'devices/d1/commands/reboot'), true)
  assert.equal(reg.canPublish(ctl, 'devices/d1/temp'), false)
  assert.equal(reg.canSubscribe(ctl, 'devices/d1/status'), true)
  assert.equal(reg.canSubscribe(ctl, 'devices/+/status'), false, 'overlaps the excluded devices/secret/status')
  assert.equal(reg.canSubscribe(ctl, 'devices/secret/status'), false)
})

test('$ topics, wildcard topics and disabled devices are never allowed', () => {
  const all = device('root', { publish: ['#', '$SYS/#'], subscribe: ['#'] })
  const reg = new DeviceRegistry([all])
  assert.equal(reg.canPublish(all, 'anything/at/all'), true)
  assert.equal(reg.canPublish(all, '$SYS/broker/uptime'), false)
  assert.equal(reg.canPublish(all, 'a/+'), false)
  assert.equal(reg.canPublish(all, ''), false)
  assert.equal(reg.canSubscribe(all, '$SYS/#'), false)
  assert.equal(reg.canSubscribe(all, 'a/#/b'), false)
  const off = { ...all, enabled: false }
  assert.equal(reg.canPublish(off, 'anything'), false)
  assert.equal(reg.canSubscribe(off, 'anything'), false)
})

test('a record that is not in the registry is checked by its own patterns', () => {
  const reg = new DeviceRegistry([])
  const anonymous: DeviceRecord = { id: 'anonymous', publish: ['devices/{id}/#'], subscribe: [], enabled: true }
  assert.equal(reg.canPublish(anonymous, 'devices/anonymous/x'), true)
  assert.equal(reg.canSubscribe(anonymous, 'devices/anonymous/x'), false)
})

test('isCommandTopic and deviceIdOfTopic read the devices/<id>/ tree', () => {
  assert.equal(isCommandTopic('devices/d1/commands/reboot'), true)
  assert.equal(isCommandTopic('devices/d1/commands'), true)
  assert.equal(isCommandTopic('devices/d1/commands/'), true)
  assert.equal(isCommandTopic('devices/d1/commandsx'), false)
  assert.equal(isCommandTopic('devices/d1/temp/commands'), false)
  assert.equal(isCommandTopic('devices/commands'), false)
  assert.equal(isCommandTopic('other/d1/commands/x'), false)
  assert.equal(deviceIdOfTopic('devices/d1/temp'), 'd1')
  assert.equal(deviceIdOfTopic('devices/d1'), 'd1')
  assert.equal(deviceIdOfTopic('devices//x'), undefined)
  assert.equal(deviceIdOfTopic('devices'), undefined)
  assert.equal(deviceIdOfTopic('sensors/d1'), undefined)
})
