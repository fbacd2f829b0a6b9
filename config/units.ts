// Sizes and durations as people write them in config files. Parsers throw a RangeError whose message
// completes "expected …": callers turn it into their own error code (the config schema reports it as
// a GG_ERR_CONFIG_INVALID detail at the key's path).

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
}

// Largest first: formatSize picks the first unit that divides exactly, binary before decimal so that
// 262144 prints as 256KiB rather than 262.144KB.
const SIZE_FORMATS = [
  ['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10],
  ['TB', 1e12], ['GB', 1e9], ['MB', 1e6], ['KB', 1e3],
] as const

// Largest first; parseDuration requires compound parts in this order, each at most once (`1h30m`).
const DURATION_UNITS = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]] as const

const SIZE_HINT = 'a size like 512B, 64KiB, 1.5MiB, 10KB or a whole number of bytes'
const DURATION_HINT = 'a duration like 250ms, 30s, 5m, 1h30m, 7d or a whole number of milliseconds'

export function parseSize (v: string | number): number {
  if (typeof v === 'number') return wholeNumber(v, SIZE_HINT)
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(v.trim())
  const multiplier = m === null ? undefined : SIZE_UNITS[(m[2] ?? '').toLowerCase() || 'b']
  if (m === null || multiplier === undefined) throw new RangeError(`expected ${SIZE_HINT}`)
  const n = Number(m[1])
  // Fractions are for larger units (1.5MiB); a fraction of a byte is a typo.
  if (multiplier === 1 && !Number.isInteger(n)) throw new RangeError(`expected ${SIZE_HINT}`)
  return checkSafe(Math.round(n * multiplier), SIZE_HINT)
}

export function parseDuration (v: string | number): number {
  if (typeof v === 'number') return wholeNumber(v, DURATION_HINT)
  const s = v.trim()
  if (/^\d+$/.test(s)) return checkSafe(Number(s), DURATION_HINT)
  // Units are lower case only, as in Go and Prometheus: `M` and `MS` look like months and megaseconds.
  const part = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y
  let ms = 0
  let nextUnit = 0
  let m: RegExpExecArray | null
  while (part.lastIndex < s.length && (m = part.exec(s)) !== null) {
    const unit = DURATION_UNITS.findIndex(([name]) => name === m?.[2])
    if (unit < nextUnit) throw new RangeError(`expected ${DURATION_HINT} (compound parts largest first, each once)`)
    nextUnit = unit + 1
    ms += Number(m[1]) * (DURATION_UNITS[unit]?.[1] ?? 0)
  }
  if (s === '' || part.lastIndex !== s.length) throw new RangeError(`expected ${DURATION_HINT}`)
  return checkSafe(Math.round(ms), DURATION_HINT)
}

export function formatSize (bytes: number): string {
  for (const [unit, size] of SIZE_FORMATS) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`
  }
  return `${bytes}B`
}

export function formatDuration (ms: number): string {
  if (ms === 0) return '0ms'
  let rest = ms
  let out = ''
  for (const [unit, size] of DURATION_UNITS) {
    const n = Math.floor(rest / size)
    if (n > 0) out += `${n}${unit}`
    rest -= n * size
  }
  return out
}

function wholeNumber (n: number, hint: string): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`expected ${hint}`)
  return checkSafe(n, hint)
}

function checkSafe (n: number, hint: string): number {
  if (!Number.isSafeInteger(n)) throw new RangeError(`expected ${hint} (too large)`)
  return n
}
