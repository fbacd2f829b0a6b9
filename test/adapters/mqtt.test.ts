import { test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import path from 'node:path'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import mqttPacket from 'mqtt-packet'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import { tempDir, waitFor, repoRoot } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect, connectRefused } from '../helpers/mqtt.js'
import { brokerClientId, protocolViolation } from '../../adapters/mqtt/index.js'

async function setup (t: import('node:test').TestContext, extra: Record<string, unknown> = {}) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, extra))
  return { rx, gw, port: gw.mqttAddress!.port }
}

/** A raw MQTT 3.1.1 connection, for packets a well-behaved client library would not send. */
async function rawClient (t: import('node:test').TestContext, port: number, clientId: string, username: string, password: string) {
  const socket = net.connect(port, '127.0.0.1')
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  await once(socket, 'connect')
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const packets: mqttPacket.Packet[] = []
  socket.on('data', (b: Buffer) => parser.parse(b))
  parser.on('packet', (p: mqttPacket.Packet) => packets.push(p))
  const send = (p: Record<string, unknown>): void => { socket.write(mqttPacket.generate(p as unknown as mqttPacket.Packet)) }
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30, username, password: Buffer.from(password) })
  await waitFor(() => packets.find(p => p.cmd === 'connack'), 'CONNACK')
  return { socket, packets, send }
}

test('a wrong password is refused at CONNACK with "bad user name or password"', async (t) => {
  const { port } = await setup(t)
  const r = await connectRefused(port, { username: 'sensor-1', password: 'wrong-secret' })
  assert.equal(r.code, 4)
  const r5 = await connectRefused(port, { username: 'sensor-1', password: 'wrong-secret', protocolVersion: 5 })
  assert.equal(r5.code, 0x86)
})

test('an unknown device and an anonymous client are refused at CONNACK', async (t) => {
  const { port, gw } = await setup(t)
  assert.equal((await connectRefused(port, { username: 'nobody', password: 'whatever-secret' })).code, 4)
  assert.equal((await connectRefused(port, {})).code, 5)
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  assert.match(metrics, /gridgate_auth_failures_total\{protocol="mqtt"\} 2/)
})

test('a password without a user name is refused [MQTT-3.1.2-22], even with anonymous access on', async (t) => {
  const { port } = await setup(t, { auth: { allowAnonymous: true } })
  const socket = net.connect(port, '127.0.0.1')
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  await once(socket, 'connect')
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const answer = new Promise<string>((resolve) => {
    parser.on('packet', (p: mqttPacket.Packet) => { if (p.cmd === 'connack') resolve(`connack ${p.returnCode}`) })
    socket.on('close', () => resolve('closed'))
  })
  socket.on('data', (b: Buffer) => parser.parse(b))
  // Hand-encoded: client libraries refuse to build this CONNECT (password flag without user name flag).
  const password = Buffer.from('secret-only')
  const body = Buffer.concat([
    Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x42, 0x00, 0x1e]), // "MQTT", level 4, flags: password + clean
    Buffer.from([0x00, 0x01, 0x78]), // client id "x"
    Buffer.from([0x00, password.length]), password,
  ])
  socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body]))
  const result = await answer
  assert.ok(result === 'closed' || result === 'connack 4', `refused, got ${result}`)
  if (result !== 'closed') await new Promise<void>((resolve) => socket.once('close', () => resolve()))
})

test('anonymous clients connect when auth.allowAnonymous is on, inside devices/anonymous/#', async (t) => {
  const { port, rx } = await setup(t, { auth: { allowAnonymous: true } })
  const client = await connect(t, port, {})
  await client.publishAsync('devices/anonymous/x', '{"a":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the anonymous event arrives')
  assert.equal(rx.events[0]!.deviceid, 'anonymous')
})

test('a publish outside the namespace closes an MQTT 3.1.1 connection and is never forwarded', async (t) => {
  const { port, rx } = await setup(t)
  const client = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
  client.publish('devices/sensor-2/temp', '{"stolen":true}', { qos: 1 })
  await closed
  const ok = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await ok.publishAsync('devices/sensor-1/temp', '{"ok":true}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the allowed event arrives')
  await sleep(100)
  assert.deepEqual(rx.events.map(e => e.data), [{ ok: true }])
})

test('a publish outside the namespace gets PUBACK 0x87 on MQTT 5 and is never forwarded', async (t) => {
  const { port, rx } = await setup(t)
  const client = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  await assert.rejects(client.publishAsync('devices/sensor-2/temp', '{"stolen":true}', { qos: 1 }), (err: Error & { code?: number }) => err.code === 0x87)
  await client.publishAsync('devices/sensor-1/temp', '{"ok":true}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the allowed event arrives')
  assert.deepEqual(rx.events.map(e => e.data), [{ ok: true }])
})

