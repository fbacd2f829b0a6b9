// The ingest path against a real store (SQLite in a temp dir): a retransmission that arrives while
// its original's commit is still in progress waits for that commit and gets its outcome; a new
// message that reuses the key meanwhile is stored as itself. The store's commit is held before
// COMMIT (test fault switch) so that both cases really overlap an open commit.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { pino } from 'pino'
import { Store } from '../../store-forward/store.js'
import { Ingest, dedupKey, dedupScope, type IngestMessage, type IngestResult } from '../../gateway/ingest.js'
import { defaultDecoders } from '../../gateway/decoders/index.js'
import { Clock, IdGenerator } from '../../gateway/clock.js'
import { Metrics } from '../../gateway/metrics.js'
import { tempDir, waitFor } from '../helpers/util.js'

async function setup (t: import('node:test').TestContext): Promise<{ store: Store, ingest: Ingest, metrics: Metrics }> {
  const store = new Store({
    dataDir: tempDir(t), sync: 'full', dedupWindowMs: 120_000, commitDelayMs: 0, uplinks: ['a'],
    floorMs: () => Date.now(), now: () => Date.now(), log: pino({ level: 'silent' }), faults: true,
  })
  const info = await store.open()
  t.after(() => store.close().catch(() => {}))
  const clock = new Clock({ floorMs: info.floorMs })
  const metrics = new Metrics()
  const ingest = new Ingest({ gatewayId: 'gw-test', store, decoders: defaultDecoders(), clock, ids: new IdGenerator(clock), metrics })
  return { store, ingest, metrics }
}

const scope = dedupScope('mqtt', 'sensor-1')

function publish (payload: string, packetId: number, dup: boolean): IngestMessage {
  const bytes = Buffer.from(payload)
  return {
    deviceId: 'sensor-1', protocol: 'mqtt', topic: 'devices/sensor-1/telemetry', payload: bytes, canRefuse: true,
    dedupKey: dedupKey(scope, packetId), dedupPayload: bytes, dedupCheck: dup,
  }
}

/**
 * After an uncontended first commit, ingests `msg` with the next commit held before COMMIT (and made
 * to fail when `fail`), so that what is ingested meanwhile waits for the commit after it. Release
 * with store.fault('holdBeforeCommit', 0). Wrapped: a promise returned from here would be awaited.
 */
async function ingestHeld (store: Store, ingest: Ingest, msg: IngestMessage, fail = false): Promise<{ held: Promise<IngestResult> }> {
  await ingest.ingest(publish('{"warm":1}', 99, false))
  if (fail) store.fault('failCommits', 1)
  store.fault('holdBeforeCommit', 1)
  const held = ingest.ingest(msg)
  await waitFor(() => store.faultValue('holding') === 1, 'the commit is held')
  return { held }
}

test('a retransmission during its original\'s commit waits for it and gets its outcome; another payload under the key is a new event', async (t) => {
  const { store, ingest } = await setup(t)
  const { held: first } = await ingestHeld(store, ingest, publish('{"t":21.5}', 7, false))
  // Same packet id, same payload, DUP=1: the device missed nothing yet, but resends.
  const retry = ingest.ingest(publish('{"t":21.5}', 7, true))
  // Same packet id, another payload (a device that reuses the id without waiting): not a retransmission.
  const other = ingest.ingest(publish('{"t":30}', 7, true))
  store.fault('holdBeforeCommit', 0)
  const [a, b, c] = await Promise.all([first, retry, other])
  assert.equal(a.duplicate, false)
  assert.deepEqual(b, { ...a, duplicate: true }, 'the retransmission answers with the original event')
  assert.equal(c.duplicate, false)
  assert.notEqual(c.eventId, a.eventId)
  assert.equal((await store.stats()).events, 3)
  // After the commits a retransmission of either is found in the store by its stored fingerprint.
  assert.deepEqual(await ingest.ingest(publish('{"t":30}', 7, true)), { ...c, duplicate: true })
  assert.equal((await store.stats()).events, 3)
})

test('a retransmission queued in the same commit as its original is answered with the original', async (t) => {
  const { store, ingest } = await setup(t)
  // Hold a commit so that the original and its retransmission wait together for the next one.
  const { held } = await ingestHeld(store, ingest, publish('{"held":1}', 98, false))
  const first = ingest.ingest(publish('{"t":1}', 5, false))
  const retry = ingest.ingest(publish('{"t":1}', 5, true))
  store.fault('holdBeforeCommit', 0)
  const [, a, b] = await Promise.all([held, first, retry])
  assert.equal(a.duplicate, false)
  assert.deepEqual(b, { ...a, duplicate: true })
  assert.equal((await store.stats()).events, 3)
})

test('a retransmission whose original\'s commit failed is stored itself', async (t) => {
  const { store, ingest } = await setup(t)
  const { held: first } = await ingestHeld(store, ingest, publish('{"t":2}', 6, false), true)
  const retry = ingest.ingest(publish('{"t":2}', 6, true))
  store.fault('holdBeforeCommit', 0)
  await assert.rejects(first, (err: Error & { code?: string }) => err.code !== undefined)
  const r = await retry
  assert.equal(r.duplicate, false, 'nothing was stored under the key before the retransmission')
  assert.equal((await store.stats()).events, 2)
})
