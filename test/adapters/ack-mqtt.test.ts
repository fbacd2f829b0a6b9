// The shared ack-semantics suite over MQTT 5 on TCP.
import net from 'node:net'
import { once } from 'node:events'
import { runAckSuite } from '../helpers/ack-suite.js'
import { mqtt5AckDriver } from '../helpers/mqtt5-ack-driver.js'

runAckSuite(mqtt5AckDriver('MQTT 5 over TCP', 'mqtt', async (port) => {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  return {
    write: (b) => { socket.write(b) },
    onData: (cb) => { socket.on('data', cb) },
    onClose: (cb) => { socket.on('close', cb) },
    close: () => { socket.destroy() },
  }
}))
