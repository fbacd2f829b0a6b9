// The reader thread's buffers for pages of backlog, handed back by the main thread once a page was
// delivered, and written again with the next pages.
//
// A page reaches the main thread as transferred ArrayBuffers (the rows' metadata, their bodies, the
// CloudEvents JSON body): about 0.7 MB per 500 events. V8 counts external memory allocated since the
// last full collection against the old generation's budget, so during a 50,000 events/s drain the
// main thread started a full (mark-compact) collection every 150-250 ms although its heap held
// 15 MiB (`--trace-gc` and `--trace-incremental-marking`: marking started with 23 MB of the budget
// seemingly left), 40-70 ms of the event loop a second. A buffer transferred back leaves the main
// thread's count as it came, and is not allocated again: the gateway's CPU per drained event fell
// from 26.6-27.7 to 17.8-20.3 µs (`npm run bench -- --scenario 4`, alternated pairs).

/** How many buffers, and how many bytes in all, the pool keeps at most; the rest go to the collector. */
export const POOL_MAX_BUFFERS = 8
export const POOL_MAX_BYTES = 8 * 1024 * 1024
/** A kept buffer serves a request of at least 1/WASTE_FACTOR of its size (a one-row page takes no megabyte). */
const WASTE_FACTOR = 4

export class BufferPool {
  private readonly free: ArrayBuffer[] = []
  private held = 0
  /** Requests served from the pool, and with a new allocation. */
  reused = 0
  allocated = 0

  constructor (private readonly maxBuffers = POOL_MAX_BUFFERS, private readonly maxBytes = POOL_MAX_BYTES) {}

  /** Keeps what fits. A detached buffer (byteLength 0: transferred on already) is skipped. */
  put (buffers: readonly ArrayBuffer[]): void {
    for (const b of buffers) {
      if (b.byteLength === 0 || this.free.length >= this.maxBuffers || this.held + b.byteLength > this.maxBytes) continue
      this.free.push(b)
      this.held += b.byteLength
    }
  }

  /** The smallest kept buffer of at least `bytes` (and not too large for them), else a new one. */
  take (bytes: number): ArrayBuffer {
    let best = -1
    for (let i = 0; i < this.free.length; i++) {
      const size = this.free[i]!.byteLength
      if (size < bytes || size > Math.max(bytes, 1) * WASTE_FACTOR) continue
      if (best === -1 || size < this.free[best]!.byteLength) best = i
    }
    if (best === -1) {
      this.allocated++
      return new ArrayBuffer(bytes)
    }
    const b = this.free[best]!
    this.free[best] = this.free[this.free.length - 1]!
    this.free.pop()
    this.held -= b.byteLength
    this.reused++
    return b
  }

  /** Buffers and bytes kept. */
  get size (): { buffers: number, bytes: number } { return { buffers: this.free.length, bytes: this.held } }
}

/**
 * An uplink sink's pool for the request bodies it renders itself: one request in flight and one batch
 * rendered ahead need two buffers. A body goes back once delivered (not sent again) and carries the
 * next batch; a fresh buffer per batch would count against V8's heap budget as above (at 30,000
 * events/s about one full collection a second).
 */
export function sinkBodyPool (): BufferPool {
  return new BufferPool(2, 2 * 1024 * 1024)
}
