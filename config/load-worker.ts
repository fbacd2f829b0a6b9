// The thread config/isolated.ts starts: loads the config with loadConfig and posts the result, or the
// error's code, message and details, then ends.
import { parentPort, workerData } from 'node:worker_threads'
import { isGridgateError } from '../gateway/errors.js'
import { loadConfig, type LoadOptions } from './load.js'
import type { LoadReply } from './isolated.js'

function reply (): LoadReply {
  try {
    return { ok: true, config: loadConfig(workerData as LoadOptions) }
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err))
    return isGridgateError(err)
      ? { ok: false, error: { code: err.code, message: err.message, details: [...err.details] } }
      : { ok: false, error: { message: e.message, ...(e.stack === undefined ? {} : { stack: e.stack }) } }
  }
}

parentPort!.postMessage(reply())
