// Responses without options, encoded directly (RFC 7252 §3: a 4-byte header, the token, and the
// payload after a 0xFF marker). Most requests get one: 2.04 Changed, and most errors with a diagnostic
// payload. coap-packet's generate() fills in defaults and measures every field first; at 9,000
// requests/s it was 4–5 % of the main thread (CPU profile of `npm run bench -- --scenario 5 --profile`).
// Anything with options goes through generate().

export type MessageType = 'con' | 'non' | 'ack' | 'reset'

const TYPE_BITS: Record<MessageType, number> = { con: 0, non: 1, ack: 2, reset: 3 }
const CODE = /^([0-7])\.([0-3][0-9])$/

/** The code byte of 'c.dd' (class 3 bits, detail 5 bits), or null when it is not one. */
export function codeByte (code: string): number | null {
  const m = CODE.exec(code)
  if (m === null) return null
  const detail = Number(m[2])
  return detail > 31 ? null : (Number(m[1]) << 5) | detail
}

/**
 * The message, or null when it cannot be encoded here: a token over 8 bytes, a malformed code, or an
 * Empty message (0.00) with a token or a payload, which RFC 7252 §4.1 does not allow.
 */
export function encodeBare (type: MessageType, code: string, messageId: number, token: Uint8Array, payload: Uint8Array): Buffer | null {
  const c = codeByte(code)
  if (c === null || token.length > 8 || (c === 0 && (token.length > 0 || payload.length > 0))) return null
  const length = 4 + token.length + (payload.length > 0 ? 1 + payload.length : 0)
  const buf = Buffer.allocUnsafe(length)
  buf[0] = 0x40 | (TYPE_BITS[type] << 4) | token.length
  buf[1] = c
  buf.writeUInt16BE(messageId & 0xffff, 2)
  buf.set(token, 4)
  if (payload.length > 0) {
    buf[4 + token.length] = 0xff
    buf.set(payload, 5 + token.length)
  }
  return buf
}
