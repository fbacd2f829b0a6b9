// aedes persistence for gridgate: aedes-persistence's in-memory implementation, with
// - retained messages written through to the store (SQLite, through the writer worker) and loaded
//   from it at start, capped at mqtt.maxRetained;
// - offline queues capped at mqtt.maxOfflineMessages per session, dropping the oldest (counted);
// - per-client maps removed once empty (the in-memory default keeps one entry per client id forever).
// Sessions (subscriptions, queues, wills) stay in memory: after a restart they are gone.
import { Readable } from 'node:stream'
import MemoryPersistence from 'aedes-persistence/asyncPersistence.js'
import type { Client, PublishPacket } from 'aedes'

/** What this persistence needs from the store; the adapter knows nothing about SQLite. */
export interface RetainedBackend {
  load (max: number): Promise<{ rows: RetainedMessage[], deleted: number }>
  /** Resolves once committed; an empty payload deletes the topic. */
  write (row: RetainedMessage): Promise<void>
}

export interface RetainedMessage { topic: string, payload: Uint8Array, qos: number, properties: string | null, updatedMs: number }

export interface BrokerPersistenceOptions {
  retained: RetainedBackend
  maxRetained: number
  maxOfflineMessages: number
  /** Messages dropped from the head of one session's queue. */
  onOfflineDropped: (clientId: string, count: number) => void
  /** A retained message that was delivered but not retained because mqtt.maxRetained was reached. */
  onRetainedRefused: (topic: string) => void
  now: () => number
}

/** The fields of an aedes packet kept in memory (what aedes-packet's constructor copies). */
interface QueuedPacket {
  cmd: string
  topic: string
  payload: Buffer | string
  qos: number
  retain: boolean
  dup: boolean
  brokerId?: string
  brokerCounter?: number
  messageId?: number | undefined
  clientId?: string
  nl?: boolean
  properties?: Record<string, unknown>
  messageExpiry?: number
}

type AnyPacket = QueuedPacket & Record<string, unknown>

const DONE: Promise<void> = Promise.resolve()

function copyPacket (p: AnyPacket): QueuedPacket {
  const q: QueuedPacket = {
    cmd: p.cmd ?? 'publish',
    topic: p.topic,
    payload: p.payload ?? Buffer.alloc(0),
    qos: p.qos ?? 0,
    retain: p.retain ?? false,
    dup: p.dup ?? false,
  }
  if (p.brokerId !== undefined) q.brokerId = p.brokerId
  if (p.brokerCounter !== undefined) q.brokerCounter = p.brokerCounter
  if (Object.hasOwn(p, 'clientId')) q.clientId = p.clientId as string
  if (Object.hasOwn(p, 'nl')) q.nl = p.nl as boolean
  if (Object.hasOwn(p, 'properties')) q.properties = p.properties as Record<string, unknown>
  if (Object.hasOwn(p, 'messageExpiry')) q.messageExpiry = p.messageExpiry as number
  // [MQTT-2.3.1-1] a queued packet gets its packet identifier when it is sent.
  if (q.qos > 0) q.messageId = undefined
  return q
}

/** MQTT 5 publish properties as JSON; binary values (correlation data) as `{ "$base64": … }`. */
export function encodeProperties (props: Record<string, unknown> | undefined): string | null {
  if (props === undefined) return null
  const kept: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(props)) {
    // Connection-scoped or per-delivery properties are not part of the retained message.
    if (v === undefined || k === 'topicAlias' || k === 'subscriptionIdentifier') continue
    kept[k] = v
  }
  if (Object.keys(kept).length === 0) return null
  return JSON.stringify(kept, (_k, v: unknown) => {
    const b = v as { type?: unknown, data?: unknown }
    if (b !== null && typeof b === 'object' && b.type === 'Buffer' && Array.isArray(b.data)) return { $base64: Buffer.from(b.data as number[]).toString('base64') }
    return v
  })
}

export function decodeProperties (json: string | null): Record<string, unknown> | undefined {
  if (json === null) return undefined
  return JSON.parse(json, (_k, v: unknown) => {
    const b = v as { $base64?: unknown }
    if (b !== null && typeof b === 'object' && typeof b.$base64 === 'string') return Buffer.from(b.$base64, 'base64')
    return v
  }) as Record<string, unknown>
}

export class BrokerPersistence extends MemoryPersistence {
  /**
   * Retained messages in memory by topic, as stored (mirrors the parent's private map): for the cap,
   * and to skip the write when a device publishes the same retained message again.
   */
  private readonly retainedTopics = new Map<string, { payload: Buffer | string, qos: number, properties: string | null }>()
  /** Topics whose retained write is committing; they count against the cap. */
  private readonly pendingRetained = new Set<string>()
  /**
   * Retained writes already made durable (and put in memory) by the publish hook, by topic and the
   * payload object aedes will hand to storeRetained: that call then has nothing left to do.
   */
  private readonly durable = new Map<string, Buffer | string>()
  private readonly outgoing = new Map<string, QueuedPacket[]>()
  /** QoS 2 publishes received and not yet released (PUBREL), per client and packet id. */
  private readonly incoming = new Map<string, Map<number, QueuedPacket>>()
  private queued = 0
  /**
   * Sessions that have stored a QoS 1/2 subscription and not ended (a superset of those the parent's
   * topic index holds: an unsubscribe leaves its session here). While it is empty no publish can go
   * to any session's queue (hasPersistentSubscriptions).
   */
  private readonly subscribedSessions = new Set<string>()

