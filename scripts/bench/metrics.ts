// The gateway's Prometheus metrics as the bench reads them: one scrape as a map, and what changed in
// the store's commit counters between two scrapes.

/** Every series of /metrics: by name (label sets summed) and by name with its labels. Null if unreachable. */
export async function scrape (admin: string): Promise<Map<string, number> | null> {
  try {
    const text = await (await fetch(`${admin}/metrics`)).text()
    const out = new Map<string, number>()
    for (const line of text.split('\n')) {
      if (line.startsWith('#') || line === '') continue
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)/.exec(line)
      if (m === null) continue
      out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[3]))
      if (m[2] !== undefined) out.set(`${m[1]!}${m[2]}`, Number(m[3]))
    }
    return out
  } catch {
    return null
  }
}

/**
 * Commits between two scrapes that took longer than 25, 50, 100 and 250 ms (gridgate_store_commit_seconds:
 * hand-over to the writer thread until its answer): a PUBACK tail that lines up with these is the disk's.
 */
export function slowCommitsBetween (m0: Map<string, number> | null, m1: Map<string, number> | null): Record<string, number> | null {
  const name = 'gridgate_store_commit_seconds'
  if (m1?.get(`${name}_count`) === undefined) return null
  const over = (le: string): number => {
    const d = (key: string): number => (m1.get(key) ?? 0) - (m0?.get(key) ?? 0)
    return d(`${name}_count`) - d(`${name}_bucket{le="${le}"}`)
  }
  return { over25ms: over('0.025'), over50ms: over('0.05'), over100ms: over('0.1'), over250ms: over('0.25') }
}

export function commitsBetween (m0: Map<string, number> | null, m1: Map<string, number> | null): number | null {
  const after = m1?.get('gridgate_store_commits_total') ?? 0
  return after === 0 ? null : after - (m0?.get('gridgate_store_commits_total') ?? 0)
}
