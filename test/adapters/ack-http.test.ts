// The shared ack-semantics suite over HTTP ingest: a POST answered 202 is an ack; a retransmission
// is the same request with the same Idempotency-Key.
import { runAckSuite, type Outcome, type SendRequest } from '../helpers/ack-suite.js'

/** `devices/<id>/<rest>` → `/v1/devices/<id>/events/<rest>`. */
function url (port: number, topic: string): string {
  const [, id, ...rest] = topic.split('/')
  return `http://127.0.0.1:${port}/v1/devices/${id}/events/${rest.join('/')}`
}

async function post (port: number, r: SendRequest, signal: AbortSignal, idempotencyKey?: string): Promise<Outcome> {
  const headers: Record<string, string> = { authorization: `Bearer ${r.device}:${r.token}` }
  if (r.contentType !== undefined) headers['content-type'] = r.contentType
  if (idempotencyKey !== undefined) headers['idempotency-key'] = idempotencyKey
  try {
    const res = await fetch(url(port, r.topic), { method: 'POST', headers, body: new Uint8Array(r.payload), signal })
    const body = await res.json() as { code?: string, ids?: string[] }
    return { acked: res.status === 202, detail: `HTTP ${res.status} ${body.code ?? body.ids?.join(',') ?? ''}` }
  } catch (err) {
    return { acked: false, detail: signal.aborted ? 'aborted' : `closed (${(err as Error).message})` }
  }
}

runAckSuite({
  name: 'HTTP ingest',
  listener: 'websocket',
  send: (port, r, signal) => post(port, r, signal),
  async retransmit (port, r) {
    const key = `retry-${Math.random().toString(36).slice(2)}`
    const first = await post(port, r, new AbortController().signal, key)
    const second = await post(port, r, new AbortController().signal, key)
    return [first, second]
  },
})
