// Several endpoints per uplink (failover, round-robin), circuit breakers seen through the admin API
// and /metrics, Retry-After through the endpoint layer, and the HTTP extras (gzip, bearer token,
// custom headers, mutual TLS), each against real receivers with the gateway in-process.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import path from 'node:path'
import type { AddressInfo } from 'node:net'
import { tempDir, waitFor, hasCommand } from '../helpers/util.js'
import { startReceiver, type Receiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'
import { makeCerts } from '../helpers/certs.js'
import type { Gateway } from '../../gateway/gateway.js'

function httpUplink (extra: Record<string, unknown>): Record<string, unknown> {
  return { name: 'cloud', type: 'http', batchMaxDelay: '5ms', timeout: '2s', retry: { initialDelay: '10ms', maxDelay: '200ms' }, ...extra }
}

async function closedPort (): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

interface EndpointState { endpoint: string, breaker: string, consecutiveFailures: number }

async function endpoints (gw: Gateway): Promise<EndpointState[]> {
  const res = await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/api/v1/uplinks`)
  return ((await res.json()) as { uplinks: Array<{ endpoints: EndpointState[] }> }).uplinks[0]!.endpoints
}

async function breakerMetric (gw: Gateway, endpoint: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(`gridgate_uplink_breaker_state{uplink="cloud",endpoint="${endpoint}"}`))
  return line === undefined ? undefined : Number(line.split(' ').pop())
}

const counters = (rx: Receiver): number[] => rx.events.map(e => (e.data as { n: number }).n)

test('failover: the second endpoint takes over while the first is down, and the first is probed back in', async (t) => {
  const primary = await startReceiver(t)
  const secondary = await startReceiver(t)
  primary.respond = () => ({ status: 503 })
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ endpoints: [primary.url, secondary.url], selection: 'failover', breaker: { failures: 2, halfOpenAfter: '300ms' } })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 3; n++) {
    await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
    await waitFor(() => secondary.events.length === n + 1, `event ${n} at the secondary`)
  }
  assert.deepEqual(counters(secondary), [0, 1, 2])
  const [p] = await endpoints(gw)
  assert.equal(p!.endpoint, primary.url)
  assert.equal(p!.breaker, 'open', 'the failing primary was ejected')
  assert.equal(await breakerMetric(gw, primary.url), 1)
  assert.equal(await breakerMetric(gw, secondary.url), 0)
  // Two failures opened it; while open it gets no batches.
  assert.equal(primary.requests.length, 2)

  primary.respond = () => ({ status: 200 })
  await new Promise(resolve => setTimeout(resolve, 350))
  await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n: 3 }), { qos: 1 })
  await waitFor(() => primary.events.length === 1, 'the probe batch at the recovered primary')
  assert.deepEqual(counters(primary), [3])
  assert.equal((await endpoints(gw))[0]!.breaker, 'closed')
  assert.equal(await breakerMetric(gw, primary.url), 0)
})

test('failover to a second endpoint when the first refuses connections', async (t) => {
  const secondary = await startReceiver(t)
  const dead = `http://127.0.0.1:${await closedPort()}/events`
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ endpoints: [dead, secondary.url] })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 10; n++) await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
  await waitFor(() => secondary.events.length >= 10, 'every event at the secondary')
  assert.deepEqual(counters(secondary), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  const [d] = await endpoints(gw)
  assert.ok(d!.consecutiveFailures >= 1, 'the dead endpoint was tried')
})

test('round-robin spreads batches over both endpoints, one at a time and in order', async (t) => {
  const a = await startReceiver(t)
  const b = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ endpoints: [a.url, b.url], selection: 'round-robin' })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  for (let n = 0; n < 6; n++) {
    await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
    await waitFor(() => a.events.length + b.events.length === n + 1, `event ${n} delivered`)
  }
  assert.deepEqual(counters(a), [0, 2, 4])
  assert.deepEqual(counters(b), [1, 3, 5])
})

test('the breaker opens after consecutive failures, shows in the API and metrics, and closes after a good probe', async (t) => {
  const rx = await startReceiver(t)
  rx.respond = () => ({ status: 500 })
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ url: rx.url, breaker: { failures: 3, halfOpenAfter: '400ms' } })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"n":0}', { qos: 1 })
  await waitFor(async () => (await endpoints(gw))[0]!.breaker === 'open', 'the breaker open')
  assert.equal(await breakerMetric(gw, rx.url), 1)
  const failedRequests = rx.requests.length
  assert.ok(failedRequests >= 3, `${failedRequests} failed requests opened it`)
  rx.respond = () => ({ status: 200 })
  await waitFor(() => rx.events.length === 1, 'the event delivered by the probe')
  assert.equal((await endpoints(gw))[0]!.breaker, 'closed')
  assert.equal(await breakerMetric(gw, rx.url), 0)
})

