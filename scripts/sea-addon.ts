// Where the single executable puts its embedded better-sqlite3 addon so that every thread can
// process.dlopen() it. A file inside the executable cannot be dlopen'ed, and /tmp is often mounted
// noexec (dlopen then fails with EPERM), so the addon goes to the service's runtime directory first
// (systemd RuntimeDirectory=, then XDG_RUNTIME_DIR), else next to the database, into a private
// directory (mode 0700) that is removed when the process exits.
import fs from 'node:fs'
import path from 'node:path'

const PREFIX = 'gridgate-addon-'

/** Directories to try, best first, for a gateway whose database file is dbPath. */
export function addonDirs (env: NodeJS.ProcessEnv, dbPath: string): string[] {
  const dirs: string[] = []
  // systemd sets RUNTIME_DIRECTORY to a colon-separated list when the unit names several.
  const runtime = env.RUNTIME_DIRECTORY?.split(':')[0]
  if (runtime !== undefined && runtime !== '') dirs.push(runtime)
  if (env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== '') dirs.push(env.XDG_RUNTIME_DIR)
  dirs.push(path.dirname(path.resolve(dbPath)))
  return dirs
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Removes addon directories left behind by processes that no longer run (kill -9, power loss). */
export function removeStale (dir: string): void {
  let names: string[]
  try { names = fs.readdirSync(dir) } catch { return }
  for (const name of names) {
    if (!name.startsWith(PREFIX)) continue
    const pid = Number(name.slice(PREFIX.length).split('-')[0])
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || alive(pid)) continue
    fs.rmSync(path.join(dir, name), { recursive: true, force: true })
  }
}

export type AddonLoader = (file: string) => void

/** Loads the addon into this thread: the check that the directory allows executable mappings. */
export const dlopenLoader: AddonLoader = (file) => {
  process.dlopen({ exports: {} }, file)
}

/**
 * Writes the addon bytes into a private directory under the first of dirs where it can be written
 * and loaded; returns the file's path. The directory is removed when this process exits.
 */
export function extractAddon (bytes: Uint8Array, dirs: readonly string[], load: AddonLoader = dlopenLoader): string {
  const failures: string[] = []
  for (const dir of dirs) {
    let priv: string | undefined
    try {
      removeStale(dir)
      priv = fs.mkdtempSync(path.join(dir, `${PREFIX}${process.pid}-`))
      const file = path.join(priv, 'better_sqlite3.node')
      fs.writeFileSync(file, bytes, { mode: 0o500, flag: 'wx' })
      load(file)
      const created = priv
      process.once('exit', () => { fs.rmSync(created, { recursive: true, force: true }) })
      return file
    } catch (err) {
      if (priv !== undefined) fs.rmSync(priv, { recursive: true, force: true })
      failures.push(`${dir}: ${(err as Error).message}`)
    }
  }
  throw new Error(`cannot extract the SQLite addon into any of these directories (set RUNTIME_DIRECTORY to a writable directory not mounted noexec):\n  ${failures.join('\n  ')}`)
}
