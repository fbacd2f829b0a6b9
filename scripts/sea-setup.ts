// First module of the single executable (see scripts/sea-main.ts): makes the embedded assets
// available before the CLI loads anything. Runs only inside the executable.
import fs from 'node:fs'
import path from 'node:path'
import { getAsset } from 'node:sea'
import { embedProto } from '../gateway/proto/index.js'
import { setWorkerRuntime } from '../store-forward/worker-client.js'
import { setConfigWorkerSource } from '../config/isolated.js'
import { setMallocAddonLocator } from '../gateway/malloc.js'
import { addonDirs, extractAddon } from './sea-addon.js'

/** Written by scripts/build-binary.ts as the asset 'manifest.json'. */
export interface SeaManifest {
  version: string
  node: string
  protos: string[]
}

const manifest = JSON.parse(getAsset('manifest.json', 'utf8')) as SeaManifest
for (const name of manifest.protos) embedProto(name, getAsset(`proto/${name}`, 'utf8'))

setConfigWorkerSource(getAsset('config-worker.js', 'utf8'))

// The addon is written out only when the first store worker starts, so `--help`, `check-config`
// and `hash-token` write nothing; every worker thread loads the same file.
let addonFile: string | undefined
setWorkerRuntime({
  source: getAsset('sqlite-worker.js', 'utf8'),
  nativeBinding: (dbPath) => {
    addonFile ??= extractAddon(new Uint8Array(getAsset('better_sqlite3.node')), addonDirs(process.env, dbPath))
    return addonFile
  },
})

// The malloc_trim addon goes next to the SQLite addon, in the same private directory (removed at
// exit), when the quiet gateway first trims; that is after the store has started.
let mallocFile: string | null | undefined
setMallocAddonLocator(() => {
  if (mallocFile !== undefined) return mallocFile
  if (addonFile === undefined) return null
  const file = path.join(path.dirname(addonFile), 'gridgate_malloc.node')
  fs.writeFileSync(file, new Uint8Array(getAsset('gridgate_malloc.node')), { mode: 0o500, flag: 'wx' })
  mallocFile = file
  return file
})