  constructor (private readonly o: BrokerPersistenceOptions) {
    super()
  }

  get retainedCount (): number { return this.retainedTopics.size }
  /** Messages held in every session's queue (offline and not yet acknowledged). */
  get queuedMessages (): number { return this.queued }

  /** Loads every stored retained message into memory (their number is capped, so this is bounded). */
  override async setup (broker: unknown): Promise<void> {
    await super.setup(broker)
    const { rows } = await this.o.retained.load(this.o.maxRetained)
    for (const r of rows) await this.remember(retainedPacket(r), r.properties)
  }

  /** Whether a retained message on `topic` fits under mqtt.maxRetained (replacing one always fits). */
  admitsRetained (topic: string): boolean {
    return this.retainedTopics.has(topic) || this.pendingRetained.has(topic) ||
      this.retainedTopics.size + this.pendingRetained.size < this.o.maxRetained
  }

  /**
   * Called by the publish hook before the device is acknowledged: commits the retained message (or
   * its deletion) and puts it in memory. false = not retained, because mqtt.maxRetained is reached.
   */
  async persistRetained (packet: PublishPacket): Promise<boolean> {
    const payload = packet.payload
    const empty = payload.length === 0
    if (!empty && !this.admitsRetained(packet.topic)) return false
    const now = this.o.now()
    const props = (packet as { properties?: Record<string, unknown> }).properties
    const interval = props?.messageExpiryInterval
    const properties = empty ? null : encodeProperties(props)
    // The same retained message again (a device re-announcing its state) or deleting what is not
    // there: the store already says so, no commit needed. With a Message Expiry the time matters.
    const held = this.retainedTopics.get(packet.topic)
    const unchanged = empty
      ? held === undefined && !this.pendingRetained.has(packet.topic)
      : held !== undefined && interval === undefined && held.qos === packet.qos && held.properties === properties && sameBytes(held.payload, payload)
    if (!unchanged) {
      const wasPending = this.pendingRetained.has(packet.topic)
      this.pendingRetained.add(packet.topic)
      try {
        await this.o.retained.write({
          topic: packet.topic,
          payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
          qos: packet.qos,
          properties,
          updatedMs: now,
        })
      } finally {
        if (!wasPending) this.pendingRetained.delete(packet.topic)
      }
    }
    await this.remember({
      cmd: 'publish',
      topic: packet.topic,
      payload,
      qos: packet.qos,
      retain: true,
      dup: false,
      ...(props === undefined ? {} : { properties: props }),
      ...(typeof interval === 'number' && interval > 0 ? { messageExpiry: now + interval * 1000 } : {}),
    }, properties)
    // Abandoned publishes (connection gone before aedes published) leave marks: keep them bounded.
    if (this.durable.size > 2 * this.o.maxRetained + 1000) this.durable.clear()
    this.durable.set(packet.topic, payload)
    return true
  }

  /**
   * aedes' own retained path. After the publish hook it only clears the mark; otherwise (a retained
   * message deleted because its MQTT 5 Message Expiry passed) the change is written through first.
   */
  override async storeRetained (packet: AnyPacket): Promise<void> {
    if (this.durable.get(packet.topic) === packet.payload) {
      this.durable.delete(packet.topic)
      return
    }
    const empty = packet.payload.length === 0
    if (!empty && !this.admitsRetained(packet.topic)) {
      this.o.onRetainedRefused(packet.topic)
      return
    }
    const now = this.o.now()
    const properties = empty ? null : encodeProperties(packet.properties)
    await this.o.retained.write({
      topic: packet.topic,
      payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload,
      qos: packet.qos,
      properties,
      updatedMs: now,
    })
    await this.remember(packet, properties)
  }

  private async remember (packet: QueuedPacket, properties: string | null): Promise<void> {
    await super.storeRetained(packet as never)
    if (packet.payload.length === 0) this.retainedTopics.delete(packet.topic)
    else this.retainedTopics.set(packet.topic, { payload: packet.payload, qos: packet.qos, properties })
  }

  // Offline queues: one array per session, capped, drop-oldest. The queue also holds messages sent
  // to a connected persistent session and not yet acknowledged (aedes keeps them there for resend).

  override async outgoingEnqueue (sub: { clientId: string }, packet: AnyPacket): Promise<void> {
    this.enqueue(sub.clientId, packet)
  }

  override addSubscriptions (client: Client, subs: Array<{ topic: string, qos: number }>): Promise<void> {
    // Before the parent indexes them (synchronously, within this call): no publish can find the index
    // holding a subscription while hasPersistentSubscriptions() still says there is none.
    if (subs.some(s => s.qos > 0)) this.subscribedSessions.add(client.id)
    return super.addSubscriptions(client, subs)
  }

