// The benchmark's "cloud": an HTTP uplink receiver in its own process (forked with IPC), so counting
// and timing deliveries never competes with the load generator's event loop. It answers every batch
// 204 at once and measures device→cloud latency from the send stamp in each event's data (stats.ts),
// without a full JSON.parse of the batch.
//
//   fork('dist/scripts/bench/receiver.js') → { ready, port } ; send { cmd: 'reset' | 'count' | 'report', id }
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Recorder, WARMUP_SECONDS, invokedDirectly, stampsIn, wallMicros, type Percentiles, type TimelinePoint } from './stats.js'

export interface ReceiverReport {
  id: number
  events: number
  batches: number
  /** Send → arrival at the receiver, in ms. */
  latencyMs: Percentiles
  /** Without the first WARMUP_SECONDS after the reset (stats.ts); null for shorter runs. */
  latencyMsAfterWarmup: Percentiles | null
  /** Events per second arriving, with latency percentiles per second. */
  timeline: TimelinePoint[]
}

export type ReceiverCommand = { cmd: 'reset' | 'report' | 'count', id: number }

async function main (): Promise<void> {
  let rec = new Recorder(1 << 20)
  let batches = 0
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const now = wallMicros()
      batches++
      stampsIn(Buffer.concat(chunks).toString('latin1'), (t) => rec.record((now - t) / 1000))
      res.writeHead(204).end()
    })
  })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  process.on('message', (m: ReceiverCommand) => {
    if (m.cmd === 'reset') {
      rec.stop()
      rec = new Recorder(1 << 20)
      rec.startTimeline()
      batches = 0
      process.send?.({ id: m.id })
    } else if (m.cmd === 'count') {
      process.send?.({ id: m.id, events: rec.count })
    } else {
      const report: ReceiverReport = { id: m.id, events: rec.count, batches, latencyMs: rec.summary(), latencyMsAfterWarmup: rec.summaryAfter(WARMUP_SECONDS), timeline: rec.timeline() }
      process.send?.(report)
    }
  })
  process.on('disconnect', () => process.exit(0))
  process.send?.({ ready: true, port: (server.address() as AddressInfo).port })
}

if (invokedDirectly(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`receiver: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
