#!/usr/bin/env node
// The gridgate command. Only this entry script calls process.exit and installs signal handlers.
import { parseArgs } from 'node:util'
import { readFileSync } from 'node:fs'
import { isSea, getAsset } from 'node:sea'
import { setFlagsFromString } from 'node:v8'
import { pino } from 'pino'
import { loadConfigIsolated } from '../config/isolated.js'
import { GridgateError, isGridgateError } from './errors.js'
import { generateToken, hashToken } from './identity.js'
import { Gateway } from './gateway.js'
import type { DeviceAction } from './device-cli.js'

const HELP = `gridgate — edge gateway: MQTT devices in, durable SQLite store, CloudEvents out

Usage:
  gridgate [--config FILE]                 run the gateway (no --config: built-in defaults, data in ./data)
  gridgate check-config --config FILE      validate FILE with GRIDGATE_* overrides; print the effective config
  gridgate hash-token [TOKEN]              print a tokenHash for devices[].tokenHash (TOKEN from the argument,
                                           from stdin when piped, or a new random token printed with its hash)
  gridgate dlq list|replay|purge --config FILE [--uplink NAME] [--id N ...] [--limit N] [--after ID]
                                           dead letters: list them (JSON), replay them (original event id,
                                           new sequence, own uplink only) or purge them; through the running
                                           gateway (its data dir's socket) or directly when it is stopped
  gridgate device add ID [--publish P ...] [--subscribe S ...] --config FILE
                                           add a device to the registry in the store; prints its
                                           credential ID:SECRET once (only the scrypt hash is stored).
                                           Default patterns: publish devices/ID/# except
                                           devices/ID/commands/#, subscribe devices/ID/commands/#
  gridgate device list --config FILE       every device (config and registry) as JSON: source, enabled,
                                           patterns, last seen and online per protocol; never secrets
  gridgate device disable|enable|remove ID --config FILE
                                           a registry device; disable and remove close its live sessions.
                                           Through the running gateway (its data dir's socket; effective
                                           at once, no restart) or directly on the store when it is stopped.
                                           Devices of the config file are changed in the config file.
  gridgate --help | --version

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 130 second signal during shutdown.
Environment: GRIDGATE_<PATH> overrides a config key, e.g. GRIDGATE_MQTT_PORT=1884,
GRIDGATE_UPLINKS_CLOUD_URL=http://127.0.0.1:9000/events.
`

function version (): string {
  // A single executable carries package.json as an asset (scripts/build-binary.ts).
  const text = isSea() ? getAsset('package.json', 'utf8') : readFileSync(new URL('../../package.json', import.meta.url), 'utf8')
  const pkg = JSON.parse(text) as { version: string }
  return pkg.version
}

function fail (err: unknown, exitCode = 1): never {
  if (isGridgateError(err)) {
    process.stderr.write(`${err.code}: ${err.message}\n`)
    for (const d of err.details) process.stderr.write(`  - ${d}\n`)
  } else {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  }
  process.exit(exitCode)
}

function exitCodeFor (err: unknown): number {
  return isGridgateError(err) && ['GG_ERR_CONFIG_INVALID', 'GG_ERR_CONFIG_NOT_FOUND', 'GG_ERR_ENV_UNKNOWN', 'GG_ERR_USAGE', 'GG_ERR_DEVICE_INVALID'].includes(err.code) ? 2 : 1
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8').trim()
}