  /**
   * Whether a publish may have to go to a session's queue; read by aedes for every QoS 1/2 publish
   * (patches/aedes+2.0.0-beta.1.patch), which skips its offline-queue step when it is false.
   */
  hasPersistentSubscriptions (): boolean {
    return this.subscribedSessions.size > 0
  }

  override outgoingEnqueueCombi (subs: Array<{ clientId: string }>, packet: AnyPacket): Promise<void> {
    for (const sub of subs) this.enqueue(sub.clientId, packet)
    return DONE
  }

  private enqueue (clientId: string, packet: AnyPacket): void {
    let queue = this.outgoing.get(clientId)
    if (queue === undefined) {
      queue = []
      this.outgoing.set(clientId, queue)
    }
    queue.push(copyPacket(packet))
    this.queued++
    const over = queue.length - this.o.maxOfflineMessages
    if (over > 0) {
      queue.splice(0, over)
      this.queued -= over
      this.o.onOfflineDropped(clientId, over)
    }
  }

  override async outgoingUpdate (client: Client, packet: AnyPacket): Promise<void> {
    const queue = this.outgoing.get(client.id)
    if (queue === undefined) return
    for (let i = 0; i < queue.length; i++) {
      const q = queue[i]!
      if (q.brokerId === packet.brokerId) {
        if (q.brokerCounter === packet.brokerCounter) {
          q.messageId = packet.messageId as number | undefined
          return
        }
      } else if (q.messageId === packet.messageId) {
        queue[i] = packet
        return
      }
    }
    // The in-memory default throws "no such packet" here, and aedes then closes the connection.
    // A packet missing from a capped queue was dropped as its oldest: it is still sent (at most
    // once more), and nothing is kept for it.
  }

  override async outgoingClearMessageId (client: Client, packet: { messageId?: number | undefined }): Promise<never> {
    const queue = this.outgoing.get(client.id)
    if (queue === undefined) return undefined as never
    for (let i = 0; i < queue.length; i++) {
      const q = queue[i]!
      if (q.messageId === packet.messageId) {
        queue.splice(i, 1)
        this.queued--
        if (queue.length === 0) this.outgoing.delete(client.id)
        return q as never
      }
    }
    return undefined as never
  }

  override outgoingStream (client: Client): Readable {
    // A copy: aedes clears entries while it streams them.
    return Readable.from([...(this.outgoing.get(client.id) ?? [])])
  }

  /** Ends a session: its subscriptions (parent), its whole queue and its unreleased QoS 2 packets. */
  override async cleanSubscriptions (client: Client): Promise<void> {
    await super.cleanSubscriptions(client)
    this.subscribedSessions.delete(client.id)
    const queue = this.outgoing.get(client.id)
    if (queue !== undefined) {
      this.queued -= queue.length
      this.outgoing.delete(client.id)
    }
    this.incoming.delete(client.id)
  }

  // QoS 2 receive state. The in-memory default keeps it until PUBREL, also for a client that never
  // sends one and never returns; here it goes with the session (forgetSession, cleanSubscriptions).

  override async incomingStorePacket (client: Client, packet: AnyPacket): Promise<void> {
    let packets = this.incoming.get(client.id)
    if (packets === undefined) {
      packets = new Map()
      this.incoming.set(client.id, packets)
    }
    const copy = copyPacket(packet)
    copy.messageId = packet.messageId as number
    packets.set(copy.messageId, copy)
  }

  override async incomingGetPacket (client: Client, packet: { messageId?: number | undefined }): Promise<QueuedPacket> {
    const p = this.incoming.get(client.id)?.get(packet.messageId ?? -1)
    if (p === undefined) throw new Error('no such packet')
    return p
  }

  override async incomingDelPacket (client: Client, packet: { messageId?: number | undefined }): Promise<void> {
    const packets = this.incoming.get(client.id)
    if (packets === undefined || !packets.delete(packet.messageId ?? -1)) throw new Error('no such packet')
    if (packets.size === 0) this.incoming.delete(client.id)
  }

  /** A session that ends with its connection (clean session / Session Expiry Interval 0) keeps nothing. */
  forgetSession (clientId: string): void {
    this.incoming.delete(clientId)
  }
}

function sameBytes (a: Buffer | string, b: Buffer | string): boolean {
  const bytes = (x: Buffer | string): Buffer => typeof x === 'string' ? Buffer.from(x) : x
  return bytes(a).equals(bytes(b))
}

function retainedPacket (r: RetainedMessage): QueuedPacket {
  const properties = decodeProperties(r.properties)
  const interval = properties?.messageExpiryInterval
  return {
    cmd: 'publish',
    topic: r.topic,
    payload: Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength),
    qos: r.qos,
    retain: true,
    dup: false,
    ...(properties === undefined ? {} : { properties }),
    // MQTT 5 Message Expiry counts from when the message was retained, across restarts too.
    ...(typeof interval === 'number' && interval > 0 ? { messageExpiry: r.updatedMs + interval * 1000 } : {}),
  }
}
