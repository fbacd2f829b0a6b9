// The shared ack-semantics suite over MQTT 5 on a WebSocket (subprotocol "mqtt", one packet per
// binary frame).
import { once } from 'node:events'
import { WebSocket } from 'ws'
import { runAckSuite } from '../helpers/ack-suite.js'
import { mqtt5AckDriver } from '../helpers/mqtt5-ack-driver.js'

runAckSuite(mqtt5AckDriver('MQTT 5 over WebSocket', 'websocket', async (port) => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, 'mqtt')
  ws.on('error', () => {})
  await once(ws, 'open')
  return {
    write: (b) => { ws.send(b) },
    onData: (cb) => { ws.on('message', cb as (b: Buffer) => void) },
    onClose: (cb) => { ws.on('close', cb) },
    close: () => { ws.terminate() },
  }
}))
