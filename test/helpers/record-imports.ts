// Preload (`node --import`) that writes every module URL the main thread resolves to the file named by
// RECORD_IMPORTS_TO, one per line. Worker threads are not recorded: they run this preload too
// (they inherit the flags) but register nothing.
import { register } from 'node:module'
import { isMainThread } from 'node:worker_threads'

const out = process.env.RECORD_IMPORTS_TO
if (isMainThread && out !== undefined && out !== '') register('./record-imports-hooks.js', import.meta.url, { data: { out } })
