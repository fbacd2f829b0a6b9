// One suite of ack semantics, run against every device protocol (DESIGN.md promise 1 and 5).
// A protocol joins by giving a driver: how to enable it in the config and how a device sends one
// event and learns the outcome. The suite then proves, through the real gateway:
//   acked ⇒ committed (no ack while the commit is held; kill -9 during the hold leaves no trace;
//   kill -9 right after the ack loses nothing); a bad payload, a wrong credential and a topic outside
//   the device's namespace are refused and store nothing; a retransmission becomes one event.
// "Nothing stored" is checked with a marker event sent afterwards: forwarding keeps ingest order, so
// once the marker reached the receiver anything stored before it would have too.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { tempDir, waitFor } from './util.js'
import { startReceiver, type Receiver } from './receiver.js'
import { baseConfig, spawnGateway, startInProcess, writeConfig, TOKENS, type GatewayProcess } from './gateway.js'

export interface SendRequest {
  device: string
  token: string
  topic: string
  payload: Buffer
  /** The payload's declared type, in the protocol's own way (MQTT 5 property, Content-Format, header…). */
  contentType?: string
}

export interface Outcome {
  acked: boolean
  /** What the device saw, e.g. `PUBACK 0x99`, `4.03`, `HTTP 401 GG_ERR_AUTH_FAILED`, `closed`, `aborted`. */
  detail: string
}

export interface AckDriver {
  /** Used in test names. */
  name: string
  /** The listener's name in the gateway's ready line / `Gateway.listeners()`. */
  listener: string
  /** Config sections merged into the test config to enable the protocol on port 0. */
  config?: Record<string, unknown>
  /** A reason to skip the suite (e.g. a missing third-party client); false or absent to run. */
  skip?: string | false
  /**
   * Sends one event as the device and resolves once the device knows the outcome. Must resolve (never
   * hang) when `signal` aborts: `{ acked: false, detail: 'aborted' }`.
   */
  send (port: number, req: SendRequest, signal: AbortSignal): Promise<Outcome>
  /**
   * Sends the message, then sends it again exactly as this protocol retransmits (same MQTT packet id
   * with DUP, same CoAP MID, same client message id, same Idempotency-Key), and returns both outcomes.
   */
  retransmit (port: number, req: SendRequest): Promise<[Outcome, Outcome]>
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v))

function req (device: keyof typeof TOKENS, sub: string, payload: Buffer, contentType = 'application/json'): SendRequest {
  return { device, token: TOKENS[device], topic: `devices/${device}/${sub}`, payload, contentType }
}

function portOf (listeners: Record<string, string>, name: string): number {
  const v = listeners[name]
  if (v === undefined) throw new Error(`the gateway has no ${name} listener: ${JSON.stringify(listeners)}`)
  return Number(v.split(':').pop())
}

/** Sends a marker event and waits until it was forwarded; returns every event data the receiver got. */
async function dataUpToMarker (d: AckDriver, port: number, rx: Receiver, marker: string): Promise<unknown[]> {
  const ctl = new AbortController()
  const o = await d.send(port, req('sensor-1', 'marker', json({ marker })), ctl.signal)
  assert.equal(o.acked, true, `the marker was acked (${o.detail})`)
  await waitFor(() => rx.events.some(e => (e.data as { marker?: string } | undefined)?.marker === marker), `marker ${marker} forwarded`)
  return rx.events.map(e => e.data)
}

