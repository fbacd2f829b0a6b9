import mqtt, { type MqttClient, type IClientOptions } from 'mqtt'
import type { TestContext } from 'node:test'

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
