// A small CoAP client over a dgram socket with coap-packet, so a test controls the message ID and
// token (a retransmission is the very same datagram) and sees every message the gateway sends: the
// piggybacked ACK, or the empty ACK and then the separate response (which it acknowledges).
import dgram from 'node:dgram'
import { once } from 'node:events'
import { randomBytes, randomInt } from 'node:crypto'
import { generate, parse, type ParsedPacket, type Option } from 'coap-packet'

export interface CoapRequest {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE'
  /** The URI path without the leading slash. */
  path: string
  query?: string[]
  payload?: Buffer
  contentFormat?: number | undefined
  confirmable?: boolean
  messageId?: number
  token?: Buffer
  options?: Option[]
}

export interface CoapResponse {
  code: string
  payload: Buffer
  options: ParsedPacket['options']
  /** 'piggybacked' in the ACK, or 'separate' after an empty ACK, or 'non'. */
  via: 'piggybacked' | 'separate' | 'non'
  emptyAck: boolean
}

export function uintOption (n: number): Buffer {
  const bytes: number[] = []
  while (n > 0) { bytes.unshift(n & 0xff); n = Math.floor(n / 256) }
  return Buffer.from(bytes)
}

export function option (packet: { options: ParsedPacket['options'] }, name: string): Buffer | undefined {
  return packet.options.find(o => o.name === name)?.value
}

export function readUint (b: Buffer | undefined): number | undefined {
  if (b === undefined) return undefined
  let n = 0
  for (const x of b) n = n * 256 + x
  return n
}

export function buildRequest (r: CoapRequest): { buf: Buffer, messageId: number, token: Buffer } {
  // `buf` is also what response() retransmits while no answer arrived.
  const messageId = r.messageId ?? randomInt(0x10000)
  const token = r.token ?? randomBytes(4)
  const options: Option[] = []
  for (const seg of r.path.split('/')) options.push({ name: 'Uri-Path', value: Buffer.from(seg) })
  for (const q of r.query ?? []) options.push({ name: 'Uri-Query', value: Buffer.from(q) })
  if (r.contentFormat !== undefined) options.push({ name: 'Content-Format', value: uintOption(r.contentFormat) })
  options.push(...(r.options ?? []))
  const buf = generate({ code: r.method ?? 'POST', confirmable: r.confirmable ?? true, messageId, token, options, payload: r.payload ?? Buffer.alloc(0) }, 65_535)
  return { buf, messageId, token }
}

export class CoapClient {
  readonly socket = dgram.createSocket('udp4')
  private readonly inbox: ParsedPacket[] = []
  private readonly waiters = new Set<() => void>()

  constructor (readonly port: number) {
    this.socket.on('message', (msg) => {
      let p: ParsedPacket
      try { p = parse(msg) } catch { return }
      // Acknowledge a separate (confirmable) response, as a device does.
      if (p.confirmable && !p.code.startsWith('0.')) this.socket.send(generate({ ack: true, code: '0.00', messageId: p.messageId, token: Buffer.alloc(0) }), this.port, '127.0.0.1')
      this.inbox.push(p)
      for (const w of [...this.waiters]) w()
    })
    this.socket.on('error', () => {})
  }

  async open (): Promise<this> {
    this.socket.bind(0, '127.0.0.1')
    await once(this.socket, 'listening')
    return this
  }

  send (buf: Buffer): void { this.socket.send(buf, this.port, '127.0.0.1') }

  /** The next received packet that matches, or 'aborted' / 'timeout'. */
  next (match: (p: ParsedPacket) => boolean, signal?: AbortSignal, timeoutMs = 15_000): Promise<ParsedPacket | 'aborted' | 'timeout'> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish('timeout'), timeoutMs)
      const finish = (r: ParsedPacket | 'aborted' | 'timeout'): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
        signal?.removeEventListener('abort', check)
        resolve(r)
      }
      const check = (): void => {
        const i = this.inbox.findIndex(match)
        if (i >= 0) finish(this.inbox.splice(i, 1)[0]!)
        else if (signal?.aborted === true) finish('aborted')
      }
      this.waiters.add(check)
      signal?.addEventListener('abort', check, { once: true })
      check()
    })
  }

  /**
   * Waits for the response to a request already sent: the piggybacked ACK, or the empty ACK and then
   * the separate response with the same token; for NON, a response with the same token.
   */
  async response (sent: { messageId: number, token: Buffer, buf?: Buffer }, confirmable: boolean, signal?: AbortSignal, timeoutMs?: number): Promise<CoapResponse | 'aborted' | 'timeout'> {
    if (!confirmable) {
      const p = await this.next(x => x.token.equals(sent.token), signal, timeoutMs)
      return typeof p === 'string' ? p : { code: p.code, payload: p.payload, options: p.options, via: 'non', emptyAck: false }
    }
    // With `buf`, the request is retransmitted until the first answer arrives, as a device does (a busy
    // machine may drop a datagram).
    let retransmit: NodeJS.Timeout | undefined
    const again = (ms: number): void => {
      retransmit = setTimeout(() => { this.send(sent.buf!); again(ms * 2) }, ms)
    }
    if (sent.buf !== undefined) again(1000)
    const first = await this.next(x => (x.ack && x.messageId === sent.messageId) || (!x.ack && x.token.equals(sent.token) && !x.code.startsWith('0.')), signal, timeoutMs)
    clearTimeout(retransmit)
    if (typeof first === 'string') return first
    if (first.ack && first.code !== '0.00') return { code: first.code, payload: first.payload, options: first.options, via: 'piggybacked', emptyAck: false }
    const separate = first.ack ? await this.next(x => !x.ack && x.token.equals(sent.token), signal, timeoutMs) : first
    if (typeof separate === 'string') return separate
    return { code: separate.code, payload: separate.payload, options: separate.options, via: 'separate', emptyAck: first.ack }
  }

  /** Sends a request and waits for its response; a confirmable one is retransmitted until answered. */
  async request (r: CoapRequest, signal?: AbortSignal, timeoutMs?: number): Promise<CoapResponse | 'aborted' | 'timeout'> {
    const sent = buildRequest(r)
    this.send(sent.buf)
    return this.response(sent, r.confirmable ?? true, signal, timeoutMs)
  }

  close (): void { this.socket.close() }
}

export async function coapClient (port: number): Promise<CoapClient> {
  return new CoapClient(port).open()
}
