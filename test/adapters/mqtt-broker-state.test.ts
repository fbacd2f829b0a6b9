// MQTT broker state that is not events: retained messages kept in the store across restarts (and
// capped), capped offline queues, session expiry and the session limit.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type MqttClient, type IClientPublishOptions, type IPublishPacket, type IClientOptions } from 'mqtt'
import { tempDir, waitFor, hasCommand } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, spawnGateway, writeConfig, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import { decodeProperties, encodeProperties } from '../../adapters/mqtt/persistence.js'

const run = promisify(execFile)

const sensor = { username: 'sensor-1', password: TOKENS['sensor-1'] }
const controller = { username: 'controller', password: TOKENS.controller }

async function setup (t: TestContext, mqtt: Record<string, unknown> = {}) {
  const rx = await startReceiver(t)
  const dir = tempDir(t)
  const config = baseConfig(path.join(dir, 'data'), { cloud: rx.url }, { mqtt: { host: '127.0.0.1', port: 0, ...mqtt } })
  const gw = await startInProcess(t, config)
  return { rx, dir, config, gw, port: gw.mqttAddress!.port, admin: `http://127.0.0.1:${gw.adminAddress!.port}` }
}

function publish (client: MqttClient, topic: string, payload: string | Buffer, opts: IClientPublishOptions): Promise<void> {
  return new Promise((resolve, reject) => client.publish(topic, payload, opts, (err) => err ? reject(err) : resolve()))
}

