import mqtt, { type MqttClient, type IClientOptions } from 'mqtt'
import type { TestContext } from 'node:test'
import { TOKENS } from './gateway.js'

export async function connect (t: TestContext | null, port: number, opts: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...opts })
  t?.after(() => { client.end(true) })
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve())
    client.once('error', reject)
    client.once('close', () => reject(new Error('connection closed before CONNACK')))
  })
  return client
}

/** Resolves with the CONNACK error (return/reason code) the broker refused with. */
export function connectRefused (port: number, opts: IClientOptions): Promise<{ code: number | undefined, message: string }> {
  const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...opts })
  return new Promise((resolve, reject) => {
    client.once('connect', () => { client.end(true); reject(new Error('connection was accepted')) })
    client.once('error', (err: Error & { code?: number }) => { client.end(true); resolve({ code: err.code, message: err.message }) })
  })
}

/** Publishes counters `{"n": 0, 1, …}` as sensor-1 at QoS1 with a window in flight; records which were PUBACKed. */
export class CounterPublisher {
  next = 0
  readonly acked = new Set<number>()
  private client: mqtt.MqttClient | null = null
  private running = false

  constructor (private readonly clientPrefix = 'counter') {}

  start (port: number, window = 64): void {
    this.running = true
    const client = mqtt.connect({ host: '127.0.0.1', port, username: 'sensor-1', password: TOKENS['sensor-1'], reconnectPeriod: 0, clientId: `${this.clientPrefix}-${this.next}` })
    this.client = client
    client.on('error', () => {})
    client.on('connect', () => {
      for (let i = 0; i < window; i++) this.publishOne(client)
    })
  }

  private publishOne (client: mqtt.MqttClient): void {
    if (!this.running || !client.connected) return
    const n = this.next++
    client.publish('devices/sensor-1/counter', JSON.stringify({ n }), { qos: 1 }, (err) => {
      if (err !== undefined && err !== null) return
      this.acked.add(n)
      this.publishOne(client)
    })
  }

  stop (): void {
    this.running = false
    this.client?.end(true)
  }
}