test('a second device using the first device\'s client id leaves the first connected and its session untouched', async (t) => {
  const { port, rx } = await setup(t)
  const first = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], clientId: 'shared-id', clean: false })
  await first.subscribeAsync('devices/sensor-1/commands/#', { qos: 1 })
  let firstClosed = false
  first.on('close', () => { firstClosed = true })
  const second = await connect(t, port, { username: 'sensor-2', password: TOKENS['sensor-2'], clientId: 'shared-id' })
  await second.publishAsync('devices/sensor-2/x', '{"from":2}', { qos: 1 })
  await first.publishAsync('devices/sensor-1/x', '{"from":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 2, 'both events')
  assert.equal(firstClosed, false)
  assert.equal(brokerClientId('sensor-1', 'shared-id'), 'sensor-1:shared-id')
  assert.equal(brokerClientId('sensor-1', 'sensor-1:x'), 'sensor-1:x')
  // The first device's subscription still works: a controller command reaches it.
  const got = new Promise<string>((resolve) => first.on('message', (topic, payload) => resolve(`${topic} ${payload.toString()}`)))
  const ctl = await connect(t, port, { username: 'controller', password: TOKENS.controller })
  await ctl.publishAsync('devices/sensor-1/commands/reboot', 'now', { qos: 1 })
  assert.equal(await got, 'devices/sensor-1/commands/reboot now')
  await sleep(100)
  assert.equal(rx.events.length, 2, 'command topics are delivered locally, not stored as events')
})

test('an empty client id is assigned one with a clean session and refused with a persistent one [MQTT-3.1.3-8]', async (t) => {
  const { port, rx } = await setup(t)
  const ok = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], clientId: '', clean: true })
  await ok.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the event from the client without an id')
  // Hand-encoded: client libraries refuse to build a persistent session without a client id.
  const socket = net.connect(port, '127.0.0.1')
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  await once(socket, 'connect')
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const connack = new Promise<mqttPacket.IConnackPacket>((resolve) => parser.on('packet', (p: mqttPacket.Packet) => { if (p.cmd === 'connack') resolve(p) }))
  socket.on('data', (b: Buffer) => parser.parse(b))
  const user = Buffer.from('sensor-1')
  const pass = Buffer.from(TOKENS['sensor-1'])
  const body = Buffer.concat([
    Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0xc0, 0x00, 0x1e]), // "MQTT", level 4, user + password, clean 0
    Buffer.from([0x00, 0x00]), // empty client id
    Buffer.from([0x00, user.length]), user,
    Buffer.from([0x00, pass.length]), pass,
  ])
  socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body]))
  assert.equal((await connack).returnCode, 2)
})

test('a device may not publish to its own command topics by default; telemetry reaches local subscribers', async (t) => {
  const { port, rx } = await setup(t)
  const ctl = await connect(t, port, { username: 'controller', password: TOKENS.controller })
  const seen = new Promise<string>((resolve) => ctl.on('message', (topic, payload) => resolve(`${topic} ${payload.toString()}`)))
  await ctl.subscribeAsync('devices/sensor-1/#', { qos: 1 })
  const device = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  await assert.rejects(device.publishAsync('devices/sensor-1/commands/self', 'x', { qos: 1 }), (err: Error & { code?: number }) => err.code === 0x87)
  await device.publishAsync('devices/sensor-1/temp', '{"c":1}', { qos: 1 })
  assert.equal(await seen, 'devices/sensor-1/temp {"c":1}')
  await waitFor(() => rx.events.length === 1, 'the telemetry event stored and forwarded too')
})

test('a subscription outside the device\'s patterns is refused in SUBACK', async (t) => {
  const { port } = await setup(t)
  const client = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  // mqtt.js turns a 0x80 return code in SUBACK into an error.
  await assert.rejects(client.subscribeAsync('devices/sensor-2/commands/#', { qos: 1 }), /Subscribe error/)
  assert.equal(client.connected, true, 'a refused subscription does not close the connection')
  const ok = await client.subscribeAsync('devices/sensor-1/commands/+', { qos: 1 })
  assert.equal(ok[0]!.qos, 1)
})

