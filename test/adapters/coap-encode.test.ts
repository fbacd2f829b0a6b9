import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generate, parse } from 'coap-packet'
import { codeByte, encodeBare, type MessageType } from '../../adapters/coap/encode.js'

const FLAGS: Record<MessageType, { confirmable: boolean, ack: boolean, reset: boolean }> = {
  con: { confirmable: true, ack: false, reset: false },
  non: { confirmable: false, ack: false, reset: false },
  ack: { confirmable: false, ack: true, reset: false },
  reset: { confirmable: false, ack: false, reset: true },
}

test('a response without options is encoded byte for byte as coap-packet generates it', () => {
  let compared = 0
  for (const type of ['con', 'non', 'ack', 'reset'] as const) {
    for (const code of ['2.04', '2.01', '2.31', '4.00', '4.01', '4.13', '5.00', '5.03', '0.00', '7.31']) {
      for (const tokenLength of [0, 1, 4, 8]) {
        for (const payload of [Buffer.alloc(0), Buffer.from('{"code":"GG_ERR_STORE_FULL"}'), Buffer.alloc(1100, 7)]) {
          for (const messageId of [0, 1, 0x1234, 0xffff]) {
            if (code === '0.00' && (tokenLength > 0 || payload.length > 0)) continue // not a valid message: below
            const token = Buffer.alloc(tokenLength, 0xa0 + tokenLength)
            const mine = encodeBare(type, code, messageId, token, payload)
            const theirs = generate({ code, messageId, token, payload, options: [], ...FLAGS[type] })
            assert.deepEqual(mine, theirs, `${type} ${code} token ${tokenLength} payload ${payload.length} mid ${messageId}`)
            const back = parse(mine!)
            assert.equal(back.code, code)
            assert.equal(back.messageId, messageId)
            assert.deepEqual(back.token, token)
            assert.deepEqual(back.payload, payload)
            compared++
          }
        }
      }
    }
  }
  assert.equal(compared, 4 * (9 * 4 * 3 * 4 + 4))
})

test('what cannot be encoded without options is left to coap-packet', () => {
  assert.equal(encodeBare('ack', '2.04', 1, Buffer.alloc(9), Buffer.alloc(0)), null, 'a token over 8 bytes')
  assert.equal(encodeBare('reset', '0.00', 1, Buffer.alloc(0), Buffer.from('x')), null, 'an Empty message with a payload')
  assert.equal(encodeBare('reset', '0.00', 1, Buffer.alloc(2), Buffer.alloc(0)), null, 'or a token')
  for (const code of ['2.4', '8.00', '2.32', 'x.yy', '2.04 ', '']) {
    assert.equal(codeByte(code), null, JSON.stringify(code))
    assert.equal(encodeBare('ack', code, 1, Buffer.alloc(0), Buffer.alloc(0)), null)
  }
  assert.equal(codeByte('2.04'), 0x44)
  assert.equal(codeByte('4.04'), 0x84)
  assert.equal(codeByte('5.03'), 0xa3)
})
