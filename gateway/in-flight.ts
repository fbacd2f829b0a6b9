/**
 * Requests under way (device messages whose commit has not answered yet), counted so that a stopping
 * adapter can wait until every one of them is answered. A count and not a set of the requests'
 * promises: adding and deleting one promise per message churned the set's table and kept the promises
 * alive into the garbage collector's copies (scenario 1 of the bench).
 */
export class InFlight {
  #count = 0
  #waiters: Array<() => void> = []

  get size (): number { return this.#count }

  begin (): void {
    this.#count++
  }

  end (): void {
    if (this.#count === 0) throw new Error('InFlight.end() without begin()')
    if (--this.#count > 0) return
    const waiters = this.#waiters
    this.#waiters = []
    for (const w of waiters) w()
  }

  /** Resolves once nothing is under way: at once when nothing is, else when the last one ends. */
  idle (): Promise<void> {
    if (this.#count === 0) return Promise.resolve()
    return new Promise((resolve) => { this.#waiters.push(resolve) })
  }
}