test('QoS 0, 1 and 2 publishes are all stored and forwarded, in arrival order', async (t) => {
  const { port, rx } = await setup(t)
  const client = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  client.publish('devices/sensor-1/q', '{"qos":0}', { qos: 0 })
  await client.publishAsync('devices/sensor-1/q', '{"qos":1}', { qos: 1 })
  await client.publishAsync('devices/sensor-1/q', '{"qos":2}', { qos: 2 })
  await waitFor(() => rx.events.length === 3, 'three events')
  assert.deepEqual(rx.events.map(e => e.data), [{ qos: 0 }, { qos: 1 }, { qos: 2 }])
})

test('a QoS1 PUBLISH resent with DUP=1 after a lost PUBACK becomes one event', async (t) => {
  const { port, rx, gw } = await setup(t)
  const c = await rawClient(t, port, 'raw-1', 'sensor-1', TOKENS['sensor-1'])
  const publish = { cmd: 'publish', topic: 'devices/sensor-1/dup', payload: Buffer.from('{"n":1}'), qos: 1, messageId: 7, dup: false, retain: false }
  c.send(publish)
  await waitFor(() => c.packets.filter(p => p.cmd === 'puback').length === 1, 'first PUBACK')
  // The device never saw that PUBACK and retransmits.
  c.send({ ...publish, dup: true })
  await waitFor(() => c.packets.filter(p => p.cmd === 'puback').length === 2, 'second PUBACK')
  await waitFor(() => rx.events.length === 1, 'one event')
  await sleep(200)
  assert.equal(rx.events.length, 1)
  assert.equal((await gw.store.stats()).events + rx.events.length >= 1, true)
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  assert.match(metrics, /gridgate_dedup_hits_total\{protocol="mqtt"\} 1/)
})

test('a QoS2 publish is stored once even when resent before PUBREL', async (t) => {
  const { port, rx } = await setup(t)
  const c = await rawClient(t, port, 'raw-2', 'sensor-1', TOKENS['sensor-1'])
  const publish = { cmd: 'publish', topic: 'devices/sensor-1/q2', payload: Buffer.from('{"n":2}'), qos: 2, messageId: 9, dup: false, retain: false }
  c.send(publish)
  c.send({ ...publish, dup: true })
  await waitFor(() => c.packets.filter(p => p.cmd === 'pubrec').length === 2, 'two PUBRECs')
  c.send({ cmd: 'pubrel', messageId: 9 })
  await waitFor(() => c.packets.find(p => p.cmd === 'pubcomp'), 'PUBCOMP')
  await waitFor(() => rx.events.length === 1, 'one event')
  await sleep(200)
  assert.equal(rx.events.length, 1)
})

test('an oversized packet closes the connection before it is buffered', async (t) => {
  const { port, gw } = await setup(t, { mqtt: { host: '127.0.0.1', port: 0, maxPacketSize: '4KiB' } })
  const c = await rawClient(t, port, 'big', 'sensor-1', TOKENS['sensor-1'])
  // Announce a 200 MiB PUBLISH and start streaming it: the gateway must drop us at the header.
  const header = Buffer.from([0x32, 0x80, 0x80, 0x80, 0x64])
  const closed = new Promise<void>((resolve) => c.socket.once('close', () => resolve()))
  const rssBefore = process.memoryUsage().rss
  c.socket.write(header)
  const chunk = Buffer.alloc(64 * 1024, 0x41)
  for (let i = 0; i < 64 && !c.socket.destroyed; i++) {
    if (!c.socket.write(chunk)) await Promise.race([new Promise((resolve) => c.socket.once('drain', resolve)), closed])
  }
  await closed
  assert.ok(process.memoryUsage().rss - rssBefore < 64 * 1024 * 1024, 'memory stayed bounded')
  assert.equal((await gw.store.stats()).events, 0)
})

test('protocol violations aedes does not check are caught', () => {
  const base = { cmd: 'publish' as const, topic: 'devices/d/x', payload: Buffer.alloc(0), retain: false }
  assert.match(protocolViolation({ ...base, qos: 0, dup: true } as never)!, /MQTT-3.3.1-2/)
  assert.match(protocolViolation({ ...base, qos: 1, dup: false, messageId: 0 } as never)!, /MQTT-2.3.1-1/)
  assert.match(protocolViolation({ ...base, topic: 'a\u0000b', qos: 0, dup: false } as never)!, /MQTT-1.5.3-2/)
  assert.equal(protocolViolation({ ...base, qos: 1, dup: false, messageId: 3 } as never), null)
})

