// The shared ack-semantics suite over CoAP (confirmable POST), with a raw dgram client so a
// retransmission is the very same datagram (same message ID and token), as a device whose ACK was lost
// sends it.
import { runAckSuite, type Outcome, type SendRequest } from '../helpers/ack-suite.js'
import { buildRequest, coapClient, type CoapResponse } from '../helpers/coap.js'
import { CONTENT_FORMATS } from '../../adapters/coap/content-format.js'

function contentFormat (type: string | undefined): number | undefined {
  if (type === undefined) return undefined
  for (const [n, t] of CONTENT_FORMATS) if (t === type || t.split(';')[0] === type) return n
  throw new Error(`no Content-Format for ${type}`)
}

function request (r: SendRequest, messageId?: number) {
  const cf = contentFormat(r.contentType)
  return buildRequest({
    path: r.topic,
    query: [`auth=${r.device}:${r.token}`],
    payload: r.payload,
    ...(cf === undefined ? {} : { contentFormat: cf }),
    ...(messageId === undefined ? {} : { messageId }),
  })
}

function outcome (res: CoapResponse | 'aborted' | 'timeout'): Outcome {
  if (typeof res === 'string') return { acked: false, detail: res }
  return { acked: res.code.startsWith('2.'), detail: `${res.code} ${res.payload.toString('utf8')}`.trim() }
}

runAckSuite({
  name: 'CoAP confirmable POST',
  listener: 'coap',
  async send (port, r, signal) {
    const c = await coapClient(port)
    try {
      const sent = request(r)
      c.send(sent.buf)
      return outcome(await c.response(sent, true, signal))
    } finally {
      c.close()
    }
  },
  async retransmit (port, r) {
    const c = await coapClient(port)
    try {
      const sent = request(r, 0x4242)
      c.send(sent.buf)
      const first = outcome(await c.response(sent, true))
      // The device never saw that ACK and sends the same datagram again.
      c.send(sent.buf)
      const second = outcome(await c.response(sent, true))
      return [first, second]
    } finally {
      c.close()
    }
  },
})
