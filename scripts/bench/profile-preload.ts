// Loaded into the gateway with `--import` (NODE_OPTIONS) by `npm run bench -- --profile`: profiles the
// main thread with the inspector and writes a .cpuprofile (open it in Chrome DevTools or speedscope)
// into BENCH_PROFILE_DIR when the process exits. (`--cpu-prof` is not allowed in NODE_OPTIONS.)
import fs from 'node:fs'
import path from 'node:path'
import inspector from 'node:inspector'

const dir = process.env.BENCH_PROFILE_DIR
if (dir !== undefined && dir !== '') {
  const session = new inspector.Session()
  session.connect()
  session.post('Profiler.enable')
  session.post('Profiler.setSamplingInterval', { interval: 500 })
  session.post('Profiler.start')
  process.once('exit', () => {
    // Same-thread sessions answer synchronously, so this works inside 'exit'.
    session.post('Profiler.stop', (err, r) => {
      if (err !== null) return
      fs.mkdirSync(dir, { recursive: true })
      fs.writeFileSync(path.join(dir, `gridgate-${process.pid}.cpuprofile`), JSON.stringify(r.profile))
    })
  })
}
