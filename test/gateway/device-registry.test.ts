// The device registry: rows in the SQLite file through the writer, the merge with config devices
// (config wins), per-device cache invalidation, presence, and a running gateway applying changes at
// once: a device added over the admin API connects on every protocol, a disabled one loses its live
// MQTT and WebSocket sessions and is refused everywhere.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { once, type EventEmitter } from 'node:events'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { WebSocket } from 'ws'
import mqtt from 'mqtt'
import { Store, STORE_FILE, type DeviceRow } from '../../store-forward/store.js'
import { DeviceManager, Presence, ONLINE_WINDOW_MS } from '../../gateway/devices.js'
import { parseDeviceInput } from '../../gateway/device-input.js'
import { DeviceRegistry, hashToken } from '../../gateway/identity.js'
import { GridgateError, isGridgateError } from '../../gateway/errors.js'
import { loadConfig } from '../../config/load.js'
import { Gateway } from '../../gateway/gateway.js'
import { tempDir, waitFor } from '../helpers/util.js'
import { baseConfig, writeConfig, TOKENS } from '../helpers/gateway.js'
import { connect, connectRefused } from '../helpers/mqtt.js'
import { CoapClient } from '../helpers/coap.js'

const silent = pino({ level: 'silent' })

async function openStore (dataDir: string): Promise<Store> {
  fs.mkdirSync(dataDir, { recursive: true })
  const store = new Store({ dataDir, sync: 'full', dedupWindowMs: 60_000, commitDelayMs: 0, uplinks: [], floorMs: () => 0, now: () => Date.now(), log: silent, faults: false })
  await store.open()
  return store
}

const code = (c: string) => (err: unknown) => isGridgateError(err) && err.code === c

test('registry rows round trip through the writer and survive a reopen; only the hash is in the file', async (t) => {
  const dir = path.join(tempDir(t), 'data')
  let store = await openStore(dir)
  const secret = 'a-very-secret-device-token-0123456789'
  const row: DeviceRow = { id: 'd1', tokenHash: await hashToken(secret), publish: ['devices/d1/#'], subscribe: [], enabled: true, createdMs: 1000, updatedMs: 1000 }
  assert.deepEqual(await store.addDevice(row), row)
  await assert.rejects(store.addDevice(row), code('GG_ERR_DEVICE_EXISTS'))
  await store.addDevice({ ...row, id: 'd0' })
  assert.deepEqual((await store.listDevices()).map(d => d.id), ['d0', 'd1'])
  const disabled = await store.setDeviceEnabled('d1', false)
  assert.equal(disabled.enabled, false)
  assert.ok(disabled.updatedMs >= 1000)
  await assert.rejects(store.setDeviceEnabled('nope', false), code('GG_ERR_DEVICE_NOT_FOUND'))
  await store.removeDevice('d0')
  await assert.rejects(store.removeDevice('d0'), code('GG_ERR_DEVICE_NOT_FOUND'))
  await store.close()

  store = await openStore(dir)
  t.after(() => store.close())
  assert.deepEqual(await store.listDevices(), [{ ...row, enabled: false, updatedMs: disabled.updatedMs }])
  await store.close()
  const bytes = Buffer.concat(['', '-wal'].filter(s => fs.existsSync(path.join(dir, STORE_FILE + s))).map(s => fs.readFileSync(path.join(dir, STORE_FILE + s))))
  assert.ok(bytes.includes(Buffer.from(row.tokenHash)), 'the hash is stored')
  assert.ok(!bytes.includes(Buffer.from(secret)), 'the secret is not')
})

function fakeStore (): { store: ConstructorParameters<typeof DeviceManager>[0]['store'], rows: Map<string, DeviceRow> } {
  const rows = new Map<string, DeviceRow>()
  return {
    rows,
    store: {
      listDevices: async () => [...rows.values()],
      addDevice: async (d) => { rows.set(d.id, d); return d },
      setDeviceEnabled: async (id, enabled) => { const d = { ...rows.get(id)!, enabled }; rows.set(id, d); return d },
      removeDevice: async (id) => { if (!rows.delete(id)) throw new GridgateError('GG_ERR_DEVICE_NOT_FOUND') },
    },
  }
}

