// MQTT over WebSocket (ws:// and wss://), MQTT over TLS (passwords and client certificates),
// https:// ingest, and third-party clients (MQTT.js, mosquitto) against them.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import https from 'node:https'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { once } from 'node:events'
import mqtt, { type MqttClient, type IClientOptions } from 'mqtt'
import { hasCommand, tempDir, waitFor } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, writeConfig, TOKENS } from '../helpers/gateway.js'
import { connect as connectTcp } from '../helpers/mqtt.js'
import { makeCerts, type Certs } from '../helpers/certs.js'
import { loadConfig } from '../../config/load.js'

const run = promisify(execFile)
const MOSQUITTO = hasCommand('mosquitto_pub') && hasCommand('mosquitto_sub') ? false : 'mosquitto_pub/mosquitto_sub are not installed'

function portOf (listeners: Record<string, string>, name: string): number {
  const v = listeners[name]
  assert.ok(v !== undefined, `no ${name} listener in ${JSON.stringify(listeners)}`)
  return Number(v.split(':').pop())
}

async function connectUrl (t: TestContext, url: string, opts: IClientOptions): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts })
  t.after(() => { client.end(true) })
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve())
    client.once('error', reject)
    client.once('close', () => reject(new Error('connection closed before CONNACK')))
  })
  return client
}

function refusedUrl (url: string, opts: IClientOptions): Promise<string> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts })
  return new Promise((resolve, reject) => {
    client.once('connect', () => { client.end(true); reject(new Error('connection was accepted')) })
    client.once('error', (err: Error & { code?: number | string }) => { client.end(true); resolve(String(err.code ?? err.message)) })
    client.once('close', () => { client.end(true); resolve('closed') })
  })
}

function nextMessage (client: MqttClient): Promise<{ topic: string, payload: string }> {
  return new Promise((resolve) => client.once('message', (topic, payload) => resolve({ topic, payload: payload.toString() })))
}

async function tlsGateway (t: TestContext, certs: Certs, mqttTls: Record<string, unknown> = {}) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, {
    mqtt: { host: '127.0.0.1', port: 0, tls: { port: 0, cert: certs.serverCert, key: certs.serverKey, ca: certs.ca, ...mqttTls } },
    websocket: { host: '127.0.0.1', port: 0, tls: { cert: certs.serverCert, key: certs.serverKey } },
  }))
  return { rx, gw, mqtts: portOf(gw.listeners(), 'mqtts'), web: portOf(gw.listeners(), 'websocket'), tcp: portOf(gw.listeners(), 'mqtt') }
}

test('MQTT over ws:// shares the broker with TCP: messages cross both ways and events are stored', async (t) => {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }))
  const tcp = portOf(gw.listeners(), 'mqtt')
  const ws = `ws://127.0.0.1:${portOf(gw.listeners(), 'websocket')}/mqtt`

  const wsController = await connectUrl(t, ws, { username: 'controller', password: TOKENS.controller })
  await wsController.subscribeAsync('devices/#', { qos: 1 })
  const tcpSensor = await connectTcp(t, tcp, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const got = nextMessage(wsController)
  await tcpSensor.publishAsync('devices/sensor-1/temp', '{"c":20}', { qos: 1 })
  assert.deepEqual(await got, { topic: 'devices/sensor-1/temp', payload: '{"c":20}' })

  await tcpSensor.subscribeAsync('devices/sensor-1/commands/#', { qos: 1 })
  const command = nextMessage(tcpSensor)
  await wsController.publishAsync('devices/sensor-1/commands/reboot', '{}', { qos: 1 })
  assert.equal((await command).topic, 'devices/sensor-1/commands/reboot')

  const wsSensor = await connectUrl(t, ws, { username: 'sensor-2', password: TOKENS['sensor-2'], protocolVersion: 5 })
  const fromWs = nextMessage(wsController)
  await wsSensor.publishAsync('devices/sensor-2/hum', '{"h":40}', { qos: 1 })
  assert.equal((await fromWs).topic, 'devices/sensor-2/hum')
  await waitFor(() => rx.events.length === 2, 'both telemetry events forwarded')
  assert.deepEqual(rx.events.map(e => [e.subject, e.deviceid]), [['devices/sensor-1/temp', 'sensor-1'], ['devices/sensor-2/hum', 'sensor-2']])

  assert.match(await refusedUrl(ws, { username: 'sensor-1', password: 'wrong-secret' }), /^(4|5|134|135)$|Not authorized|Bad User/i)
})

test('a gateway stop closes MQTT-over-WebSocket connections', async (t) => {
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}))
  const client = await connectUrl(t, `ws://127.0.0.1:${portOf(gw.listeners(), 'websocket')}/mqtt`, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
  await gw.stop()
  await closed
  assert.equal(client.connected, false)
})

