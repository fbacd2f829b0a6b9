// aedes-persistence 10.3.1 ships its in-memory class as CommonJS without a declaration next to
// `asyncPersistence.js`; this declares the part adapters/mqtt/persistence.ts extends.
declare module 'aedes-persistence/asyncPersistence.js' {
  import type { Readable } from 'node:stream'
  class MemoryPersistence {
    constructor (opts?: Record<string, unknown>)
    setup (broker: unknown): Promise<void>
    storeRetained (packet: unknown): Promise<void>
    createRetainedStreamCombi (patterns: string[]): Readable
    addSubscriptions (client: { id: string }, subs: Array<{ topic: string, qos: number }>): Promise<void>
    cleanSubscriptions (client: { id: string }): Promise<void>
    outgoingEnqueue (sub: { clientId: string }, packet: unknown): Promise<void>
    outgoingEnqueueCombi (subs: Array<{ clientId: string }>, packet: unknown): Promise<void>
    outgoingUpdate (client: { id: string }, packet: unknown): Promise<void>
    outgoingClearMessageId (client: { id: string }, packet: unknown): Promise<unknown>
    outgoingStream (client: { id: string }): Readable
    incomingStorePacket (client: { id: string }, packet: unknown): Promise<void>
    incomingGetPacket (client: { id: string }, packet: unknown): Promise<unknown>
    incomingDelPacket (client: { id: string }, packet: unknown): Promise<void>
    destroy (): Promise<void>
  }
  export = MemoryPersistence
}
