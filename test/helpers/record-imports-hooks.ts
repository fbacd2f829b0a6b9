// Module hooks for record-imports.ts; they run on Node's hooks thread.
import { appendFileSync } from 'node:fs'

type Next = (specifier: string, context: unknown) => Promise<{ url: string }>

let out = ''

export function initialize (data: { out: string }): void {
  out = data.out
}

export async function resolve (specifier: string, context: unknown, next: Next): Promise<{ url: string }> {
  const resolved = await next(specifier, context)
  appendFileSync(out, `${resolved.url}\n`)
  return resolved
}
