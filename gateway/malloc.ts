// glibc's malloc_trim() for the running gateway, from gateway/native/malloc.c (built by
// scripts/build-native.ts into dist/native/, embedded in the single executable). A thread's freed C
// memory stays in its malloc arena, and the main thread's heap at its high-water mark, until trimmed:
// on an idle gateway about 10 MiB of the arenas were free (malloc_stats: 13.9 MB held, 1.4 MB in use).
// Optional: without the addon (no C compiler when built, another libc) trimMalloc() returns null.
import { fileURLToPath } from 'node:url'

interface Addon { trim: () => boolean, supported: boolean }

/** Where the addon is: next to the compiled gateway, unless the single executable says otherwise. */
let locate: () => string | null = () => fileURLToPath(new URL('../native/gridgate_malloc.node', import.meta.url))
let addon: Addon | null | undefined
let unavailable: string | null = null

/** The single executable extracts its embedded addon on demand (scripts/sea-setup.ts). */
export function setMallocAddonLocator (fn: () => string | null): void {
  locate = fn
  addon = undefined
  unavailable = null
}

function load (): Addon | null {
  if (addon !== undefined) return addon
  addon = null
  try {
    const file = process.platform === 'linux' ? locate() : null
    if (file === null) {
      unavailable = process.platform === 'linux' ? 'no addon in this build' : `not available on ${process.platform}`
      return null
    }
    const m = { exports: {} as Addon }
    process.dlopen(m, file)
    if (m.exports.supported) addon = m.exports
    else unavailable = 'the C library is not glibc'
  } catch (err) {
    unavailable = (err as Error).message
  }
  return addon
}

/** malloc_trim(0): true when memory went back to the system, false when there was none; null without the addon. */
export function trimMalloc (): boolean | null {
  const a = load()
  return a === null ? null : a.trim()
}

/** Why trimMalloc() returns null (null while it works). */
export function mallocTrimUnavailable (): string | null {
  load()
  return unavailable
}
