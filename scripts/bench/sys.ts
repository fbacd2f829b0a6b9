// Measurement hygiene: what the machine and the processes under test looked like while measuring.
// Everything comes from /proc and statfs, so it works on any Linux without extra tools.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { Worker } from 'node:worker_threads'
import { percentile } from './stats.js'

const CLK_TCK = 100

export interface ProcSample {
  /** Resident set size (VmRSS), bytes. */
  rss: number
  /** Peak resident set size (VmHWM), bytes. */
  hwm: number
  /** User + system CPU seconds, all threads. */
  cpuSeconds: number
  /** Bytes this process caused to be sent to the storage layer (/proc/<pid>/io write_bytes). */
  writeBytes: number
}

export function procSample (pid: number): ProcSample | null {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024
    // Fields after the command name (which may hold spaces): utime is the 14th field, stime the 15th.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / CLK_TCK
    let writeBytes = 0
    try {
      writeBytes = Number(/^write_bytes:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0)
    } catch {}
    return { rss: kb('VmRSS'), hwm: kb('VmHWM'), cpuSeconds, writeBytes }
  } catch {
    return null
  }
}

/** The file system type of the directory (statfs), e.g. ext2/ext3 for ext4, tmpfs, xfs. */
export function fsTypeOf (dir: string): string {
  try {
    return execFileSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).trim()
  } catch {
    return 'unknown'
  }
}

/** The /proc/mounts entry that holds dir (longest mount point prefix). */
export function mountOf (dir: string): { mountPoint: string, fsType: string, device: string } {
  const real = fs.realpathSync(dir)
  let best = { mountPoint: '/', fsType: 'unknown', device: 'unknown' }
  for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [device, mountPoint, fsType] = line.split(' ')
    if (device === undefined || mountPoint === undefined || fsType === undefined) continue
    const mp = mountPoint.replace(/\\040/g, ' ')
    if ((real === mp || real.startsWith(mp.endsWith('/') ? mp : `${mp}/`)) && mp.length >= best.mountPoint.length) {
      best = { mountPoint: mp, fsType, device }
    }
  }
  return best
}

const MEMORY_FS = new Set(['tmpfs', 'ramfs', 'devtmpfs'])

/** Refuses a directory on a memory file system: fsync costs nothing there and the figures would lie. */
export function assertDiskBacked (dir: string): { statfs: string, mount: ReturnType<typeof mountOf> } {
  const statfs = fsTypeOf(dir)
  const mount = mountOf(dir)
  if (MEMORY_FS.has(statfs) || MEMORY_FS.has(mount.fsType)) {
    throw new Error(`${dir} is on ${mount.fsType} (${statfs}): fsync is free there, so durability costs would not be measured. Use --data-dir on a disk-backed file system.`)
  }
  return { statfs, mount }
}

/** fdatasync latency on the data dir's file system: n appends of 4 KiB, each followed by fdatasync. */
export function fdatasyncMs (dir: string, n: number): { count: number, p50: number, p99: number, max: number } {
  const file = path.join(dir, `fdatasync-probe-${process.pid}`)
  const fd = fs.openSync(file, 'w')
  const block = Buffer.alloc(4096, 0x61)
  const times: number[] = []
  try {
    for (let i = 0; i < n; i++) {
      fs.writeSync(fd, block, 0, block.length, i * block.length)
      const t = performance.now()
      fs.fdatasyncSync(fd)
      times.push(performance.now() - t)
    }
  } finally {
    fs.closeSync(fd)
    fs.rmSync(file, { force: true })
  }
  times.sort((a, b) => a - b)
  const r = (x: number): number => Number(x.toFixed(3))
  return { count: n, p50: r(percentile(times, 50)), p99: r(percentile(times, 99)), max: r(times.at(-1) ?? 0) }
}

/** RLIMIT_NOFILE of a process (soft, hard). */
export function nofile (pid: number | 'self' = 'self'): { soft: number, hard: number } {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))
  const n = (s: string | undefined): number => s === 'unlimited' ? Infinity : Number(s)
  return { soft: n(m?.[1]), hard: n(m?.[2]) }
}

