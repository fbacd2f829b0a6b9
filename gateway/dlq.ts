// `gridgate dlq list|replay|purge`: through the running gateway's admin API on the lock socket when
// it runs (two processes never write the store at once), directly on the store when it is stopped.
import type { Config } from '../config/schema.js'
import { GridgateError } from './errors.js'
import type { Store } from '../store-forward/store.js'
import { listDeadLetters } from '../store-forward/dead-letters.js'
import { viaGatewayOrStore, type AdminCall, type Answer, type Via } from './local-admin.js'

export interface DlqArgs {
  action: 'list' | 'replay' | 'purge'
  uplink: string | null
  ids: number[] | null
  limit: number
  after: number
}

/** Runs the action; `via` says whether the running gateway or the stopped store answered. */
export function runDlq (config: Config, args: DlqArgs): Promise<{ via: Via, result: Answer }> {
  return viaGatewayOrStore(config, (call) => viaGateway(call, args), (store) => viaStore(store, args))
}

async function viaStore (store: Store, args: DlqArgs): Promise<Answer> {
  if (args.uplink !== null && !store.uplinks.has(args.uplink)) {
    throw new GridgateError('GG_ERR_USAGE', `no uplink ${JSON.stringify(args.uplink)}; configured: ${[...store.uplinks.keys()].join(', ')}`)
  }
  switch (args.action) {
    case 'list': return await listDeadLetters(store, args.uplink, args.after, args.limit)
    case 'replay': return await store.replayDeadLetters(args.uplink, args.ids)
    case 'purge': return await store.purgeDeadLetters(args.uplink, args.ids)
  }
}

function viaGateway (call: AdminCall, args: DlqArgs): Promise<Answer> {
  const q = new URLSearchParams({ after: String(args.after), limit: String(args.limit), ...(args.uplink === null ? {} : { uplink: args.uplink }) })
  if (args.action === 'list') return call('GET', `/api/v1/dead-letters?${q.toString()}`)
  return call('POST', `/api/v1/dead-letters/${args.action}`, { ...(args.uplink === null ? {} : { uplink: args.uplink }), ...(args.ids === null ? {} : { ids: args.ids }) })
}
