// The shared ack-semantics suite over WebSocket JSON: an `ack` entry for the message's id is an ack;
// a retransmission is the same frame with the same client message id.
import { WebSocket } from 'ws'
import { runAckSuite, type Outcome, type SendRequest } from '../helpers/ack-suite.js'

interface Answer { ack?: Array<{ id: string, eventId: string }>, nack?: string | null, code?: string }

/** Opens a connection; an Outcome when the upgrade was refused. */
function open (port: number, r: SendRequest, signal: AbortSignal): Promise<WebSocket | Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { authorization: `Bearer ${r.device}:${r.token}` } })
    const onAbort = (): void => { ws.terminate(); resolve({ acked: false, detail: 'aborted' }) }
    signal.addEventListener('abort', onAbort, { once: true })
    ws.once('open', () => { signal.removeEventListener('abort', onAbort); resolve(ws) })
    ws.once('unexpected-response', (_req, res) => { ws.terminate(); resolve({ acked: false, detail: `HTTP ${res.statusCode}` }) })
    ws.once('error', (err) => resolve({ acked: false, detail: `error ${err.message}` }))
  })
}

function frame (r: SendRequest, id: string): string {
  return JSON.stringify({ id, topic: r.topic, data_base64: r.payload.toString('base64'), ...(r.contentType === undefined ? {} : { contentType: r.contentType }) })
}

function answer (ws: WebSocket, id: string, signal: AbortSignal): Promise<Outcome> {
  return new Promise((resolve) => {
    const done = (o: Outcome): void => { ws.off('message', onMessage); resolve(o) }
    const onMessage = (data: Buffer): void => {
      const a = JSON.parse(data.toString()) as Answer
      const ack = a.ack?.find(x => x.id === id)
      if (ack !== undefined) done({ acked: true, detail: `ack ${ack.eventId}` })
      else if ('nack' in a && (a.nack === id || a.nack === null)) done({ acked: false, detail: `nack ${a.code}` })
    }
    ws.on('message', onMessage)
    ws.once('close', (code) => done({ acked: false, detail: `closed ${code}` }))
    signal.addEventListener('abort', () => done({ acked: false, detail: 'aborted' }), { once: true })
  })
}

runAckSuite({
  name: 'WebSocket JSON',
  listener: 'websocket',
  async send (port, r, signal) {
    const ws = await open(port, r, signal)
    if (!(ws instanceof WebSocket)) return ws
    const id = `m-${Math.random().toString(36).slice(2)}`
    ws.send(frame(r, id))
    const o = await answer(ws, id, signal)
    ws.terminate()
    return o
  },
  async retransmit (port, r) {
    const signal = new AbortController().signal
    const first = await open(port, r, signal)
    if (!(first instanceof WebSocket)) return [first, first]
    const id = `m-${Math.random().toString(36).slice(2)}`
    first.send(frame(r, id))
    const a = await answer(first, id, signal)
    first.terminate()
    // The device lost the connection before it saw the ack, reconnects and resends the same id.
    const second = await open(port, r, signal)
    if (!(second instanceof WebSocket)) return [a, second]
    second.send(frame(r, id))
    const b = await answer(second, id, signal)
    second.terminate()
    return [a, b]
  },
})