export function loadAverage (): [number, number, number] {
  const [a = 0, b = 0, c = 0] = os.loadavg()
  return [Number(a.toFixed(2)), Number(b.toFixed(2)), Number(c.toFixed(2))]
}

/** Pressure stall totals (µs) from /proc/pressure (Linux PSI), or null where the kernel has none. */
export interface Pressure { at: number, cpuSome: number, ioSome: number, ioFull: number }

export function pressure (): Pressure | null {
  try {
    const total = (file: string, kind: 'some' | 'full'): number =>
      Number(new RegExp(`^${kind} .*total=(\\d+)`, 'm').exec(fs.readFileSync(`/proc/pressure/${file}`, 'utf8'))?.[1] ?? NaN)
    return { at: performance.now(), cpuSome: total('cpu', 'some'), ioSome: total('io', 'some'), ioFull: total('io', 'full') }
  } catch {
    return null
  }
}

/**
 * Share of the wall time between two samples in which some task waited for a CPU, some waited for I/O,
 * and all waited for I/O (percent). A scenario that ran while the disk or the CPUs were also busy with
 * something else shows it here: the load average alone does not tell a slow disk from a busy one.
 */
export function pressureBetween (a: Pressure | null, b: Pressure | null): { cpuSomePercent: number, ioSomePercent: number, ioFullPercent: number } | null {
  if (a === null || b === null) return null
  const wallUs = (b.at - a.at) * 1000
  const pct = (x: number, y: number): number => Number((100 * (y - x) / wallUs).toFixed(1))
  return { cpuSomePercent: pct(a.cpuSome, b.cpuSome), ioSomePercent: pct(a.ioSome, b.ioSome), ioFullPercent: pct(a.ioFull, b.ioFull) }
}

export function machine (): Record<string, unknown> {
  return {
    node: process.version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memTotalMiB: Math.round(os.totalmem() / 2 ** 20),
    hostname: os.hostname(),
  }
}

export const MiB = (bytes: number): number => Number((bytes / 2 ** 20).toFixed(1))

/** CPU seconds per thread of a process (tid → seconds); the main thread's tid is the pid. */
export function threadCpu (pid: number): Map<number, number> {
  const out = new Map<number, number>()
  let tids: string[] = []
  try { tids = fs.readdirSync(`/proc/${pid}/task`) } catch { return out }
  for (const tid of tids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      out.set(Number(tid), (Number(fields[11]) + Number(fields[12])) / CLK_TCK)
    } catch {}
  }
  return out
}

/** CPU seconds between two threadCpu samples: the main thread, and the busiest other threads. */
export function threadCpuDelta (pid: number, before: Map<number, number>, after: Map<number, number>): { mainSeconds: number, otherThreadsSeconds: number[] } {
  const d = (tid: number): number => Number(((after.get(tid) ?? 0) - (before.get(tid) ?? 0)).toFixed(2))
  const others = [...after.keys()].filter(t => t !== pid).map(d).filter(x => x > 0).sort((a, b) => b - a)
  return { mainSeconds: d(pid), otherThreadsSeconds: others.slice(0, 4) }
}

/**
 * The CPU the machine gives right now, in cores: `threads` worker threads each spinning for `ms`, CPU
 * seconds used over wall seconds. On a shared virtual machine this is well under the core count (the
 * rest goes to other guests), and every throughput figure is bounded by it.
 */
export async function cpuCapacity (threads: number, ms: number): Promise<number> {
  const before = process.cpuUsage()
  const started = performance.now()
  await Promise.all(Array.from({ length: threads }, async () => await new Promise<void>((resolve, reject) => {
    const w = new Worker(`const end = Date.now() + ${ms}; let n = 0; while (Date.now() < end) n++`, { eval: true })
    w.once('exit', () => resolve())
    w.once('error', reject)
  })))
  const used = process.cpuUsage(before)
  return Number(((used.user + used.system) / 1000 / (performance.now() - started)).toFixed(2))
}
