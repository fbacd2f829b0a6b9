// Where gridgate's .proto files are found. tsc does not copy them into dist/, so the compiled module
// (dist/gateway/proto/index.js) reads them from the source tree; a single-binary build registers the
// texts it embedded with embedProto() before anything loads a schema, and no file is read at all.

import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const embedded = new Map<string, string>()

// Candidates relative to this module: next to the source file (running the .ts directly), then the
// source tree seen from dist/gateway/proto/.
const searchDirs: readonly URL[] = [
  new URL('./', import.meta.url),
  new URL('../../../gateway/proto/', import.meta.url),
]

function checkName (name: string): void {
  if (!/^[A-Za-z0-9_.-]+\.proto$/.test(name) || name.startsWith('.')) {
    throw new TypeError(`not a gridgate proto file name: ${JSON.stringify(name)}`)
  }
}

/** Absolute path of a .proto shipped in gateway/proto/, looked up from the source tree or from dist/. */
export function protoPath (name: string): string {
  checkName(name)
  for (const dir of searchDirs) {
    const file = fileURLToPath(new URL(name, dir))
    if (existsSync(file)) return file
  }
  throw new Error(`gateway/proto/${name} not found next to ${fileURLToPath(import.meta.url)} nor in the source tree`)
}

/** Make a proto's text available without the file system (single-binary builds). */
export function embedProto (name: string, text: string): void {
  checkName(name)
  embedded.set(name, text)
}

/** The text of a gridgate .proto: the embedded copy when there is one, else the file from protoPath(). */
export function protoSource (name: string): string {
  checkName(name)
  return embedded.get(name) ?? readFileSync(protoPath(name), 'utf8')
}