test('wss://, mqtts:// and https:// with a throwaway CA; a client certificate names its device', async (t) => {
  const certs = makeCerts(t, ['sensor-1'])
  const { rx, mqtts, web } = await tlsGateway(t, certs)
  const ca = certs.read(certs.ca)

  const wss = await connectUrl(t, `wss://127.0.0.1:${web}/mqtt`, { username: 'controller', password: TOKENS.controller, ca, rejectUnauthorized: true })
  await wss.subscribeAsync('devices/#', { qos: 1 })
  const overTls = await connectUrl(t, `mqtts://127.0.0.1:${mqtts}`, { username: 'sensor-2', password: TOKENS['sensor-2'], ca, rejectUnauthorized: true })
  const got = nextMessage(wss)
  await overTls.publishAsync('devices/sensor-2/x', '{"via":"mqtts"}', { qos: 1 })
  assert.deepEqual(await got, { topic: 'devices/sensor-2/x', payload: '{"via":"mqtts"}' })

  // No user name, no password: the certificate's CN is the device.
  const byCert = await connectUrl(t, `mqtts://127.0.0.1:${mqtts}`, { ca, cert: certs.read(certs.clients['sensor-1']!.cert), key: certs.read(certs.clients['sensor-1']!.key), rejectUnauthorized: true })
  await byCert.publishAsync('devices/sensor-1/x', '{"via":"cert"}', { qos: 1 })
  // The certificate names sensor-1; claiming sensor-2 is refused even with sensor-2's password.
  const claim = await refusedUrl(`mqtts://127.0.0.1:${mqtts}`, { username: 'sensor-2', password: TOKENS['sensor-2'], ca, cert: certs.read(certs.clients['sensor-1']!.cert), key: certs.read(certs.clients['sensor-1']!.key) })
  assert.equal(claim, '5', 'refused with CONNACK return code 5 (not authorized)')

  const status = await new Promise<number>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: web, method: 'POST', path: '/v1/devices/sensor-1/events/x', ca, headers: { authorization: `Bearer sensor-1:${TOKENS['sensor-1']}`, 'content-type': 'application/json' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', reject)
    req.end('{"via":"https"}')
  })
  assert.equal(status, 202)

  await waitFor(() => rx.events.length === 3, 'three events forwarded')
  assert.deepEqual(rx.events.map(e => [e.deviceid, e.data]), [['sensor-2', { via: 'mqtts' }], ['sensor-1', { via: 'cert' }], ['sensor-1', { via: 'https' }]])
})

test('with requireClientCert a TLS client without a certificate cannot connect', async (t) => {
  const certs = makeCerts(t, ['sensor-1'])
  const { mqtts } = await tlsGateway(t, certs, { requireClientCert: true })
  const ca = certs.read(certs.ca)
  const outcome = await refusedUrl(`mqtts://127.0.0.1:${mqtts}`, { username: 'sensor-1', password: TOKENS['sensor-1'], ca })
  assert.doesNotMatch(outcome, /^[0-9]+$/, `refused in the TLS handshake, before any CONNACK (${outcome})`)
  await connectUrl(t, `mqtts://127.0.0.1:${mqtts}`, { ca, cert: certs.read(certs.clients['sensor-1']!.cert), key: certs.read(certs.clients['sensor-1']!.key) })
})

test('mosquitto_pub and mosquitto_sub over TLS with --cafile, and with a client certificate', { skip: MOSQUITTO }, async (t) => {
  const certs = makeCerts(t, ['sensor-1'])
  const { rx, mqtts } = await tlsGateway(t, certs)
  const common = ['-h', '127.0.0.1', '-p', String(mqtts), '--cafile', certs.ca]
  const sub = execFile('mosquitto_sub', [...common, '-u', 'controller', '-P', TOKENS.controller, '-t', 'devices/#', '-C', '1', '-W', '20', '-q', '1', '-i', 'sub-1'])
  t.after(() => sub.kill())
  let out = ''
  sub.stdout!.on('data', (c: Buffer) => { out += c.toString() })
  const exited = once(sub, 'exit')
  // mosquitto_sub gives no ready signal: publish until it has seen one message.
  for (let i = 0; i < 50 && out === ''; i++) {
    await run('mosquitto_pub', [...common, '-u', 'sensor-1', '-P', TOKENS['sensor-1'], '-t', 'devices/sensor-1/tls', '-m', `{"n":${i}}`, '-q', '1'])
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await exited
  assert.match(out, /^\{"n":\d+\}/)
  await run('mosquitto_pub', [...common, '--cert', certs.clients['sensor-1']!.cert, '--key', certs.clients['sensor-1']!.key, '-t', 'devices/sensor-1/cert', '-m', '{"cert":true}', '-q', '1'])
  await waitFor(() => rx.events.some(e => e.subject === 'devices/sensor-1/cert'), 'the certificate-authenticated event forwarded')
})

test('certificate paths are relative to the config file directory', (t) => {
  const dir = tempDir(t)
  const file = writeConfig(dir, {
    mqtt: { tls: { cert: 'tls/server.pem', key: 'tls/server.key', ca: 'tls/ca.pem' } },
    websocket: { tls: { cert: 'tls/server.pem', key: '/abs/server.key' } },
  })
  const c = loadConfig({ path: file, env: {} })
  assert.deepEqual(c.mqtt.tls, { port: 8883, cert: path.join(dir, 'tls/server.pem'), key: path.join(dir, 'tls/server.key'), ca: path.join(dir, 'tls/ca.pem'), requireClientCert: false })
  assert.deepEqual(c.websocket.tls, { cert: path.join(dir, 'tls/server.pem'), key: '/abs/server.key' })
  const noCa = writeConfig(dir, { mqtt: { tls: { cert: 'a.pem', key: 'a.key', requireClientCert: true } } }, 'no-ca.yaml')
  assert.throws(() => loadConfig({ path: noCa, env: {} }), (err: Error & { details?: string[] }) => err.details?.some(d => /mqtt\.tls\.requireClientCert: requireClientCert needs ca/.test(d)) === true)
})

test('a certificate file that cannot be read stops the start with GG_ERR_CONFIG_INVALID', async (t) => {
  const dir = tempDir(t)
  const config = baseConfig(path.join(dir, 'data'), {}, { websocket: { host: '127.0.0.1', port: 0, tls: { cert: 'missing.pem', key: 'missing.key' } } })
  await assert.rejects(startInProcess(t, config), (err: Error & { code?: string }) => err.code === 'GG_ERR_CONFIG_INVALID' && /websocket\.tls\.cert/.test(err.message))
})