test('config devices win: an id in the config cannot be added, enabled or disabled; a shadowed row can be removed', async () => {
  const { store, rows } = fakeStore()
  rows.set('cfg', { id: 'cfg', tokenHash: await hashToken('old-secret-123'), publish: ['x/#'], subscribe: [], enabled: true, createdMs: 1, updatedMs: 1 })
  const warnings: unknown[] = []
  const log = pino({ level: 'warn' }, new Writable({ write (c: Buffer, _e, cb) { warnings.push(JSON.parse(c.toString())); cb() } }))
  const m = new DeviceManager({ configDevices: [{ id: 'cfg', token: 'config-secret', publish: ['devices/cfg/#'], subscribe: [], enabled: true }], store, log })
  await m.load()
  assert.equal(warnings.length, 1, 'the shadowed row is logged at load')
  // The config's credential authenticates; the shadowed row's does not.
  assert.ok(await m.registry.authenticate('cfg', 'config-secret'))
  assert.equal(await m.registry.authenticate('cfg', 'old-secret-123'), undefined)
  const listed = m.list()
  assert.deepEqual(listed.map(d => [d.id, d.source, d.shadowed ?? false]), [['cfg', 'config', false], ['cfg', 'registry', true]])
  await assert.rejects(m.add({ id: 'cfg' }), code('GG_ERR_DEVICE_EXISTS'))
  await assert.rejects(m.setEnabled('cfg', false), code('GG_ERR_DEVICE_IN_CONFIG'))
  assert.deepEqual(await m.remove('cfg'), { removed: 'cfg', source: 'registry' })
  assert.ok(await m.registry.authenticate('cfg', 'config-secret'), 'removing the shadowed row leaves the config device')
  await assert.rejects(m.remove('cfg'), code('GG_ERR_DEVICE_IN_CONFIG'))

  // A registry device: add (the secret made here, returned once), disable (revoked), remove (revoked).
  const revoked: string[] = []
  m.on('revoked', (id) => revoked.push(id))
  const added = await m.add({ id: 'reg-1', publish: ['devices/{id}/#'] })
  assert.equal(added.device.source, 'registry')
  const credential = added.credential ?? ''
  assert.ok(credential.startsWith('reg-1:'))
  assert.ok(!JSON.stringify(m.list()).includes(credential.slice(6)), 'list never shows the secret')
  assert.ok(!JSON.stringify(m.list()).includes('$scrypt$'), 'list never shows the hash')
  assert.ok(await m.registry.authenticate('reg-1', credential.slice(6)))
  await m.setEnabled('reg-1', false)
  assert.equal(await m.registry.authenticate('reg-1', credential.slice(6)), undefined)
  await m.setEnabled('reg-1', true)
  assert.ok(await m.registry.authenticate('reg-1', credential.slice(6)))
  await m.remove('reg-1')
  assert.equal(await m.registry.authenticate('reg-1', credential.slice(6)), undefined)
  assert.deepEqual(revoked, ['reg-1', 'reg-1'])
  await assert.rejects(m.remove('reg-1'), code('GG_ERR_DEVICE_NOT_FOUND'))
})

test('device input is validated like config devices, with every problem listed', () => {
  assert.deepEqual(parseDeviceInput({ id: 'ok-1', publish: ['devices/ok-1/#', '!devices/ok-1/commands/#'] }).publish, ['devices/ok-1/#', '!devices/ok-1/commands/#'])
  for (const bad of [{ id: 'has/slash' }, { id: '' }, { id: '-leading' }, { id: 'x'.repeat(129) }, { id: 'a', publish: ['a/#/b'] }, { id: 'a', subscribe: ['a+'] }, { id: 'a', extra: 1 }, { id: 'a', tokenHash: 'plain' }]) {
    assert.throws(() => parseDeviceInput(bad), code('GG_ERR_DEVICE_INVALID'), JSON.stringify(bad))
  }
  try {
    parseDeviceInput({ id: 'a b', publish: ['#/x'], subscribe: ['+x'] })
    assert.fail('accepted')
  } catch (err) {
    assert.ok(isGridgateError(err))
    assert.equal(err.details.length, 3)
  }
})

