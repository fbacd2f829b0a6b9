// Time for event stamps, event ids and TTLs. An edge box without a real-time clock may boot at 1970
// or at its last saved time until NTP syncs, so time never goes below the persisted floor (the highest
// time handed out before) and never goes backwards within a run (DESIGN.md "Store", clock floor).

import { Buffer } from 'node:buffer'
import { randomFillSync } from 'node:crypto'
import { v7 as uuidv7 } from 'uuid'

export interface ClockOptions {
  /** The persisted floor in ms since the epoch: the highest time used by the previous run. */
  floorMs: number
  /** Wall clock in ms since the epoch; Date.now by default (a seam for tests). */
  wall?: () => number
  /** Monotonic clock in ms (performance.now by default): tells a clock step from time passing. */
  mono?: () => number
  /** A jump of handed-out time this much beyond the monotonic time elapsed counts as a step. */
  stepThresholdMs?: number
}

/** Handed-out time jumped ahead of elapsed time: events stamped at or before `beforeMs` are `deltaMs` older than they look. */
export interface ClockStep { beforeMs: number, deltaMs: number }

export class Clock {
  readonly #wall: () => number
  readonly #startFloor: number
  readonly #mono: () => number
  readonly #stepThreshold: number
  #last: number
  #lastMono: number
  #steps: ClockStep[] = []

  constructor (opts: ClockOptions) {
    this.#wall = opts.wall ?? Date.now
    this.#mono = opts.mono ?? (() => performance.now())
    this.#stepThreshold = opts.stepThresholdMs ?? 60_000
    this.#lastMono = this.#mono()
    // A missing or garbled floor (NaN, negative) only loses the protection, it must not stop start-up.
    const floor = Number.isFinite(opts.floorMs) && opts.floorMs > 0 ? Math.floor(opts.floorMs) : 0
    this.#startFloor = floor
    this.#last = floor
  }

  /** max(wall, floor, last value handed out), in ms since the epoch: never decreases. */
  now (): number {
    const wall = Math.floor(this.#wall())
    const mono = this.#mono()
    if (wall > this.#last) {
      // NTP arriving after days offline (or a box that booted at 1970 and sat on the floor): the
      // time handed out jumps. Record the jump beyond elapsed time so TTLs do not see it as age.
      const jump = wall - this.#last - (mono - this.#lastMono)
      if (jump > this.#stepThreshold) this.#steps.push({ beforeMs: this.#last, deltaMs: Math.floor(jump) })
      this.#last = wall
    }
    this.#lastMono = mono
    return this.#last
  }

  /** Steps recorded since the last call (the store persists them for TTL). */
  takeSteps (): ClockStep[] {
    const s = this.#steps
    this.#steps = []
    return s
  }

  /** The highest value handed out (or the start floor): the value to persist as the next floor. */
  get floorMs (): number {
    return this.#last
  }

  /** Whether the wall clock has reached the floor persisted by the previous run (gridgate_clock_synced). */
  synced (): boolean {
    return this.#wall() >= this.#startFloor
  }

  /** now() as RFC 3339 with milliseconds, UTC. */
  nowIso (): string {
    return new Date(this.now()).toISOString()
  }
}

const SEQ_MAX = 0xffff_ffff // uuid's v7 takes a 32-bit counter (rand_a 12 bits + 20 bits of rand_b)

/** Each byte's two lowercase hex digits, the first in the low byte. */
const HEX_PAIRS = Uint16Array.from({ length: 256 }, (_, b) => {
  const h = b.toString(16).padStart(2, '0')
  return h.charCodeAt(0) | (h.charCodeAt(1) << 8)
})

/**
 * UUIDv7 ids (RFC 9562) that are strictly increasing, as bytes and as strings, for the life of the
 * process, and that follow the clock's floor. Counter per RFC 9562 §6.2 method 1: each new millisecond
 * starts the counter at a random 31-bit value (top bit clear, leaving 2^31 increments of headroom);
 * within a millisecond it is incremented; on overflow the time stamp moves one ms ahead of the clock.
 */
export class IdGenerator {
  readonly #clock: Clock
  #msecs = -1
  #seq = 0
  readonly #pool = new Uint32Array(64)
  #poolIndex = 64
  /** Random bytes for the ids' rand_b, drawn 4 KiB at a time: uuid's own rng asks the OS for 16 bytes per id. */
  readonly #bytes = new Uint8Array(4096)
  #bytesIndex = 4096
  readonly #seedSource: () => number
  /** The id being made: uuid writes its 16 bytes here, then their 36-character text goes next to it. */
  readonly #id = new Uint8Array(16)
  readonly #text = Buffer.alloc(36)

  /** `opts.seed` replaces the random counter seed (tests); the default is 31 random bits. */
  constructor (clock: Clock, opts: { seed?: () => number } = {}) {
    this.#clock = clock
    this.#seedSource = opts.seed ?? (() => this.#randomSeed())
  }

  /**
   * The next id. `msecs` (normally a value just taken from the clock, so that the event's time and
   * its id agree) defaults to clock.now(); a value below the last id's time stamp is raised to it.
   */
  next (msecs: number = this.#clock.now()): string {
    const ms = Math.floor(msecs)
    if (ms > this.#msecs) {
      this.#msecs = ms
      this.#seq = this.#seedSource()
    } else if (this.#seq < SEQ_MAX) {
      this.#seq++
    } else {
      this.#msecs++
      this.#seq = this.#seedSource()
    }
    uuidv7({ msecs: this.#msecs, seq: this.#seq, random: this.#randomBytes() }, this.#id, 0)
    return this.#format()
  }

  /**
   * The id's bytes as 8-4-4-4-12 lowercase hex, uuid's own text form, made as one flat string: uuid's
   * stringify concatenates 20 pieces (a rope of strings per id, and slower to write out later).
   */
  #format (): string {
    const id = this.#id
    const text = this.#text
    let at = 0
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) text[at++] = 0x2d
      const pair = HEX_PAIRS[id[i]!]!
      text[at++] = pair & 0xff
      text[at++] = pair >> 8
    }
    return text.toString('latin1', 0, 36)
  }

  #randomBytes (): Uint8Array {
    if (this.#bytesIndex === this.#bytes.length) {
      randomFillSync(this.#bytes)
      this.#bytesIndex = 0
    }
    const out = this.#bytes.subarray(this.#bytesIndex, this.#bytesIndex + 16)
    this.#bytesIndex += 16
    return out
  }

  #randomSeed (): number {
    if (this.#poolIndex === this.#pool.length) {
      randomFillSync(this.#pool)
      this.#poolIndex = 0
    }
    return (this.#pool[this.#poolIndex++] as number) >>> 1
  }
}
