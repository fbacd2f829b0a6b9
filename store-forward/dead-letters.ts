// Dead letters as users see them: listed, replayed (re-appended with their original event id and a
// new sequence, for their own uplink only) and purged. The same functions serve the admin API of a
// running gateway and `gridgate dlq` on a stopped one.
import { decodeEvent, renderJson } from '../gateway/event.js'
import type { Store, DeadLetterRow } from './store.js'

export interface DeadLetterView {
  id: number
  uplink: string
  /** The sequence the event had when it was dead-lettered. */
  sequence: number
  eventId: string
  reason: string
  status: number | null
  ingestTime: string
  deadLetteredAt: string
  event: unknown
}

export function viewDeadLetter (row: DeadLetterRow, storeId: string): DeadLetterView {
  const ev = decodeEvent(row.body)
  return {
    id: row.id,
    uplink: row.uplink,
    sequence: row.seq,
    eventId: ev.id,
    reason: row.reason,
    status: row.status,
    ingestTime: new Date(row.ingestMs).toISOString(),
    deadLetteredAt: new Date(row.atMs).toISOString(),
    event: JSON.parse(renderJson(ev, storeId, row.seq)) as unknown,
  }
}

export const MAX_LIST = 1000

export async function listDeadLetters (store: Store, uplink: string | null, after: number, limit: number): Promise<{ deadLetters: DeadLetterView[], next: number | null }> {
  const n = Math.max(1, Math.min(MAX_LIST, limit))
  const rows = await store.listDeadLetters(uplink, after, n)
  return {
    deadLetters: rows.map(r => viewDeadLetter(r, store.info.storeId)),
    next: rows.length === n ? rows[rows.length - 1]!.id : null,
  }
}
