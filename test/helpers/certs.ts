// A throwaway CA with a server certificate (localhost, 127.0.0.1) and client certificates whose CN
// names a device, made with the openssl command line into a temp dir removed after the test.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import type { TestContext } from 'node:test'
import { tempDir } from './util.js'

export interface Certs {
  dir: string
  ca: string
  serverCert: string
  serverKey: string
  /** Client certificate and key files by CN. */
  clients: Record<string, { cert: string, key: string }>
  /** File contents, for clients that take PEM strings. */
  read (file: string): Buffer
  /** A client certificate with CN gw-test (the gateway's own, for uplink mutual TLS). */
  clientCert: string
  clientKey: string
  /** The CA, server and gw-test client files as PEM text. */
  pem: { ca: string, serverCert: string, serverKey: string, clientCert: string, clientKey: string }
}

function openssl (dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
}

/** A CA signed by nobody else, a server certificate and one client certificate per CN (EC P-256, 1 day). */
export function makeCerts (t: TestContext, clientCNs: readonly string[] = [], opts: { dir?: string } = {}): Certs {
  const dir = opts.dir ?? tempDir(t, 'gg-certs-')
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=gridgate test CA'])
  const sign = (name: string, cn: string, ext: string): void => {
    openssl(dir, ['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`])
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext)
    openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`])
  }
  sign('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
  const clients: Certs['clients'] = {}
  for (const cn of new Set([...clientCNs, 'gw-test'])) {
    const name = `client-${cn}`
    sign(name, cn, 'extendedKeyUsage=clientAuth\n')
    clients[cn] = { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }
  }
  const text = (file: string): string => fs.readFileSync(file, 'utf8')
  const c = {
    ca: path.join(dir, 'ca.pem'),
    serverCert: path.join(dir, 'server.pem'),
    serverKey: path.join(dir, 'server.key'),
    clientCert: clients['gw-test']!.cert,
    clientKey: clients['gw-test']!.key,
  }
  return {
    dir,
    ...c,
    clients,
    read: (file) => fs.readFileSync(file),
    pem: { ca: text(c.ca), serverCert: text(c.serverCert), serverKey: text(c.serverKey), clientCert: text(c.clientCert), clientKey: text(c.clientKey) },
  }
}