test('a 429 with Retry-After is waited out through the endpoint layer, even with a second (dead) endpoint', async (t) => {
  const a = await startReceiver(t)
  const answered: number[] = []
  a.respond = () => {
    answered.push(Date.now())
    return answered.length === 1 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 }
  }
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ endpoints: [a.url, `http://127.0.0.1:${await closedPort()}/events`] })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  await waitFor(() => a.events.length === 1, 'delivered after the 429')
  // retry.maxDelay is 200 ms; only Retry-After explains a wait of about a second.
  assert.ok(answered[1]! - answered[0]! >= 900, `waited ${answered[1]! - answered[0]!} ms`)
})

test('gzip bodies arrive decodable with Content-Encoding gzip, with the bearer token and custom headers', async (t) => {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ url: rx.url, gzip: true, bearerToken: 'cloud-secret-1', headers: { 'X-Tenant': 'plant-7', 'X-Api-Version': '2' }, batchMaxDelay: '200ms' })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await Promise.all(Array.from({ length: 20 }, (_, n) => client.publishAsync('devices/sensor-1/x', JSON.stringify({ n, pad: 'x'.repeat(50) }), { qos: 1 })))
  await waitFor(() => rx.events.length === 20, 'twenty events')
  assert.deepEqual(counters(rx).sort((x, y) => x - y), Array.from({ length: 20 }, (_, n) => n))
  const req = rx.requests[0]!
  assert.equal(req.headers['content-encoding'], 'gzip')
  assert.equal(req.headers['content-type'], 'application/cloudevents-batch+json')
  assert.equal(req.headers.authorization, 'Bearer cloud-secret-1')
  assert.equal(req.headers['x-tenant'], 'plant-7')
  assert.equal(req.headers['x-api-version'], '2')
  assert.match(String(req.headers['idempotency-key']), new RegExp(`^${gw.store.info.storeId}:\\d+-\\d+$`))
})

test('the HTTP uplink speaks mutual TLS with a private CA', { skip: hasCommand('openssl') ? false : 'openssl is not installed' }, async (t) => {
  const certs = makeCerts(t)
  const received: Array<{ authorized: boolean, cn: string, body: unknown[] }> = []
  const server = https.createServer({ cert: certs.pem.serverCert, key: certs.pem.serverKey, ca: certs.pem.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const socket = req.socket as import('node:tls').TLSSocket
      received.push({ authorized: socket.authorized, cn: String(socket.getPeerCertificate().subject?.CN), body: JSON.parse(Buffer.concat(chunks).toString()) as unknown[] })
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => { server.closeAllConnections(); server.close() })
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/events`
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ url, tls: { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey } })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await client.publishAsync('devices/sensor-1/x', '{"mtls":1}', { qos: 1 })
  await waitFor(() => received.length === 1, 'the batch over mutual TLS')
  assert.equal(received[0]!.authorized, true)
  assert.equal(received[0]!.cn, 'gw-test')
  assert.equal((received[0]!.body[0] as { data: unknown }).data !== undefined, true)
})

test('a backlog drains over two round-robin endpoints in order, in pages, never two requests at once', async (t) => {
  let up = false
  let inFlight = 0
  let maxInFlight = 0
  const arrivals: Array<{ server: number, seqs: number[] }> = []
  const servers = await Promise.all([0, 1].map(async (index) => {
    const server = http.createServer((req, res) => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        setTimeout(() => {
          inFlight--
          if (!up) { res.writeHead(503).end(); return }
          const events = JSON.parse(Buffer.concat(chunks).toString()) as Array<{ sequence: string }>
          arrivals.push({ server: index, seqs: events.map(e => Number(e.sequence)) })
          res.writeHead(200).end()
        }, 5)
      })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.after(() => { server.closeAllConnections(); server.close() })
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`
  }))
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), {}, {
    uplinks: [httpUplink({ endpoints: servers, selection: 'round-robin', batchMaxEvents: 50, retry: { initialDelay: '10ms', maxDelay: '100ms' } })],
  }))
  const client = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await Promise.all(Array.from({ length: 600 }, (_, n) => client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })))
  assert.equal(gw.store.uplinks.get('cloud')?.backlogEvents, 600)
  up = true
  // Live traffic while the backlog drains.
  for (let n = 600; n < 650; n++) await client.publishAsync('devices/sensor-1/x', JSON.stringify({ n }), { qos: 1 })
  await waitFor(() => arrivals.reduce((s, a) => s + a.seqs.length, 0) >= 650, 'backlog and live traffic delivered', 30_000)
  const seqs = arrivals.flatMap(a => a.seqs)
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'sequence order across both endpoints')
  assert.equal(new Set(seqs).size, 650)
  assert.equal(maxInFlight, 1, 'one request in flight per uplink')
  assert.ok(arrivals.every(a => a.seqs.length <= 50), 'pages of at most batchMaxEvents')
  assert.ok(arrivals.some(a => a.server === 0) && arrivals.some(a => a.server === 1), 'both endpoints took batches')
})