test('a change to one device drops only its cached verifications', async () => {
  const [h1, h2] = await Promise.all([hashToken('secret-one-1'), hashToken('secret-two-2')])
  const r = new DeviceRegistry([
    { id: 'one', tokenHash: h1, publish: [], subscribe: [], enabled: true },
    { id: 'two', tokenHash: h2, publish: [], subscribe: [], enabled: true },
  ])
  await r.authenticate('one', 'secret-one-1')
  await r.authenticate('two', 'secret-two-2')
  const runs = r.stats.scryptRuns
  r.set({ id: 'one', tokenHash: h1, publish: [], subscribe: [], enabled: false })
  assert.ok(await r.authenticate('two', 'secret-two-2'))
  assert.equal(r.stats.scryptRuns, runs, 'two is still cached')
  assert.equal(await r.authenticate('one', 'secret-one-1'), undefined, 'one is disabled now')
  r.set({ id: 'one', tokenHash: h1, publish: [], subscribe: [], enabled: true })
  assert.ok(await r.authenticate('one', 'secret-one-1'))
  assert.equal(r.stats.scryptRuns, runs + 2, 'one was verified again (after a dummy run for the disabled attempt)')
  assert.ok(r.delete('one'))
  assert.equal(await r.authenticate('one', 'secret-one-1'), undefined)
  assert.throws(() => r.set({ id: 'bad', publish: ['a/#/b'], subscribe: [], enabled: true }), code('GG_ERR_CONFIG_INVALID'))
})

test('presence: connections for MQTT and WebSocket, a recent sighting for CoAP and HTTP; unknown ids are not tracked', () => {
  let now = 1_000_000
  const p = new Presence((id) => id !== 'stranger', () => now)
  p.connected('d', 'mqtt')
  p.connected('d', 'mqtt')
  p.seen('d', 'http')
  p.seen('stranger', 'http')
  let v = p.view('d')
  assert.deepEqual(v.protocols.mqtt, { online: true, connections: 2, lastSeen: new Date(now).toISOString() })
  assert.equal(v.protocols.http.online, true)
  assert.equal(v.protocols.ws.online, false)
  assert.equal(v.online, true)
  assert.equal(p.view('stranger').lastSeen, null)
  p.disconnected('d', 'mqtt')
  p.disconnected('d', 'mqtt')
  p.disconnected('d', 'mqtt')
  now += ONLINE_WINDOW_MS + 1
  v = p.view('d')
  assert.deepEqual(v.protocols.mqtt.connections, 0)
  assert.equal(v.protocols.http.online, false)
  assert.equal(v.online, false)
  assert.equal(v.lastSeen, new Date(now - ONLINE_WINDOW_MS - 1).toISOString())
})

interface Listed { devices: Array<{ id: string, source: string, enabled: boolean, online: boolean, lastSeen: string | null, protocols: Record<string, { online: boolean, connections?: number, lastSeen: string | null }> }> }

