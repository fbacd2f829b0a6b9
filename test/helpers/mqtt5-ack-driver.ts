// The ack-semantics driver for MQTT 5, over any byte transport (TCP, WebSocket): a raw client, so a
// retransmission can reuse its packet id with DUP=1 exactly as a device that lost its PUBACK does.
import mqttPacket from 'mqtt-packet'
import type { AckDriver, Outcome, SendRequest } from './ack-suite.js'

/** A connected transport carrying MQTT packets. */
export interface Transport {
  write (b: Buffer): void
  onData (cb: (b: Buffer) => void): void
  onClose (cb: () => void): void
  close (): void
}

interface Raw {
  send (p: Record<string, unknown>): void
  next (match: (p: mqttPacket.Packet) => boolean, signal?: AbortSignal): Promise<mqttPacket.Packet | 'closed' | 'aborted'>
  close (): void
}

function raw (t: Transport): Raw {
  const parser = mqttPacket.parser({ protocolVersion: 5 })
  const packets: mqttPacket.Packet[] = []
  let closed = false
  const waiters = new Set<() => void>()
  const wake = (): void => { for (const w of [...waiters]) w() }
  parser.on('packet', (p: mqttPacket.Packet) => { packets.push(p); wake() })
  t.onData((b) => parser.parse(b))
  t.onClose(() => { closed = true; wake() })
  return {
    send: (p) => { t.write(mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: 5 })) },
    next: (match, signal) => new Promise((resolve) => {
      const check = (): void => {
        const i = packets.findIndex(match)
        if (i >= 0) { waiters.delete(check); resolve(packets.splice(i, 1)[0]!) } else if (closed) { waiters.delete(check); resolve('closed') } else if (signal?.aborted === true) { waiters.delete(check); resolve('aborted') }
      }
      waiters.add(check)
      signal?.addEventListener('abort', check, { once: true })
      check()
    }),
    close: () => t.close(),
  }
}

export function mqtt5AckDriver (name: string, listener: string, open: (port: number) => Promise<Transport>): AckDriver {
  async function session (port: number, r: SendRequest, signal?: AbortSignal): Promise<{ c: Raw } | Outcome> {
    const c = raw(await open(port))
    c.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: `ack-${Math.random().toString(36).slice(2)}`, keepalive: 30, username: r.device, password: Buffer.from(r.token) })
    const connack = await c.next(p => p.cmd === 'connack', signal)
    if (typeof connack === 'string') { c.close(); return { acked: false, detail: connack } }
    const code = (connack as mqttPacket.IConnackPacket).reasonCode ?? 0
    if (code !== 0) { c.close(); return { acked: false, detail: `CONNACK 0x${code.toString(16)}` } }
    return { c }
  }
  function publish (c: Raw, r: SendRequest, messageId: number, dup: boolean): void {
    c.send({
      cmd: 'publish', topic: r.topic, payload: r.payload, qos: 1, messageId, dup, retain: false,
      properties: r.contentType === undefined ? {} : { contentType: r.contentType },
    })
  }
  async function outcome (c: Raw, messageId: number, signal?: AbortSignal): Promise<Outcome> {
    const p = await c.next(x => x.cmd === 'puback' && x.messageId === messageId, signal)
    if (typeof p === 'string') return { acked: false, detail: p }
    const code = (p as mqttPacket.IPubackPacket).reasonCode ?? 0
    return { acked: code < 0x80, detail: `PUBACK 0x${code.toString(16)}` }
  }
  return {
    name,
    listener,
    async send (port, r, signal) {
      const s = await session(port, r, signal)
      if (!('c' in s)) return s
      publish(s.c, r, 1, false)
      const o = await outcome(s.c, 1, signal)
      s.c.close()
      return o
    },
    async retransmit (port, r) {
      const s = await session(port, r)
      if (!('c' in s)) return [s, s]
      publish(s.c, r, 7, false)
      const first = await outcome(s.c, 7)
      // The device never saw that PUBACK and resends the same packet id with DUP=1.
      publish(s.c, r, 7, true)
      const second = await outcome(s.c, 7)
      s.c.close()
      return [first, second]
    },
  }
}