async function faults (gw: GatewayProcess, body: Record<string, number>): Promise<{ holding: number }> {
  const res = await gw.admin('/api/v1/test/faults', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  assert.equal(res.status, 200)
  return await res.json() as { holding: number }
}

export function runAckSuite (d: AckDriver): void {
  const skip = d.skip === undefined || d.skip === false ? false : d.skip
  const opts = { skip }

  async function inProcess (t: TestContext) {
    const rx = await startReceiver(t)
    const gw = await startInProcess(t, baseConfig(path.join(tempDir(t), 'data'), { cloud: rx.url }, d.config))
    return { rx, port: portOf(gw.listeners(), d.listener) }
  }

  async function processGateway (t: TestContext) {
    const rx = await startReceiver(t)
    const dir = tempDir(t)
    const file = writeConfig(dir, baseConfig(path.join(dir, 'data'), { cloud: rx.url }, d.config))
    const start = async (): Promise<GatewayProcess> => spawnGateway(t, file)
    return { rx, start, port: (gw: GatewayProcess) => gw.ports[d.listener] ?? assert.fail(`no ${d.listener} port in the ready line`) }
  }

  test(`${d.name}: no ack while the commit is held; kill -9 during the hold leaves no trace`, opts, async (t) => {
    const g = await processGateway(t)
    let gw = await g.start()
    await faults(gw, { holdBeforeCommit: 1 })
    const ctl = new AbortController()
    let settled: Outcome | null = null
    const pending = d.send(g.port(gw), req('sensor-1', 'held', json({ n: 'held' })), ctl.signal).then(o => { settled = o; return o })
    await waitFor(async () => (await faults(gw, {})).holding === 1, 'the writer is holding the commit')
    await sleep(300)
    assert.equal(settled, null, 'no outcome reached the device while the commit was held')
    gw.child.kill('SIGKILL')
    await gw.exited
    ctl.abort()
    const o = await pending
    assert.equal(o.acked, false, `the held event was never acked (${o.detail})`)
    gw = await g.start()
    const seen = await dataUpToMarker(d, g.port(gw), g.rx, 'after-hold')
    assert.deepEqual(seen, [{ marker: 'after-hold' }], 'the held event is not in the store')
  })

  test(`${d.name}: an acked event survives kill -9 right after the ack`, opts, async (t) => {
    const g = await processGateway(t)
    g.rx.respond = () => ({ status: 503 })
    let gw = await g.start()
    const o = await d.send(g.port(gw), req('sensor-1', 'kept', json({ n: 'kept' })), new AbortController().signal)
    gw.child.kill('SIGKILL')
    assert.equal(o.acked, true, o.detail)
    await gw.exited
    g.rx.respond = () => ({ status: 200 })
    gw = await g.start()
    await waitFor(() => g.rx.events.some(e => (e.data as { n?: string }).n === 'kept'), 'the acked event forwarded after the restart')
    const e = g.rx.events.find(x => (x.data as { n?: string }).n === 'kept')!
    assert.equal(e.subject, 'devices/sensor-1/kept')
    assert.equal(e.deviceid, 'sensor-1')
  })

  test(`${d.name}: a payload that does not parse as its content type is refused and stores nothing`, opts, async (t) => {
    const { rx, port } = await inProcess(t)
    const o = await d.send(port, req('sensor-1', 'bad', Buffer.from('{"unterminated": '), 'application/json'), new AbortController().signal)
    assert.equal(o.acked, false, o.detail)
    assert.deepEqual(await dataUpToMarker(d, port, rx, 'after-bad'), [{ marker: 'after-bad' }])
  })

  test(`${d.name}: a wrong credential is refused and stores nothing`, opts, async (t) => {
    const { rx, port } = await inProcess(t)
    const o = await d.send(port, { ...req('sensor-1', 'x', json({ n: 'intruder' })), token: 'not-the-secret' }, new AbortController().signal)
    assert.equal(o.acked, false, o.detail)
    const unknown = await d.send(port, { ...req('sensor-1', 'x', json({ n: 'nobody' })), device: 'nobody', topic: 'devices/nobody/x' }, new AbortController().signal)
    assert.equal(unknown.acked, false, unknown.detail)
    assert.deepEqual(await dataUpToMarker(d, port, rx, 'after-auth'), [{ marker: 'after-auth' }])
  })

  test(`${d.name}: a topic outside the device's namespace is refused and stores nothing`, opts, async (t) => {
    const { rx, port } = await inProcess(t)
    const other = await d.send(port, { ...req('sensor-1', 'x', json({ n: 'spoof' })), topic: 'devices/sensor-2/x' }, new AbortController().signal)
    assert.equal(other.acked, false, other.detail)
    const command = await d.send(port, req('sensor-1', 'commands/reboot', json({ n: 'cmd' })), new AbortController().signal)
    assert.equal(command.acked, false, `a device may not publish into its own command topics (${command.detail})`)
    assert.deepEqual(await dataUpToMarker(d, port, rx, 'after-acl'), [{ marker: 'after-acl' }])
  })

  test(`${d.name}: a retransmission becomes one event`, opts, async (t) => {
    const { rx, port } = await inProcess(t)
    const [a, b] = await d.retransmit(port, req('sensor-1', 'once', json({ n: 'once' })))
    assert.equal(a.acked, true, a.detail)
    assert.equal(b.acked, true, `the retransmission got the original outcome (${b.detail})`)
    const seen = await dataUpToMarker(d, port, rx, 'after-retry')
    assert.deepEqual(seen, [{ n: 'once' }, { marker: 'after-retry' }])
  })
}

/** For drivers whose client is a file on disk (certificates, payload files). */
export function writeTemp (t: TestContext, name: string, content: string | Buffer): string {
  const file = path.join(tempDir(t), name)
  fs.writeFileSync(file, content)
  return file
}
