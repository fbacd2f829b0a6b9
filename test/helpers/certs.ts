// A throwaway CA with a server certificate (127.0.0.1, localhost) and a client certificate, made with
// the openssl command line into a temp dir, for TLS and mutual-TLS tests.
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import type { TestContext } from 'node:test'
import { tempDir } from './util.js'

export interface Certs {
  dir: string
  /** File paths. */
  ca: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** The same as PEM text. */
  pem: { ca: string, serverCert: string, serverKey: string, clientCert: string, clientKey: string }
}

function openssl (cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
}

export function makeCerts (t: TestContext): Certs {
  const dir = tempDir(t, 'gg-certs-')
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=gridgate test CA'])
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
  fs.writeFileSync(path.join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n')
  for (const who of ['server', 'client']) {
    openssl(dir, ['req', ...ec, '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=${who === 'server' ? 'localhost' : 'gw-test'}`])
    openssl(dir, ['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${who}.pem`, '-days', '2', '-extfile', `${who}.ext`])
  }
  const file = (n: string): string => path.join(dir, n)
  const read = (n: string): string => fs.readFileSync(file(n), 'utf8')
  return {
    dir,
    ca: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    clientCert: file('client.pem'),
    clientKey: file('client.key'),
    pem: { ca: read('ca.pem'), serverCert: read('server.pem'), serverKey: read('server.key'), clientCert: read('client.pem'), clientKey: read('client.key') },
  }
}
