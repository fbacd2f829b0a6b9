// Loaded into the gateway with `--import` (NODE_OPTIONS) by `npm run bench -- --profile`: profiles the
// main thread with the inspector and writes a .cpuprofile (open it in Chrome DevTools or speedscope)
// and a .heapprofile (allocation sampling; DevTools' Memory tab) into BENCH_PROFILE_DIR when the
// process exits. (`--cpu-prof` is not allowed in NODE_OPTIONS.)
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
  // Allocations too: one sample per 16 KiB allocated, kept also when the object was collected, so the
  // profile shows where the garbage comes from (the bench sums it into allocatedKiBPerMessage).
  session.post('HeapProfiler.enable')
  session.post('HeapProfiler.startSampling', { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
  process.once('exit', () => {
    // Same-thread sessions answer synchronously, so this works inside 'exit'.
    fs.mkdirSync(dir, { recursive: true })
    session.post('Profiler.stop', (err, r) => {
      if (err !== null) return
      fs.writeFileSync(path.join(dir, `gridgate-${process.pid}.cpuprofile`), JSON.stringify(r.profile))
    })
    session.post('HeapProfiler.stopSampling', (err, r) => {
      if (err !== null) return
      fs.writeFileSync(path.join(dir, `gridgate-${process.pid}.heapprofile`), JSON.stringify(r.profile))
    })
  })
}
