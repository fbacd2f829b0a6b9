// Block1 (RFC 7959) reassembly for uploads larger than one datagram. Blocks are matched by endpoint,
// device, topic and Request-Tag (RFC 9175 §3), never by token: libcoap sends every block with a new
// token. Memory is bounded: every upload is capped at maxPayloadSize, the number of uploads at once
// per endpoint and in total is capped, and an upload that stops arriving expires.

export interface BlockOption {
  num: number
  more: boolean
  /** SZX: the block size is 2 ** (szx + 4) bytes. */
  szx: number
}

/** Parses a Block1/Block2 option value (RFC 7959 §2.2); undefined when malformed (> 3 bytes, SZX 7). */
export function parseBlock (value: Buffer): BlockOption | undefined {
  if (value.length > 3) return undefined
  let n = 0
  for (const b of value) n = (n << 8) | b
  const szx = n & 0x7
  if (szx === 7) return undefined
  return { num: n >>> 4, more: (n & 0x8) !== 0, szx }
}

export function encodeBlock (b: BlockOption): Buffer {
  const n = (b.num << 4) | (b.more ? 0x8 : 0) | b.szx
  if (n === 0) return Buffer.alloc(0)
  if (n < 0x100) return Buffer.from([n])
  if (n < 0x10000) return Buffer.from([n >> 8, n & 0xff])
  return Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff])
}

export const blockSize = (szx: number): number => 2 ** (szx + 4)

export interface BlockwiseLimits {
  maxPayloadSize: number
  maxTransfers: number
  maxPerEndpoint: number
  timeoutMs: number
}

interface Transfer {
  endpoint: string
  chunks: Buffer[]
  bytes: number
  /** The block number expected next. */
  next: number
  /** The Content-Format of the first block; later blocks must not change it. */
  contentFormat: number | undefined
  timer: NodeJS.Timeout
}

export type BlockResult =
  | { kind: 'continue' }
  | { kind: 'complete', payload: Buffer }
  /** 4.08: a block out of order or without a first block. */
  | { kind: 'incomplete', reason: string }
  /** 4.13: the upload exceeds maxPayloadSize. */
  | { kind: 'too-large' }
  /** 4.00: a block whose size disagrees with its SZX, or whose Content-Format changed. */
  | { kind: 'bad', reason: string }
  /** 5.03: too many uploads at once. */
  | { kind: 'busy' }

export class Block1Reassembly {
  private readonly transfers = new Map<string, Transfer>()
  private readonly perEndpoint = new Map<string, number>()

  constructor (private readonly limits: BlockwiseLimits) {}

  get size (): number { return this.transfers.size }

  /**
   * Adds one block of the upload named `key` (which starts with the endpoint). `size1` is the total
   * size the client announced, if any.
   */
  add (endpoint: string, key: string, block: BlockOption, payload: Buffer, contentFormat: number | undefined, size1: number | undefined): BlockResult {
    const size = blockSize(block.szx)
    if (block.more && payload.length !== size) return this.fail(key, { kind: 'bad', reason: `a block with M=1 must carry exactly ${size} bytes, got ${payload.length}` })
    if (!block.more && payload.length > size) return this.fail(key, { kind: 'bad', reason: `the last block carries more than ${size} bytes` })
    if (size1 !== undefined && size1 > this.limits.maxPayloadSize) return this.fail(key, { kind: 'too-large' })
    let t = this.transfers.get(key)
    if (block.num === 0) {
      if (t !== undefined) this.drop(key)
      if (!block.more) return payload.length > this.limits.maxPayloadSize ? { kind: 'too-large' } : { kind: 'complete', payload }
      if (this.transfers.size >= this.limits.maxTransfers || (this.perEndpoint.get(endpoint) ?? 0) >= this.limits.maxPerEndpoint) return { kind: 'busy' }
      t = { endpoint, chunks: [], bytes: 0, next: 0, contentFormat, timer: this.expiry(key) }
      this.transfers.set(key, t)
      this.perEndpoint.set(endpoint, (this.perEndpoint.get(endpoint) ?? 0) + 1)
    } else if (t === undefined) {
      return { kind: 'incomplete', reason: `block ${block.num} without block 0` }
    } else if (block.num !== t.next || block.num * size !== t.bytes) {
      return this.fail(key, { kind: 'incomplete', reason: `block ${block.num} (${size} bytes) out of order: expected block ${t.next} at byte ${t.bytes}` })
    } else if (contentFormat !== t.contentFormat) {
      return this.fail(key, { kind: 'bad', reason: 'the Content-Format changed between blocks' })
    } else {
      t.timer.refresh()
    }
    if (t.bytes + payload.length > this.limits.maxPayloadSize) return this.fail(key, { kind: 'too-large' })
    t.chunks.push(payload)
    t.bytes += payload.length
    t.next = block.num + 1
    if (block.more) return { kind: 'continue' }
    const whole = Buffer.concat(t.chunks, t.bytes)
    this.drop(key)
    return { kind: 'complete', payload: whole }
  }

  clear (): void {
    for (const key of [...this.transfers.keys()]) this.drop(key)
  }

  private fail (key: string, r: BlockResult): BlockResult {
    this.drop(key)
    return r
  }

  private expiry (key: string): NodeJS.Timeout {
    const timer = setTimeout(() => this.drop(key), this.limits.timeoutMs)
    timer.unref()
    return timer
  }

  private drop (key: string): void {
    const t = this.transfers.get(key)
    if (t === undefined) return
    clearTimeout(t.timer)
    this.transfers.delete(key)
    const n = (this.perEndpoint.get(t.endpoint) ?? 1) - 1
    if (n <= 0) this.perEndpoint.delete(t.endpoint)
    else this.perEndpoint.set(t.endpoint, n)
  }
}
