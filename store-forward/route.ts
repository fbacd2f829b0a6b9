// Routing is decided once, at ingest: each uplink's filter (event types and subject patterns) picks
// its bit in the row's `routes` mask (DESIGN.md "Store"). An uplink without a filter gets everything.
import { topicMatches } from '../gateway/identity.js'

export interface RouteFilter {
  types?: readonly string[] | undefined
  subjects?: readonly string[] | undefined
}

export type Predicate = (type: string, subject: string) => boolean

export function compileFilter (f: RouteFilter | undefined): Predicate {
  if (f === undefined || (f.types === undefined && f.subjects === undefined)) return () => true
  const exact = new Set<string>()
  const prefixes: string[] = []
  for (const t of f.types ?? []) {
    if (t.endsWith('*')) prefixes.push(t.slice(0, -1))
    else exact.add(t)
  }
  const typeOk = f.types === undefined
    ? () => true
    : (type: string) => exact.has(type) || prefixes.some(p => type.startsWith(p))
  const subjects = f.subjects
  const subjectOk = subjects === undefined
    ? () => true
    : (subject: string) => subjects.some(s => topicMatches(s, subject))
  return (type, subject) => typeOk(type) && subjectOk(subject)
}

/** Computes the routes mask of an event from the uplinks' filters and slots. */
export class Router {
  private readonly routes: Array<{ bit: number, match: Predicate }>
  /** The mask when every uplink wants the event (no filters at all): no per-event work. */
  private readonly all: number | null

  constructor (uplinks: ReadonlyArray<{ slot: number, filter?: RouteFilter | undefined }>) {
    this.routes = uplinks.map(u => ({ bit: 2 ** u.slot, match: compileFilter(u.filter) }))
    const unfiltered = uplinks.every(u => u.filter === undefined || (u.filter.types === undefined && u.filter.subjects === undefined))
    this.all = unfiltered ? this.routes.reduce((m, r) => m + r.bit, 0) : null
  }

  mask (type: string, subject: string): number {
    if (this.all !== null) return this.all
    let m = 0
    for (const r of this.routes) if (r.match(type, subject)) m += r.bit
    return m
  }
}