/** Subscribes and collects what arrives (retained messages included) in arrival order. */
async function subscribe (client: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<IPublishPacket[]> {
  const got: IPublishPacket[] = []
  client.on('message', (_topic, _payload, packet) => got.push(packet))
  await new Promise<void>((resolve, reject) => client.subscribe(filter, { qos }, (err, granted) => {
    if (err) return reject(err)
    if (granted?.[0]?.qos === 128) return reject(new Error(`subscription to ${filter} refused`))
    resolve()
  }))
  return got
}

async function metric (admin: string, name: string): Promise<number> {
  const text = await (await fetch(`${admin}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(`${name} `))
  return line === undefined ? 0 : Number(line.split(' ').pop())
}

/**
 * A client with clean: false, its CONNACK's session-present flag and properties, and the messages
 * it receives (collected from before CONNACK: a resumed session's queue is sent right after it).
 */
async function connectSession (t: TestContext, port: number, opts: IClientOptions): Promise<{ client: MqttClient, sessionPresent: boolean, properties: Record<string, unknown> | undefined, got: string[] }> {
  const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, clean: false, ...opts })
  t.after(() => { client.end(true) })
  const got: string[] = []
  client.on('message', (_topic, payload) => got.push(payload.toString()))
  const connack = await new Promise<{ sessionPresent: boolean, properties?: Record<string, unknown> }>((resolve, reject) => {
    client.once('connect', (p) => resolve(p as unknown as { sessionPresent: boolean, properties?: Record<string, unknown> }))
    client.once('error', reject)
  })
  return { client, sessionPresent: connack.sessionPresent, properties: connack.properties, got }
}

function end (client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.end(false, {}, () => resolve()))
}

test('a retained message survives an in-process restart and reaches a new subscriber with the retain flag; it is still an event', async (t) => {
  const { rx, config, gw, port } = await setup(t)
  const dev = await connect(t, port, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/status', '{"online":true}', { qos: 1, retain: true })
  const dev5 = await connect(t, port, { ...sensor, clientId: 'dev5', protocolVersion: 5 })
  await publish(dev5, 'devices/sensor-1/config', '{"rate":5}', {
    qos: 1,
    retain: true,
    properties: { contentType: 'application/json', userProperties: { site: 'plant-7' }, correlationData: Buffer.from([1, 2, 3]), responseTopic: 'devices/sensor-1/reply' },
  })
  // Retained telemetry is still an event, forwarded like any other.
  await waitFor(() => rx.events.filter(e => e.subject === 'devices/sensor-1/status' || e.subject === 'devices/sensor-1/config').length === 2, 'both retained publishes forwarded as events')
  await end(dev)
  await end(dev5)
  await gw.stop()

  const gw2 = await startInProcess(t, config)
  const port2 = gw2.mqttAddress!.port
  const sub = await connect(t, port2, { ...controller, clientId: 'watcher', protocolVersion: 5 })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  await waitFor(() => got.length === 2, 'two retained messages after the restart')
  const status = got.find(p => p.topic === 'devices/sensor-1/status')!
  assert.equal(status.retain, true)
  assert.equal(status.payload.toString(), '{"online":true}')
  const cfg = got.find(p => p.topic === 'devices/sensor-1/config')!
  assert.equal(cfg.retain, true)
  assert.equal(cfg.payload.toString(), '{"rate":5}')
  // MQTT 5 properties are kept with the retained message, binary correlation data included.
  assert.equal(cfg.properties?.contentType, 'application/json')
  assert.deepEqual({ ...cfg.properties?.userProperties }, { site: 'plant-7' })
  assert.deepEqual(Buffer.from(cfg.properties?.correlationData ?? []), Buffer.from([1, 2, 3]))
  assert.equal(cfg.properties?.responseTopic, 'devices/sensor-1/reply')
  assert.equal(await metric(`http://127.0.0.1:${gw2.adminAddress!.port}`, 'gridgate_mqtt_retained_messages'), 2)
})

test('an empty retained payload deletes the retained message, across restarts too', async (t) => {
  const { config, gw, port } = await setup(t)
  const dev = await connect(t, port, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/gone', 'x', { qos: 1, retain: true })
  await publish(dev, 'devices/sensor-1/kept', 'k', { qos: 1, retain: true })
  await end(dev)
  await gw.stop()

  const gw2 = await startInProcess(t, config)
  const admin2 = `http://127.0.0.1:${gw2.adminAddress!.port}`
  assert.equal(await metric(admin2, 'gridgate_mqtt_retained_messages'), 2)
  const dev2 = await connect(t, gw2.mqttAddress!.port, { ...sensor, clientId: 'dev' })
  // [MQTT-3.3.1-10] a zero-byte retained message removes the topic's retained message.
  await publish(dev2, 'devices/sensor-1/gone', '', { qos: 1, retain: true })
  assert.equal(await metric(admin2, 'gridgate_mqtt_retained_messages'), 1)
  await end(dev2)
  await gw2.stop()

  const gw3 = await startInProcess(t, config)
  assert.equal(await metric(`http://127.0.0.1:${gw3.adminAddress!.port}`, 'gridgate_mqtt_retained_messages'), 1)
  const sub = await connect(t, gw3.mqttAddress!.port, { ...controller, clientId: 'watcher' })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  await waitFor(() => got.length >= 1, 'the kept retained message')
  // A live message after it: the retained messages of that SUBSCRIBE were all sent before.
  const dev3 = await connect(t, gw3.mqttAddress!.port, { ...sensor, clientId: 'dev' })
  await publish(dev3, 'devices/sensor-1/live', 'l', { qos: 1 })
  await waitFor(() => got.some(p => p.topic === 'devices/sensor-1/live'), 'the live message')
  assert.deepEqual(got.filter(p => p.retain).map(p => p.topic), ['devices/sensor-1/kept'])
  assert.ok(!got.some(p => p.topic === 'devices/sensor-1/gone'), 'the deleted retained message is not delivered')
})

test('mqtt.maxRetained: MQTT 5 gets 0x97 for a retained message on a new topic, MQTT 3.1.1 is delivered but not retained', async (t) => {
  const { port, admin, rx } = await setup(t, { maxRetained: 2 })
  const dev5 = await connect(t, port, { ...sensor, clientId: 'dev5', protocolVersion: 5 })
  await publish(dev5, 'devices/sensor-1/a', '1', { qos: 1, retain: true })
  await publish(dev5, 'devices/sensor-1/b', '2', { qos: 1, retain: true })
  await assert.rejects(publish(dev5, 'devices/sensor-1/c', '3', { qos: 1, retain: true }), (err: Error & { code?: number }) => {
    assert.equal(err.code, 0x97)
    return true
  })
  // Replacing a retained message never counts against the cap.
  await publish(dev5, 'devices/sensor-1/a', '1b', { qos: 1, retain: true })
  const eventsBefore = rx.events.length
  const dev = await connect(t, port, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/d', '4', { qos: 1, retain: true })
  // The 3.1.1 message is still an event; the refused MQTT 5 one is not.
  await waitFor(() => rx.events.some(e => e.subject === 'devices/sensor-1/d'), 'the 3.1.1 message forwarded')
  assert.ok(rx.events.length > eventsBefore)
  assert.ok(!rx.events.some(e => e.subject === 'devices/sensor-1/c'), 'a refused publish stores nothing')
  assert.equal(await metric(admin, 'gridgate_mqtt_retained_refused_total'), 2)
  assert.equal(await metric(admin, 'gridgate_mqtt_retained_messages'), 2)
  // Deleting one makes room for another.
  await publish(dev5, 'devices/sensor-1/b', '', { qos: 1, retain: true })
  await publish(dev5, 'devices/sensor-1/c', '3', { qos: 1, retain: true })
  const sub = await connect(t, port, { ...controller, clientId: 'watcher' })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  await waitFor(() => got.length === 2, 'two retained messages')
  assert.deepEqual(got.map(p => `${p.topic}=${p.payload.toString()}`).sort(), ['devices/sensor-1/a=1b', 'devices/sensor-1/c=3'])
})

test('retained commands are kept and delivered to the device that subscribes later, and are not events', async (t) => {
  const { config, gw, port, rx } = await setup(t)
  const ctl = await connect(t, port, { ...controller, clientId: 'ctl' })
  await publish(ctl, 'devices/sensor-1/commands/setpoint', '21.5', { qos: 1, retain: true })
  await end(ctl)
  await gw.stop()
  const gw2 = await startInProcess(t, config)
  const dev = await connect(t, gw2.mqttAddress!.port, { ...sensor, clientId: 'dev' })
  const got = await subscribe(dev, 'devices/sensor-1/commands/#')
  await waitFor(() => got.length === 1, 'the retained command')
  assert.equal(got[0]!.retain, true)
  assert.equal(got[0]!.payload.toString(), '21.5')
  assert.ok(!rx.events.some(e => String(e.subject).includes('/commands/')), 'commands are not events')
})

test('an offline queue keeps the newest mqtt.maxOfflineMessages messages and counts the dropped ones (3.1.1 and MQTT 5)', async (t) => {
  const { port, admin } = await setup(t, { maxOfflineMessages: 3 })
  const sessions: Array<[string, IClientOptions]> = [
    ['v3', { clientId: 'q3' }],
    ['v5', { clientId: 'q5', protocolVersion: 5, properties: { sessionExpiryInterval: 600 } }],
  ]
  for (const [, opts] of sessions) {
    const { client } = await connectSession(t, port, { ...controller, ...opts })
    await subscribe(client, 'devices/sensor-1/#')
    await end(client)
  }
  const dev = await connect(t, port, { ...sensor, clientId: 'dev' })
  for (let i = 0; i < 5; i++) await publish(dev, 'devices/sensor-1/seq', `m${i}`, { qos: 1 })
  assert.equal(await metric(admin, 'gridgate_mqtt_queued_messages'), 6)
  assert.equal(await metric(admin, 'gridgate_mqtt_offline_dropped_total'), 4)
  for (const [name, opts] of sessions) {
    const { client, sessionPresent, got } = await connectSession(t, port, { ...controller, ...opts })
    assert.equal(sessionPresent, true, `${name}: session present`)
    await waitFor(() => got.length >= 3, `${name}: the queued messages`)
    assert.deepEqual(got, ['m2', 'm3', 'm4'], `${name}: the oldest two were dropped`)
    await end(client)
  }
})

test('offline queues take publishes as persistent sessions come and go (the topic match is skipped only while none has a subscription)', async (t) => {
  const { port, admin } = await setup(t)
  const queued = (): Promise<number> => metric(admin, 'gridgate_mqtt_queued_messages')
  const dev = await connect(t, port, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/seq', 'before', { qos: 1 })
  assert.equal(await queued(), 0, 'no session: nothing queued')

  const a = await connectSession(t, port, { ...controller, clientId: 'qa' })
  await subscribe(a.client, 'devices/sensor-1/#')
  await end(a.client)
  await publish(dev, 'devices/sensor-1/seq', 'a1', { qos: 1 })
  await publish(dev, 'devices/sensor-1/other', 'a2', { qos: 1 })
  assert.equal(await queued(), 2, 'the first persistent session queues both')
  const a2 = await connectSession(t, port, { ...controller, clientId: 'qa' })
  await waitFor(() => a2.got.length >= 2, 'the queued messages')
  assert.deepEqual(a2.got, ['a1', 'a2'])
  // The session unsubscribes: nothing more is queued for it.
  await new Promise<void>((resolve, reject) => a2.client.unsubscribe('devices/sensor-1/#', (err) => err ? reject(err) : resolve()))
  await end(a2.client)
  await publish(dev, 'devices/sensor-1/seq', 'after-unsubscribe', { qos: 1 })
  assert.equal(await queued(), 0)

  // A clean connection ends the session: no session is left, and a new one queues again.
  const clean = await connectSession(t, port, { ...controller, clientId: 'qa', clean: true })
  await end(clean.client)
  await publish(dev, 'devices/sensor-1/seq', 'no-session', { qos: 1 })
  assert.equal(await queued(), 0)
  const b = await connectSession(t, port, { ...controller, clientId: 'qb', protocolVersion: 5, properties: { sessionExpiryInterval: 600 } })
  await subscribe(b.client, 'devices/sensor-1/seq')
  await end(b.client)
  await publish(dev, 'devices/sensor-1/seq', 'b1', { qos: 1 })
  await publish(dev, 'devices/sensor-1/other', 'not-for-b', { qos: 1 })
  assert.equal(await queued(), 1)
  const b2 = await connectSession(t, port, { ...controller, clientId: 'qb', protocolVersion: 5, properties: { sessionExpiryInterval: 600 } })
  await waitFor(() => b2.got.length >= 1, 'b\'s queued message')
  await sleep(100)
  assert.deepEqual(b2.got, ['b1'])
})

test('a persistent session ends after mqtt.sessionExpiry: 3.1.1 and MQTT 5 (which may not ask for more)', async (t) => {
  const { port, admin } = await setup(t, { sessionExpiry: '1s' })
  const v5 = await connectSession(t, port, { ...controller, clientId: 'e5', protocolVersion: 5, properties: { sessionExpiryInterval: 3600 } })
  // The broker applied less than asked, so CONNACK says what it applied [MQTT-3.2.2-3.2].
  assert.equal(v5.properties?.sessionExpiryInterval, 1)
  await subscribe(v5.client, 'devices/sensor-1/#')
  const v3 = await connectSession(t, port, { ...controller, clientId: 'e3' })
  await subscribe(v3.client, 'devices/sensor-1/#')
  await end(v5.client)
  await end(v3.client)
  await waitFor(async () => await metric(admin, 'gridgate_mqtt_sessions_ended_total{reason="expired"}') === 2, 'both sessions expired')
  assert.equal(await metric(admin, 'gridgate_mqtt_offline_sessions'), 0)
  const again3 = await connectSession(t, port, { ...controller, clientId: 'e3' })
  assert.equal(again3.sessionPresent, false)
  const again5 = await connectSession(t, port, { ...controller, clientId: 'e5', protocolVersion: 5, properties: { sessionExpiryInterval: 60 } })
  assert.equal(again5.sessionPresent, false)
})

test('a persistent session that disconnects beyond mqtt.maxSessions ends at once', async (t) => {
  const { port, admin } = await setup(t, { maxSessions: 1 })
  for (const id of ['s1', 's2']) {
    const { client } = await connectSession(t, port, { ...controller, clientId: id })
    await subscribe(client, 'devices/sensor-1/#')
    await end(client)
  }
  await waitFor(async () => await metric(admin, 'gridgate_mqtt_sessions_ended_total{reason="limit"}') === 1, 'the second session ended')
  assert.equal(await metric(admin, 'gridgate_mqtt_offline_sessions'), 1)
  assert.equal((await connectSession(t, port, { ...controller, clientId: 's1' })).sessionPresent, true)
  assert.equal((await connectSession(t, port, { ...controller, clientId: 's2' })).sessionPresent, false)
})

test('after a restart sessions are gone: CONNACK says session-present 0', async (t) => {
  const { config, gw, port } = await setup(t)
  const { client } = await connectSession(t, port, { ...controller, clientId: 'p1' })
  await subscribe(client, 'devices/sensor-1/#')
  await end(client)
  assert.equal((await connectSession(t, port, { ...controller, clientId: 'p1' })).sessionPresent, true)
  await gw.stop()
  const gw2 = await startInProcess(t, config)
  assert.equal((await connectSession(t, gw2.mqttAddress!.port, { ...controller, clientId: 'p1' })).sessionPresent, false)
})

test('an acked retained message survives kill -9 of the gateway process', async (t) => {
  const rx = await startReceiver(t)
  const dir = tempDir(t)
  const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), { cloud: rx.url }))
  const gw = await spawnGateway(t, file)
  const dev = await connect(t, gw.mqttPort, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/state', 'on', { qos: 1, retain: true })
  gw.child.kill('SIGKILL')
  await gw.exited
  const gw2 = await spawnGateway(t, file)
  const sub = await connect(t, gw2.mqttPort, { ...controller, clientId: 'watcher' })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  await waitFor(() => got.length === 1, 'the retained message after kill -9')
  assert.equal(got[0]!.retain, true)
  assert.equal(got[0]!.payload.toString(), 'on')
  gw2.child.kill('SIGTERM')
  await gw2.exited
})

test('mosquitto_pub -r and mosquitto_sub -c: a retained message across a restart', async (t) => {
  if (!hasCommand('mosquitto_pub') || !hasCommand('mosquitto_sub')) {
    t.skip('mosquitto_pub/mosquitto_sub are not installed (apt-get install mosquitto-clients)')
    return
  }
  const { config, gw, port } = await setup(t)
  await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '-u', 'sensor-1', '-P', TOKENS['sensor-1'], '-q', '1', '-r', '-t', 'devices/sensor-1/fw', '-m', 'v1.2.3'])
  await gw.stop()
  const gw2 = await startInProcess(t, config)
  const { stdout } = await run('mosquitto_sub', [
    '-h', '127.0.0.1', '-p', String(gw2.mqttAddress!.port), '-u', 'controller', '-P', TOKENS.controller,
    '-c', '-i', 'fw-watcher', '-q', '1', '-t', 'devices/sensor-1/#', '-C', '1', '-W', '10', '-F', '%r %t %p',
  ])
  assert.equal(stdout.trim(), '1 devices/sensor-1/fw v1.2.3')
})

test('MQTT 5 properties round-trip through their stored JSON form', () => {
  const json = encodeProperties({ contentType: 'text/plain', correlationData: Buffer.from('abc'), topicAlias: 3, userProperties: { a: ['1', '2'] }, messageExpiryInterval: 60 })
  assert.ok(json !== null && !json.includes('topicAlias'), 'the connection-scoped topic alias is not kept')
  const back = decodeProperties(json)!
  assert.deepEqual(back.correlationData, Buffer.from('abc'))
  assert.deepEqual(back.userProperties, { a: ['1', '2'] })
  assert.equal(back.messageExpiryInterval, 60)
  assert.equal(encodeProperties(undefined), null)
  assert.equal(encodeProperties({ topicAlias: 1 }), null)
})

test('a retained message whose MQTT 5 Message Expiry passed is not delivered and is deleted from the store', async (t) => {
  const { config, gw, port } = await setup(t)
  const dev5 = await connect(t, port, { ...sensor, clientId: 'dev5', protocolVersion: 5 })
  const at = Date.now()
  await publish(dev5, 'devices/sensor-1/short', 's', { qos: 1, retain: true, properties: { messageExpiryInterval: 1 } })
  await publish(dev5, 'devices/sensor-1/long', 'l', { qos: 1, retain: true })
  await end(dev5)
  await gw.stop()
  // The expiry counts from when the message was retained, across the restart.
  await waitFor(() => Date.now() > at + 1100, 'the message expiry to pass')
  const gw2 = await startInProcess(t, config)
  const admin2 = `http://127.0.0.1:${gw2.adminAddress!.port}`
  assert.equal(await metric(admin2, 'gridgate_mqtt_retained_messages'), 2)
  const sub = await connect(t, gw2.mqttAddress!.port, { ...controller, clientId: 'watcher' })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  const dev = await connect(t, gw2.mqttAddress!.port, { ...sensor, clientId: 'dev' })
  await publish(dev, 'devices/sensor-1/live', 'x', { qos: 1 })
  await waitFor(() => got.some(p => p.topic === 'devices/sensor-1/live'), 'the live message')
  assert.deepEqual(got.filter(p => p.retain).map(p => p.topic), ['devices/sensor-1/long'])
  // aedes deletes the expired message when it meets it; the deletion reaches the store too.
  await waitFor(async () => await metric(admin2, 'gridgate_mqtt_retained_messages') === 1, 'the expired message deleted')
  await gw2.stop()
  const gw3 = await startInProcess(t, config)
  assert.equal(await metric(`http://127.0.0.1:${gw3.adminAddress!.port}`, 'gridgate_mqtt_retained_messages'), 1)
})

test('the same retained message published again costs no extra commit; a changed one does', async (t) => {
  // No uplinks: every commit comes from these publishes.
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}))
  const dev = await connect(t, gw.mqttAddress!.port, { ...sensor, clientId: 'dev' })
  const commits = async (fn: () => Promise<void>): Promise<number> => {
    const before = gw.store.commits
    await fn()
    return gw.store.commits - before
  }
  assert.equal(await commits(() => publish(dev, 'devices/sensor-1/state', 'on', { qos: 1, retain: true })), 2, 'the event, then the retained message')
  assert.equal(await commits(() => publish(dev, 'devices/sensor-1/state', 'on', { qos: 1, retain: true })), 1, 'the event only')
  assert.equal(await commits(() => publish(dev, 'devices/sensor-1/state', 'off', { qos: 1, retain: true })), 2)
  assert.equal(await commits(() => publish(dev, 'devices/sensor-1/state', '', { qos: 1, retain: true })), 2)
  assert.equal(await commits(() => publish(dev, 'devices/sensor-1/state', '', { qos: 1, retain: true })), 1, 'nothing left to delete')
  const sub = await connect(t, gw.mqttAddress!.port, { ...controller, clientId: 'watcher' })
  const got = await subscribe(sub, 'devices/sensor-1/#')
  await publish(dev, 'devices/sensor-1/state', 'again', { qos: 1, retain: true })
  await waitFor(() => got.length === 1, 'the live message')
  assert.equal(got[0]!.payload.toString(), 'again')
})
