// A real node:http cloud receiver on port 0 that records every CloudEvent it is sent and answers
// with whatever the test decides.
import http from 'node:http'
import { gunzipSync } from 'node:zlib'
import type { AddressInfo } from 'node:net'
import type { TestContext } from 'node:test'

export interface ReceivedEvent { [k: string]: unknown, id: string, sequence: string, data?: unknown }

export interface Reply { status: number, headers?: Record<string, string>, body?: string }

export interface Receiver {
  url: string
  /** Events from batches answered 2xx, in arrival order. */
  events: ReceivedEvent[]
  requests: Array<{ headers: http.IncomingHttpHeaders, count: number, status: number }>
  /** Decides the answer; default 200. Returning 'drop' destroys the socket. */
  respond: (events: ReceivedEvent[], req: http.IncomingMessage) => Reply | 'drop' | 'hang'
  close (): Promise<void>
}

export async function startReceiver (t?: TestContext): Promise<Receiver> {
  const r: Receiver = {
    url: '',
    events: [],
    requests: [],
    respond: () => ({ status: 200 }),
    close: async () => {},
  }
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      let events: ReceivedEvent[]
      try {
        const raw = Buffer.concat(chunks)
        const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw
        events = JSON.parse(body.toString('utf8')) as ReceivedEvent[]
      } catch {
        res.writeHead(400).end('bad json')
        return
      }
      const answer = r.respond(events, req)
      if (answer === 'drop') { req.socket.destroy(); return }
      if (answer === 'hang') return
      r.requests.push({ headers: req.headers, count: events.length, status: answer.status })
      if (answer.status >= 200 && answer.status < 300) r.events.push(...events)
      res.writeHead(answer.status, answer.headers).end(answer.body ?? '')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  r.url = `http://127.0.0.1:${port}/events`
  r.close = () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  t?.after(() => r.close())
  return r
}