async function main (argv: string[]): Promise<void> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
        uplink: { type: 'string' },
        id: { type: 'string', multiple: true },
        limit: { type: 'string' },
        after: { type: 'string' },
        publish: { type: 'string', multiple: true },
        subscribe: { type: 'string', multiple: true },
      },
    })
  } catch (err) {
    fail(new GridgateError('GG_ERR_USAGE', `${(err as Error).message}\n\n${HELP}`), 2)
  }
  const { values, positionals } = parsed
  if (values.help === true) { process.stdout.write(HELP); return }
  if (values.version === true) { process.stdout.write(`${version()}\n`); return }
  const [command, ...rest] = positionals

  switch (command) {
    case undefined:
      return run(values.config)
    case 'check-config': {
      if (values.config === undefined) fail(new GridgateError('GG_ERR_USAGE', 'check-config needs --config FILE'), 2)
      const { loadConfig, renderConfig } = await import('../config/load.js')
      const config = loadConfig({ path: values.config, env: process.env })
      process.stdout.write(renderConfig(config))
      if (config.store.sync === 'normal') {
        process.stderr.write('note: store.sync=normal survives a process crash but not a power loss; acknowledged events can be lost on power failure.\n')
      }
      return
    }
    case 'hash-token': {
      let token = rest[0]
      let generated = false
      if (token === undefined && !process.stdin.isTTY) token = await readStdin()
      if (token === undefined || token === '') { token = generateToken(); generated = true }
      const hash = await hashToken(token)
      process.stdout.write(generated ? `token: ${token}\ntokenHash: ${hash}\n` : `${hash}\n`)
      return
    }
    case 'dlq': {
      const action = rest[0]
      if (action !== 'list' && action !== 'replay' && action !== 'purge') fail(new GridgateError('GG_ERR_USAGE', `dlq needs list, replay or purge, got ${action ?? 'nothing'}`), 2)
      const int = (v: string | undefined, name: string, def: number): number => {
        if (v === undefined) return def
        const n = Number(v)
        if (!Number.isSafeInteger(n) || n < 0) fail(new GridgateError('GG_ERR_USAGE', `--${name} needs a non-negative integer, got ${v}`), 2)
        return n
      }
      const [{ loadConfig }, { runDlq }] = await Promise.all([import('../config/load.js'), import('./dlq.js')])
      const config = loadConfig({ ...(values.config === undefined ? {} : { path: values.config }), env: process.env })
      const { via, result } = await runDlq(config, {
        action,
        uplink: values.uplink ?? null,
        ids: values.id === undefined ? null : values.id.map(v => int(v, 'id', 0)),
        limit: int(values.limit, 'limit', 100),
        after: int(values.after, 'after', 0),
      })
      if (action === 'list') process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
      else process.stdout.write(`${JSON.stringify({ ...result, via })}\n`)
      return
    }
    case 'device': {
      const [{ loadConfig }, { DEVICE_ACTIONS, runDevice }] = await Promise.all([import('../config/load.js'), import('./device-cli.js')])
      const action = rest[0] as DeviceAction | undefined
      if (action === undefined || !DEVICE_ACTIONS.includes(action)) fail(new GridgateError('GG_ERR_USAGE', `device needs ${DEVICE_ACTIONS.join(', ')}, got ${action ?? 'nothing'}`), 2)
      const id = rest[1]
      if (action !== 'list' && id === undefined) fail(new GridgateError('GG_ERR_USAGE', `device ${action} needs a device id`), 2)
      if (rest.length > (action === 'list' ? 1 : 2)) fail(new GridgateError('GG_ERR_USAGE', `unexpected argument ${rest[action === 'list' ? 1 : 2]}`), 2)
      if (action !== 'add' && (values.publish !== undefined || values.subscribe !== undefined)) fail(new GridgateError('GG_ERR_USAGE', '--publish and --subscribe go with device add'), 2)
      const config = loadConfig({ ...(values.config === undefined ? {} : { path: values.config }), env: process.env })
      const { via, result, credential } = await runDevice(config, { action, id, publish: values.publish, subscribe: values.subscribe })
      if (credential !== undefined) {
        // The one time the secret is shown: stdout carries only the credential, for scripts.
        process.stdout.write(`${credential}\n`)
        process.stderr.write(`device ${id} added (${via === 'gateway' ? 'the running gateway accepts it now' : 'the gateway accepts it when it starts'}); the credential above is not shown again\n`)
      } else if (action === 'list') {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
      } else {
        process.stdout.write(`${JSON.stringify({ ...result, via })}\n`)
      }
      return
    }
    default:
      fail(new GridgateError('GG_ERR_USAGE', `unknown command ${command}\n\n${HELP}`), 2)
  }
}

function faultsRequested (): boolean {
  if (process.env.GRIDGATE_TEST_FAULTS !== '1') return false
  if (process.env.NODE_ENV !== 'test') throw new GridgateError('GG_ERR_FAULTS_FORBIDDEN')
  return true
}

async function run (configPath: string | undefined): Promise<void> {
  // On a machine with 4 GB of memory or more V8 copies its built-ins' code (about 1.6 MB) next to each
  // isolate's generated code ("short builtin calls"), and the pages each thread runs count in RSS once
  // per copy. The threads started from here on (config loader, store writer and reader) run without
  // the copy, as every thread already does on a device with less memory: idle RSS 1.4-2.8 MiB lower.
  setFlagsFromString('--no-short-builtin-calls')
  const config = await loadConfigIsolated({ ...(configPath === undefined ? {} : { path: configPath }), env: process.env })
  const log = pino({ level: config.gateway.logLevel, base: { gatewayId: config.gateway.id } })
  const gateway = new Gateway(config, { log, faults: faultsRequested() })
  let signalled = false
  const shutdown = (signal: string): void => {
    if (signalled) {
      log.warn({ signal }, 'second signal; exiting now')
      process.exit(130)
    }
    signalled = true
    log.info({ signal }, 'shutting down')
    gateway.stop().then(() => process.exit(0), (err: unknown) => {
      log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  gateway.onFatal = () => { gateway.stop().finally(() => process.exit(1)) }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  try {
    await gateway.start()
  } catch (err) {
    log.fatal({ code: isGridgateError(err) ? err.code : undefined, err: (err as Error).message }, 'gridgate could not start')
    fail(err, exitCodeFor(err))
  }
}

main(process.argv.slice(2)).catch((err: unknown) => fail(err, exitCodeFor(err)))
