// aedes-persistence's abstract suite (the contract every aedes persistence must pass), run against
// gridgate's persistence with an in-memory retained-message backend.
import { test } from 'node:test'
import { createRequire } from 'node:module'
import { BrokerPersistence, type RetainedMessage } from '../../adapters/mqtt/persistence.js'

const require = createRequire(import.meta.url)
const abstractSuite = require('aedes-persistence/abstract.js') as (opts: Record<string, unknown>) => void

function persistence (): BrokerPersistence {
  const rows = new Map<string, RetainedMessage>()
  return new BrokerPersistence({
    retained: {
      load: async () => ({ rows: [...rows.values()], deleted: 0 }),
      write: async (r) => { if (r.payload.byteLength === 0) rows.delete(r.topic); else rows.set(r.topic, r) },
    },
    maxRetained: 1000,
    maxOfflineMessages: 1000,
    onOfflineDropped: () => {},
    onRetainedRefused: () => {},
    now: Date.now,
  })
}

abstractSuite({ test, persistence, testAsync: true })
