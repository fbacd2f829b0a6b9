// Batches for the uplink sinks' buffer-reuse tests, and the forwarder's order of sending them.
import assert from 'node:assert/strict'
import { encodeEvent } from '../../gateway/event.js'
import type { Sink, SinkBatch } from '../../store-forward/sink.js'

/** n events from sequence `first`, JSON data of a size that varies with the sequence. */
export function jsonEventBatch (first: number, n: number): SinkBatch {
  return {
    storeId: 'store',
    events: Array.from({ length: n }, (_, i) => ({
      seq: first + i,
      ingestMs: 1,
      body: encodeEvent({ id: `e${first + i}`, source: '/s', type: 't', subject: 'devices/d/x', time: new Date(1_800_000_000_000).toISOString(), extensions: {}, datacontenttype: 'application/json', data: { kind: 'json', text: `{"n":"${'y'.repeat((first + i) % 97)}"}` } }),
    })),
  }
}

/**
 * Large, then small (written into the large one's buffer), then two of middling size: the sink's
 * pool hands a kept buffer to a batch of at least a quarter of its size.
 */
export const reuseBatches = (): SinkBatch[] => [jsonEventBatch(1, 300), jsonEventBatch(301, 3), jsonEventBatch(304, 120), jsonEventBatch(424, 100)]

/**
 * Sends the batches in order until each is delivered. A batch that gets a retry is sent again after
 * the next one was rendered ahead, as the forwarder does while it waits. Returns each first outcome.
 */
export async function sendRenderingAhead (sink: Sink, batches: SinkBatch[]): Promise<string[]> {
  const outcomes: string[] = []
  for (const [i, b] of batches.entries()) {
    let outcome = await sink.send(b, new AbortController().signal)
    outcomes.push(outcome.kind)
    if (outcome.kind === 'retry') {
      const next = batches[i + 1]
      if (next !== undefined) {
        sink.prepare?.(next)
        await next.prepared
      }
      outcome = await sink.send(b, new AbortController().signal)
    }
    assert.equal(outcome.kind, 'delivered')
  }
  return outcomes
}
