// One process per data dir. The lock is a Unix socket in the data dir: the kernel frees it when the
// process dies (even by kill -9), and a leftover socket file that nobody answers on is stale.
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'
import { GridgateError } from './errors.js'

export const LOCK_SOCKET = 'gridgate.sock'

export interface DataDirLock {
  readonly path: string
  /** Connections to the lock socket go here (the admin API, for local CLI commands); closed by default. */
  serve (handler: (socket: net.Socket) => void): void
  release (): Promise<void>
}

function tryListen (server: net.Server, file: string): Promise<NodeJS.ErrnoException | null> {
  return new Promise((resolve) => {
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err))
    server.listen(file, () => resolve(null))
  })
}

function answers (file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(file)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

/** sun_path holds 108 bytes; Node silently truncates longer paths, which would lock the wrong name. */
const MAX_SOCKET_PATH = 100

/**
 * The socket in the data dir, or — when that path is too long for a Unix socket — a Linux abstract
 * socket named after the data dir's real path (no file; also freed when the process dies).
 */
export function lockSocketPath (dataDir: string): string {
  const file = path.join(dataDir, LOCK_SOCKET)
  if (Buffer.byteLength(file) <= MAX_SOCKET_PATH) return file
  return `\0gridgate-${createHash('sha256').update(fs.realpathSync(dataDir)).digest('hex').slice(0, 32)}`
}

export async function lockDataDir (dataDir: string): Promise<DataDirLock> {
  const file = lockSocketPath(dataDir)
  for (let attempt = 0; attempt < 2; attempt++) {
    let handler = (socket: net.Socket): void => { socket.end() }
    const server = net.createServer((socket) => handler(socket))
    const err = await tryListen(server, file)
    if (err === null) {
      server.unref()
      return {
        path: file,
        serve: (h) => { handler = h },
        release: () => new Promise<void>((resolve) => server.close(() => resolve())),
      }
    }
    if (err.code !== 'EADDRINUSE') {
      throw new GridgateError('GG_ERR_DATA_DIR', `cannot create the lock socket ${file}: ${err.message}`, { cause: err })
    }
    if (await answers(file)) {
      throw new GridgateError('GG_ERR_STORE_LOCKED', `another gridgate process is running on ${dataDir} (it answers on ${file})`)
    }
    // Left over from a process that died: nobody listens on it any more.
    if (!file.startsWith('\0')) fs.rmSync(file, { force: true })
  }
  throw new GridgateError('GG_ERR_STORE_LOCKED', `could not take the lock ${file}`)
}
