// One process per data dir. The lock is a Unix socket in the data dir: the kernel frees it when the
// process dies (even by kill -9), and a leftover socket file that nobody answers on is stale.
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { GridgateError } from './errors.js'

export const LOCK_SOCKET = 'gridgate.sock'

export interface DataDirLock {
  readonly path: string
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

export async function lockDataDir (dataDir: string): Promise<DataDirLock> {
  const file = path.join(dataDir, LOCK_SOCKET)
  for (let attempt = 0; attempt < 2; attempt++) {
    const server = net.createServer((socket) => socket.end())
    const err = await tryListen(server, file)
    if (err === null) {
      server.unref()
      return {
        path: file,
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
    fs.rmSync(file, { force: true })
  }
  throw new GridgateError('GG_ERR_STORE_LOCKED', `could not take the lock ${file}`)
}
