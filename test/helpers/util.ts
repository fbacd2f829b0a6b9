import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { TestContext } from 'node:test'

const cleanups = new WeakMap<TestContext, Array<() => unknown>>()

/**
 * Cleanup that runs after the test in reverse order of registration, so a gateway started on a temp
 * dir stops before the dir is removed (node:test runs t.after hooks in registration order).
 */
export function defer (t: TestContext, fn: () => unknown): void {
  let stack = cleanups.get(t)
  if (stack === undefined) {
    const s: Array<() => unknown> = []
    stack = s
    cleanups.set(t, s)
    t.after(async () => {
      while (s.length > 0) {
        try { await s.pop()!() } catch {}
      }
    })
  }
  stack.push(fn)
}

/** A temp dir removed after the test (after whatever was started on it later has stopped). */
export function tempDir (t: TestContext, prefix = 'gg-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  defer(t, () => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
  return dir
}

/** Polls until fn returns a truthy value or the deadline passes (then throws with the message). */
export async function waitFor<T> (fn: () => T | Promise<T>, message: string, timeoutMs = 20_000, intervalMs = 20): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs
  let last: T | undefined
  while (Date.now() < deadline) {
    last = await fn()
    if (last) return last as NonNullable<T>
    await sleep(intervalMs)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for: ${message}`)
}

export function hasCommand (cmd: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some(dir => {
    try { fs.accessSync(path.join(dir, cmd), fs.constants.X_OK); return true } catch { return false }
  })
}

export const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..')
export { CLI as cliPath } from '../../scripts/gateway-process.js'