test('a running gateway applies registry changes at once on every protocol, and logs failed auth without secrets, once per source', async (t) => {
  const dir = tempDir(t)
  const lines: Array<Record<string, unknown>> = []
  const raw: string[] = []
  const log = pino({ level: 'info' }, new Writable({ write (c: Buffer, _e, cb) { raw.push(c.toString()); lines.push(JSON.parse(c.toString()) as Record<string, unknown>); cb() } }))
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), {}))
  const gw = new Gateway(loadConfig({ path: file, env: {} }), { log })
  await gw.start()
  t.after(() => gw.stop().catch(() => {}))
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`
  const webPort = Number(gw.listeners().websocket!.split(':').pop())
  const api = async (method: string, p: string, body?: unknown): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await fetch(`${admin}${p}`, { method, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) })
    return { status: res.status, body: await res.json() as Record<string, unknown> }
  }

  // Refusals over the admin API carry their codes and statuses.
  assert.equal((await api('POST', '/api/v1/devices', { id: 'bad/id' })).status, 400)
  assert.deepEqual((await api('POST', '/api/v1/devices', { id: 'sensor-1' })).body.code, 'GG_ERR_DEVICE_EXISTS')
  assert.equal((await api('PATCH', '/api/v1/devices/sensor-1', { enabled: false })).status, 409)
  assert.equal((await api('PATCH', '/api/v1/devices/nope', { enabled: false })).status, 404)
  assert.equal((await api('PATCH', '/api/v1/devices/nope', { enabled: 'no' })).status, 400)
  assert.equal((await api('DELETE', '/api/v1/devices/nope')).status, 404)
  assert.equal((await api('GET', '/api/v1/devices/nope')).status, 404)

  const added = await api('POST', '/api/v1/devices', { id: 'fresh-1' })
  assert.equal(added.status, 201)
  const credential = String(added.body.credential)
  const secret = credential.slice('fresh-1:'.length)

  // MQTT, WebSocket JSON, HTTP ingest and CoAP all accept the new device without a restart.
  const c = await connect(t, gw.mqttAddress!.port, { username: 'fresh-1', password: secret, clientId: 'fresh-1-client' })
  await c.publishAsync('devices/fresh-1/t', '{"n":1}', { qos: 1 })
  // MQTT over WebSocket: the same broker, so the same session rules.
  const overWs = await mqtt.connectAsync(`ws://127.0.0.1:${webPort}/mqtt`, { username: 'fresh-1', password: secret, reconnectPeriod: 0 })
  t.after(() => overWs.end(true))
  const ws = new WebSocket(`ws://127.0.0.1:${webPort}/ws`, { headers: { authorization: `Bearer ${credential}` } })
  t.after(() => ws.terminate())
  await once(ws, 'open')
  ws.send(JSON.stringify({ id: 'm1', topic: 'devices/fresh-1/w', data: { n: 2 } }))
  const [ack] = await once(ws, 'message') as [Buffer]
  assert.equal((JSON.parse(ack.toString()) as { ack: unknown[] }).ack.length, 1)
  const post = (auth: string): Promise<Response> => fetch(`http://127.0.0.1:${webPort}/v1/devices/fresh-1/events/h`, { method: 'POST', headers: { authorization: `Bearer ${auth}`, 'content-type': 'application/json' }, body: '{"n":3}' })
  assert.equal((await post(credential)).status, 202)
  const coap = await new CoapClient(gw.coapAddress!.port).open()
  t.after(() => coap.close())
  const cr = await coap.request({ method: 'POST', path: 'devices/fresh-1/c', query: [`auth=${credential}`], payload: Buffer.from('{"n":4}'), contentFormat: 50 })
  assert.equal(typeof cr === 'string' ? cr : cr.code, '2.04')

  let listed = (await api('GET', '/api/v1/devices')).body as unknown as Listed
  const fresh = listed.devices.find(d => d.id === 'fresh-1')!
  assert.equal(fresh.source, 'registry')
  assert.equal(fresh.online, true)
  assert.deepEqual(Object.fromEntries(Object.entries(fresh.protocols).map(([k, v]) => [k, [v.online, v.connections]])), { mqtt: [true, 2], ws: [true, 1], http: [true, undefined], coap: [true, undefined] })
  assert.ok(Object.values(fresh.protocols).every(v => v.lastSeen !== null))
  assert.equal(listed.devices.find(d => d.id === 'sensor-2')!.lastSeen, null, 'a device never seen')
  assert.ok(!JSON.stringify(listed).includes(secret) && !JSON.stringify(listed).includes('$scrypt$'))

  // Disable: the live MQTT session and the WebSocket connection close; every protocol refuses.
  const mqttClosed = once(c as unknown as EventEmitter, 'close')
  const overWsClosed = once(overWs as unknown as EventEmitter, 'close')
  const wsClosed = once(ws, 'close')
  const off = await api('PATCH', '/api/v1/devices/fresh-1', { enabled: false })
  assert.equal(off.status, 200)
  await mqttClosed
  await overWsClosed
  const [wsCode] = await wsClosed as [number]
  assert.equal(wsCode, 1008)
  const refusedConnect = await connectRefused(gw.mqttAddress!.port, { username: 'fresh-1', password: secret })
  assert.equal(refusedConnect.code, 4)
  assert.equal((await post(credential)).status, 401)
  const cr2 = await coap.request({ method: 'POST', path: 'devices/fresh-1/c', query: [`auth=${credential}`], payload: Buffer.from('{"n":5}'), contentFormat: 50 })
  assert.equal(typeof cr2 === 'string' ? cr2 : cr2.code, '4.01')
  await waitFor(async () => {
    const l = (await api('GET', '/api/v1/devices')).body as unknown as Listed
    const d = l.devices.find(x => x.id === 'fresh-1')!
    return !d.enabled && d.protocols.mqtt!.connections === 0 && d.protocols.ws!.connections === 0
  }, 'presence shows the closed connections')

  // Enable again, then remove: the session closes again and the device is gone.
  await api('PATCH', '/api/v1/devices/fresh-1', { enabled: true })
  const c2 = await connect(t, gw.mqttAddress!.port, { username: 'fresh-1', password: secret, protocolVersion: 5 })
  const disconnect = once(c2 as unknown as EventEmitter, 'disconnect')
  assert.equal((await api('DELETE', '/api/v1/devices/fresh-1')).status, 200)
  const [packet] = await disconnect as [{ reasonCode?: number }]
  assert.equal(packet.reasonCode, 0x98, 'MQTT 5 clients are told: administrative action')
  listed = (await api('GET', '/api/v1/devices')).body as unknown as Listed
  assert.equal(listed.devices.find(d => d.id === 'fresh-1'), undefined)

  // Failed authentication on every protocol: logged with device id and source, never the secret,
  // and at most once per interval per source.
  const wrong = 'wrong-secret-that-must-not-be-logged'
  for (let i = 0; i < 2; i++) {
    await connectRefused(gw.mqttAddress!.port, { username: 'sensor-1', password: wrong })
    await post(`sensor-1:${wrong}`)
    await coap.request({ method: 'POST', path: 'devices/sensor-1/c', query: [`auth=sensor-1:${wrong}`], payload: Buffer.from('1') })
    await new Promise<void>((resolve) => {
      const bad = new WebSocket(`ws://127.0.0.1:${webPort}/ws?auth=sensor-1:${wrong}`)
      bad.on('error', () => resolve())
    })
  }
  const refusals = lines.filter(l => /authentication refused/.test(String(l.msg)))
  // HTTP and WebSocket share one limiter per source; MQTT and CoAP have their own.
  assert.deepEqual(refusals.map(l => l.msg).sort(), ['coap authentication refused', 'http authentication refused', 'mqtt authentication refused'].sort())
  // (the first refusals were fresh-1's, after it was disabled; the same source then stays quiet)
  assert.ok(refusals.every(l => (l.deviceId === 'fresh-1' || l.deviceId === 'sensor-1') && l.source === '127.0.0.1' && typeof l.code === 'string'), JSON.stringify(refusals))
  const all = raw.join('')
  assert.ok(!all.includes(wrong), 'no refused secret in the logs')
  assert.ok(!all.includes(secret), 'no device secret in the logs')
  assert.ok(!all.includes(TOKENS['sensor-1']))
})
