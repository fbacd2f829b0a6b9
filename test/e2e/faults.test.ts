// Commit failure and writer death through the whole gateway (fault hooks, in-process).
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { tempDir, waitFor } from '../helpers/util.js'
import { startReceiver } from '../helpers/receiver.js'
import { baseConfig, startInProcess, TOKENS } from '../helpers/gateway.js'
import { connect } from '../helpers/mqtt.js'

/** An in-process gateway with the test fault hooks on, forwarding to a fresh receiver. */
async function faultyGateway (t: TestContext) {
  const rx = await startReceiver(t)
  const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }), { faults: true })
  return { rx, gw }
}

test('a failed commit sends no PUBACK, closes the MQTT 3.1.1 connection, stores nothing, and the next publish works', async (t) => {
  const { rx, gw } = await faultyGateway(t)
  const port = gw.mqttAddress!.port
  const c1 = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  gw.store.fault('failCommits', 1)
  let acked = false
  const closed = new Promise<void>((resolve) => c1.once('close', () => resolve()))
  c1.publish('devices/sensor-1/x', '{"n":"failed"}', { qos: 1 }, (err) => { if (err == null) acked = true })
  await closed
  assert.equal(acked, false)
  const c2 = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await c2.publishAsync('devices/sensor-1/x', '{"n":"ok"}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the second event delivered')
  await sleep(200)
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 'ok' }])
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  assert.match(metrics, /gridgate_ingress_total\{protocol="mqtt",outcome="failed"\} 1/)
  assert.match(metrics, /gridgate_store_commit_failures_total\{code="GG_ERR_STORE_FULL"\} 1/)
  assert.ok(Number(/gridgate_store_commits_total (\d+)/.exec(metrics)?.[1] ?? 0) >= 1, 'commits are counted')
})

test('when the writer dies, the in-flight publish is not acknowledged, /readyz turns 503 and service resumes', async (t) => {
  const { rx, gw } = await faultyGateway(t)
  const port = gw.mqttAddress!.port
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`
  assert.equal((await fetch(`${admin}/readyz`)).status, 200)
  const readiness: number[] = []
  gw.store.on('ready', (r) => readiness.push(r ? 200 : 503))
  const c1 = await connect(t, port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  gw.store.fault('killWriter', 1)
  // MQTT 5: the hook error comes back as a PUBACK with an error reason code, never as success.
  await assert.rejects(c1.publishAsync('devices/sensor-1/x', '{"n":"lost"}', { qos: 1 }), (err: Error & { code?: number }) => err.code === 0x80)
  assert.equal(readiness[0], 503, '/readyz turned 503 while the writer was down')
  await waitFor(async () => (await fetch(`${admin}/readyz`)).status === 200, '/readyz back to 200')
  await c1.publishAsync('devices/sensor-1/x', '{"n":"ok"}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the next event delivered')
  await sleep(200)
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 'ok' }])
})

test('on MQTT 5 a store that is full answers PUBACK 0x97 (quota exceeded) and stores nothing', async (t) => {
  const { rx, gw } = await faultyGateway(t)
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'], protocolVersion: 5 })
  gw.store.fault('failCommits', 1)
  await assert.rejects(c.publishAsync('devices/sensor-1/x', '{"n":"full"}', { qos: 1 }), (err: Error & { code?: number }) => err.code === 0x97)
  await c.publishAsync('devices/sensor-1/x', '{"n":"ok"}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the next event delivered')
  await sleep(100)
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 'ok' }])
})

test('when the reader thread dies, forwarding resumes with a new one', async (t) => {
  const { rx, gw } = await faultyGateway(t)
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await c.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  await waitFor(() => rx.events.length === 1, 'the first event delivered')
  await gw.store.killReader()
  await c.publishAsync('devices/sensor-1/x', '{"n":2}', { qos: 1 })
  await waitFor(() => rx.events.length === 2, 'the second event delivered through a new reader')
  assert.deepEqual(rx.events.map(e => e.data), [{ n: 1 }, { n: 2 }])
})

test('a commit the disk holds up shows in gridgate_store_commit_seconds before any acknowledgement does', async (t) => {
  const { rx, gw } = await faultyGateway(t)
  const c = await connect(t, gw.mqttAddress!.port, { username: 'sensor-1', password: TOKENS['sensor-1'] })
  await c.publishAsync('devices/sensor-1/x', '{"n":1}', { qos: 1 })
  gw.store.fault('holdBeforeCommit', 1)
  const held = c.publishAsync('devices/sensor-1/x', '{"n":2}', { qos: 1 })
  await waitFor(() => gw.store.faultValue('holding') === 1, 'the writer holds the commit')
  await sleep(300)
  gw.store.fault('holdBeforeCommit', 0)
  await held
  await waitFor(() => rx.events.length === 2, 'both delivered')
  const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text()
  const value = (series: string): number => Number(new RegExp(`^${series.replace(/[{}"+.]/g, '\\$&')} (\\S+)$`, 'm').exec(metrics)?.[1] ?? NaN)
  const commits = value('gridgate_store_commits_total')
  assert.ok(commits >= 2, `${commits} commits`)
  assert.equal(value('gridgate_store_commit_seconds_count'), commits, 'every commit is timed')
  // The held one took at least 300 ms: above the 0.25 s bucket, at most 1 s.
  assert.ok(value('gridgate_store_commit_seconds_count') - value('gridgate_store_commit_seconds_bucket{le="0.25"}') >= 1, 'the held commit is in a slow bucket')
  assert.ok(value('gridgate_store_commit_seconds_sum') >= 0.3)
})
