// Memory of a CoAP server under many confirmable requests: sends --requests CON POSTs from this
// process (several sockets, a window of requests in flight) to a server in a child process and samples
// the child's RSS as it goes. Prints one JSON document.
//
//   node dist/scripts/coap-memory.js --requests 50000                 # gridgate (the real CLI)
//   node dist/scripts/coap-memory.js --requests 50000 --server node-coap   # a bare node `coap` server
//   node dist/scripts/coap-memory.js --requests 50000 --server node-coap --cache-size 0
//
// With `--server node-coap` the child is a plain node `coap` 1.5.0 server answering 2.04 with default
// options, to compare against (its response cache keeps every response for ~247 s).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import dgram from 'node:dgram'
import { once } from 'node:events'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { generate, parse } from 'coap-packet'
import { stringify } from 'yaml'
import { spawnGatewayProcess } from './gateway-process.js'

const SOCKETS = 16
const WINDOW = 64
const SECRET = 'memory-test-secret'

function rssKiB (pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN)
}

async function serveNodeCoap (cacheSize: number | undefined): Promise<void> {
  const { createServer } = await import('coap')
  const server = createServer(cacheSize === undefined ? {} : { cacheSize }, (_req, res) => { res.code = '2.04'; res.end() })
  server.listen(0, '127.0.0.1', () => {
    const addr = (server as unknown as { _sock: dgram.Socket })._sock.address()
    process.stdout.write(`${JSON.stringify({ port: addr.port })}\n`)
  })
}

async function startNodeCoap (cacheSize: string | undefined): Promise<{ child: ChildProcess, port: number, adminPort?: number }> {
  const self = fileURLToPath(import.meta.url)
  const child = spawn(process.execPath, [self, '--serve-node-coap', ...(cacheSize === undefined ? [] : ['--cache-size', cacheSize])], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [chunk] = await once(child.stdout!, 'data') as [Buffer]
  return { child, port: (JSON.parse(chunk.toString()) as { port: number }).port }
}

/** The gateway's V8 heap in use, from its own /metrics (prom-client's default metrics). */
async function heapMiB (adminPort: number | undefined): Promise<number | undefined> {
  if (adminPort === undefined) return undefined
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text()
  const bytes = Number(/^gridgate_nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1] ?? NaN)
  return Number.isNaN(bytes) ? undefined : Math.round(bytes / 2 ** 20 * 10) / 10
}

async function startGridgate (dir: string): Promise<{ child: ChildProcess, port: number, adminPort?: number }> {
  const file = path.join(dir, 'gridgate.yaml')
  fs.writeFileSync(file, stringify({
    gateway: { id: 'gw-memory', dataDir: path.join(dir, 'data'), logLevel: 'warn' },
    mqtt: { enabled: false },
    coap: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    store: { sync: 'normal' },
    devices: [{ id: 'sensor-1', token: SECRET }],
  }))
  const gw = await spawnGatewayProcess({ configFile: file, env: { PATH: process.env.PATH ?? '', GRIDGATE_GATEWAY_LOG_LEVEL: 'info' } })
  const port = gw.ports.coap
  if (port === undefined) throw new Error('no coap listener in the ready line')
  return { child: gw.child, port, adminPort: gw.adminPort }
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      requests: { type: 'string', default: '50000' },
      server: { type: 'string', default: 'gridgate' },
      samples: { type: 'string', default: '10' },
      'serve-node-coap': { type: 'boolean', default: false },
      // node `coap` server option cacheSize (bytes of response buffers), for --server node-coap
      'cache-size': { type: 'string' },
    },
  })
  const cacheSize = values['cache-size']
  if (values['serve-node-coap']) return serveNodeCoap(cacheSize === undefined ? undefined : Number(cacheSize))
  const total = Number(values.requests)
  const every = Math.max(1, Math.floor(total / Number(values.samples)))
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gg-coap-memory-'))
  const server = values.server === 'node-coap' ? await startNodeCoap(cacheSize) : await startGridgate(dir)
  const pid = server.child.pid!
  const samples: Array<{ requests: number, rssMiB: number, heapMiB?: number }> = []
  const sample = (n: number): void => {
    const s: { requests: number, rssMiB: number, heapMiB?: number } = { requests: n, rssMiB: Math.round(rssKiB(pid) / 102.4) / 10 }
    samples.push(s)
    void heapMiB(server.adminPort).then((h) => { if (h !== undefined) s.heapMiB = h }, () => {})
  }
  await sleep(500)
  sample(0)

  const sockets = await Promise.all(Array.from({ length: SOCKETS }, async () => {
    const s = dgram.createSocket('udp4')
    s.bind(0, '127.0.0.1')
    await once(s, 'listening')
    return s
  }))
  const pending = new Map<string, () => void>()
  const codes = new Map<string, number>()
  for (const [i, s] of sockets.entries()) {
    s.on('message', (msg) => {
      const p = parse(msg)
      if (p.confirmable && p.code !== '0.00') s.send(generate({ ack: true, code: '0.00', messageId: p.messageId, token: Buffer.alloc(0) }), server.port, '127.0.0.1')
      if (p.code === '0.00') return // the empty ACK of a separate response
      const key = `${i}/${p.token.toString('hex')}`
      const done = pending.get(key)
      if (done === undefined) return
      pending.delete(key)
      codes.set(p.code, (codes.get(p.code) ?? 0) + 1)
      done()
    })
  }
  const started = Date.now()
  let sent = 0
  let answered = 0
  const one = async (): Promise<void> => {
    while (sent < total) {
      const n = sent++
      const i = n % SOCKETS
      const s = sockets[i]!
      const token = Buffer.alloc(4)
      token.writeUInt32BE(n)
      const buf = generate({
        code: 'POST', confirmable: true, messageId: Math.floor(n / SOCKETS) & 0xffff, token,
        options: [
          ...['devices', 'sensor-1', 'mem'].map(v => ({ name: 'Uri-Path' as const, value: Buffer.from(v) })),
          { name: 'Uri-Query', value: Buffer.from(`auth=sensor-1:${SECRET}`) },
          { name: 'Content-Format', value: Buffer.from([50]) },
        ],
        payload: Buffer.from(JSON.stringify({ n })),
      })
      const key = `${i}/${token.toString('hex')}`
      await new Promise<void>((resolve) => {
        // A lost datagram is sent again with the same message ID, as a device does.
        const retry = setInterval(() => s.send(buf, server.port, '127.0.0.1'), 2000)
        pending.set(key, () => { clearInterval(retry); resolve() })
        s.send(buf, server.port, '127.0.0.1')
      })
      answered++
      if (answered % every === 0) sample(answered)
    }
  }
  await Promise.all(Array.from({ length: WINDOW }, one))
  const elapsedS = (Date.now() - started) / 1000
  for (const wait of [2000, 5000]) {
    await sleep(wait)
    sample(-1)
  }
  for (const s of sockets) s.close()
  server.child.kill('SIGTERM')
  await once(server.child, 'exit')
  fs.rmSync(dir, { recursive: true, force: true })
  const lines = samples.map(s => `    ${JSON.stringify(s)}`).join(',\n')
  process.stdout.write(`{"server": ${JSON.stringify(values.server)},${cacheSize === undefined ? '' : ` "cacheSize": ${cacheSize},`} "requests": ${total}, "elapsedS": ${elapsedS}, "codes": ${JSON.stringify(Object.fromEntries(codes))},\n  "note": "requests -1 = idle 2 s, then 7 s, after the last response",\n  "samples": [\n${lines}\n  ]}\n`)
}

await main()