test('a payload that is not JSON is kept as data_base64, and MQTT 5 refuses one that does not parse as its declared type', async (t) => {
  const { port, rx, gw } = await setup(t)
  const client = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/raw', Buffer.from([0xff, 0x00, 0x01]), { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the raw event')
  assert.equal(rx.events[0]!.data_base64, Buffer.from([0xff, 0x00, 0x01]).toString('base64'))
  const v5 = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  await assert.rejects(v5.publishAsync('devices/sensor-1/bad', '{not json', { qos: 1, properties: { contentType: 'application/json' } }),
    (err: Error & { code?: number }) => err.code === 0x99)
  await sleep(100)
  assert.equal(rx.events.length, 1, 'MQTT 5 refuses a payload that does not parse as its declared type')
  void gw
})

test('the aedes version is the one patches/ was written for, and its reason-code, offline-queue and emit patches are applied', () => {
  const dir = path.join(repoRoot, 'node_modules', 'aedes')
  const version = (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version
  const patches = fs.readdirSync(path.join(repoRoot, 'patches')).filter(f => f.startsWith('aedes+'))
  assert.deepEqual(patches, [`aedes+${version}.patch`], 'update or drop patches/aedes+*.patch when aedes changes')
  assert.match(fs.readFileSync(path.join(dir, 'lib', 'handlers', 'publish.js'), 'utf8'), /gridgate patch/)
  assert.match(fs.readFileSync(path.join(dir, 'aedes.js'), 'utf8'), /gridgate patch[\s\S]*hasPersistentSubscriptions\?\.\(\) !== false[\s\S]*mayHaveSubscribers\(this\.mq, p\.topic\)/)
})

test('the mqtt-packet version is the one patches/ was written for, and its debug calls are no-ops unless enabled', () => {
  const dir = path.join(repoRoot, 'node_modules', 'mqtt-packet')
  const version = (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version
  const patches = fs.readdirSync(path.join(repoRoot, 'patches')).filter(f => f.startsWith('mqtt-packet+'))
  assert.deepEqual(patches, [`mqtt-packet+${version}.patch`], 'update or drop patches/mqtt-packet+*.patch when mqtt-packet changes')
  for (const file of ['parser.js', 'writeToStream.js']) {
    assert.match(fs.readFileSync(path.join(dir, file), 'utf8'), /gridgate patch[\s\S]*const debug = debugLog\.enabled \? debugLog : function \(\) \{\}/, file)
  }
})

test('aedes emits a publish to every subscription that can take it (first-level wildcards too) and skips the emit only while none can', async () => {
  const { Aedes } = await import('aedes')
  const broker = await Aedes.createBroker()
  try {
    const publish = (topic: string): Promise<void> => new Promise((resolve, reject) =>
      broker.publish({ cmd: 'publish', topic, payload: Buffer.from(topic), qos: 1, retain: false, dup: false } as never, (err?: Error) => err ? reject(err) : resolve()))
    const on = (filter: string, got: string[]) => {
      const fn = (packet: { topic: string }, cb: () => void): void => { got.push(packet.topic); cb() }
      return {
        sub: () => new Promise<void>((resolve) => broker.subscribe(filter, fn as never, () => resolve())),
        unsub: () => new Promise<void>((resolve) => broker.unsubscribe(filter, fn as never, () => resolve())),
      }
    }
    // Emits reaching the emitter (patches/aedes+2.0.0-beta.1.patch skips them when nothing can match).
    const mq = (broker as unknown as { mq: { emit: (...a: unknown[]) => unknown } }).mq
    let emits = 0
    const emit = mq.emit.bind(mq)
    mq.emit = (...a: unknown[]) => { emits++; return emit(...a) }
    const all: string[] = []
    const plus: string[] = []
    const exact: string[] = []
    const sysGot: string[] = []
    const hash = on('#', all)
    const plusSub = on('+/b/c', plus)
    const exactSub = on('a/b/c', exact)
    const sys = on('$SYS/+/gridgate-test', sysGot)
    await publish('a/b/c')
    assert.deepEqual([all, plus, exact], [[], [], []], 'no subscription: nothing delivered')
    assert.equal(emits, 0, 'and nothing emitted (aedes\' own $SYS listeners cannot take it)')
    await sys.sub()
    await publish('a/b/c')
    assert.equal(emits, 0)
    await publish(`$SYS/${broker.id}/gridgate-test`)
    assert.deepEqual([all, sysGot.length, emits], [[], 1, 1], 'a $SYS topic is always emitted')
    await hash.sub()
    await plusSub.sub()
    await publish('a/b/c')
    await publish('x/b/c')
    assert.deepEqual([all, plus, emits], [['a/b/c', 'x/b/c'], ['a/b/c', 'x/b/c'], 3])
    await hash.unsub()
    await publish('x/b/c')
    assert.deepEqual([all.length, plus], [2, ['a/b/c', 'x/b/c', 'x/b/c']], '+/b/c alone still takes it')
    await plusSub.unsub()
    await exactSub.sub()
    await publish('a/b/c')
    await publish('x/b/c')
    assert.deepEqual([plus.length, exact], [3, ['a/b/c']])
    await exactSub.unsub()
    const before = emits
    await publish('a/b/c')
    assert.deepEqual([all.length, plus.length, exact.length, emits - before], [2, 3, 1, 0], 'all gone: nothing delivered, nothing emitted')
    await hash.sub()
    await publish('q')
    assert.deepEqual(all.slice(2), ['q'], 'a new subscription takes publishes again')
  } finally {
    await new Promise<void>((resolve) => broker.close(() => resolve()))
  }
})

test('bl (mqtt-packet\'s buffer list) is the version patches/ was written for, and its in-place reads give what a copy would', () => {
  const dir = path.join(repoRoot, 'node_modules', 'bl')
  const version = (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version
  const patches = fs.readdirSync(path.join(repoRoot, 'patches')).filter(f => f.startsWith('bl+'))
  assert.deepEqual(patches, [`bl+${version}.patch`], 'update or drop patches/bl+*.patch when bl changes')
  assert.match(fs.readFileSync(path.join(dir, 'BufferList.js'), 'utf8'), /gridgate patch/)
  interface BufferList {
    append (b: Buffer): void
    length: number
    slice (start?: number, end?: number): Buffer
    toString (encoding?: BufferEncoding, start?: number, end?: number): string
    [read: string]: unknown
  }
  const BL = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'))('bl').BufferList as new () => BufferList
  // Every read at every offset of a list cut into pieces of 1..9 bytes (so reads fall inside the
  // first piece, across pieces and past the end) gives what it gives on the joined bytes.
  let seed = 7
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n }
  const bytes = Buffer.from(Array.from({ length: 64 }, () => rand(256)))
  bytes.write('topic/ü/€', 20, 'utf8')
  const list = new BL()
  for (let at = 0; at < bytes.length;) {
    const n = 1 + rand(9)
    list.append(bytes.subarray(at, at + n))
    at += n
  }
  const outcome = (f: () => unknown): unknown => { try { return f() } catch (err) { return (err as Error).constructor.name } }
  const reads = ['readUInt8', 'readInt8', 'readUInt16BE', 'readUInt16LE', 'readInt16BE', 'readUInt32BE', 'readInt32LE', 'readFloatBE', 'readDoubleLE', 'readBigUInt64BE']
  for (let offset = 0; offset <= bytes.length; offset++) {
    for (const m of reads) {
      const want = outcome(() => (bytes as unknown as Record<string, (o: number) => unknown>)[m]!(offset))
      assert.deepEqual(outcome(() => (list[m] as (o: number) => unknown)(offset)), want, `${m}(${offset})`)
    }
    for (const end of [offset, offset + 1, offset + 3, offset + 11, bytes.length]) {
      if (end > bytes.length) continue
      assert.deepEqual(list.slice(offset, end), bytes.subarray(offset, end), `slice(${offset}, ${end})`)
      assert.equal(list.toString('utf8', offset, end), bytes.toString('utf8', offset, end), `toString(${offset}, ${end})`)
    }
  }
  assert.deepEqual(list.slice(), bytes)
  assert.equal(list.toString('hex'), bytes.toString('hex'))
})

test('the broker writes PUBACKs without mqtt-packet\'s 65,536-entry packet-identifier table (6.7 MiB of heap, a 100 ms pause at the first connection)', async (t) => {
  const numbers = createRequire(import.meta.url)('mqtt-packet/numbers.js') as { cache: Record<number, Buffer> }
  const { port, rx } = await setup(t)
  const c = await rawClient(t, port, 'numbers-1', 'sensor-1', TOKENS['sensor-1']!)
  c.send({ cmd: 'publish', topic: 'devices/sensor-1/telemetry', payload: Buffer.from('{"n":1}'), qos: 1, messageId: 4660 })
  const ack = await waitFor(() => c.packets.find(p => p.cmd === 'puback'), 'PUBACK') as mqttPacket.IPubackPacket
  assert.equal(ack.messageId, 4660)
  await waitFor(() => rx.events.length === 1, 'forwarded')
  assert.equal(mqttPacket.writeToStream.cacheNumbers, false)
  assert.equal(Object.keys(numbers.cache).length, 0, 'the identifier table was built')
})
