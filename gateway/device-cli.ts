// `gridgate device add|list|enable|disable|remove`: through the running gateway's admin API on the
// data dir's socket (the change takes effect at once, no restart), or on the store directly when the
// gateway is stopped (it reads the registry when it starts). `add` makes the secret here, stores only
// its scrypt hash (the secret never crosses the socket) and returns the credential to print, once.
import { pino } from 'pino'
import type { Config } from '../config/schema.js'
import { generateToken, hashToken } from './identity.js'
import { DeviceManager, checkDeviceId } from './devices.js'
import { parseDeviceInput } from './device-input.js'
import { viaGatewayOrStore, type Answer, type Via } from './local-admin.js'
import type { Store } from '../store-forward/store.js'

export type DeviceAction = 'add' | 'list' | 'enable' | 'disable' | 'remove'
export const DEVICE_ACTIONS: readonly DeviceAction[] = ['add', 'list', 'enable', 'disable', 'remove']

export interface DeviceArgs {
  action: DeviceAction
  /** Required for every action but list. */
  id?: string | undefined
  publish?: string[] | undefined
  subscribe?: string[] | undefined
}

export interface DeviceOutcome { via: Via, result: Answer, credential?: string }

function manager (config: Config, store: Store): DeviceManager {
  return new DeviceManager({ configDevices: config.devices, store, log: pino({ level: 'silent' }) })
}

export async function runDevice (config: Config, args: DeviceArgs): Promise<DeviceOutcome> {
  if (args.action === 'list') {
    return viaGatewayOrStore(config, (call) => call('GET', '/api/v1/devices'), async (store) => {
      const m = manager(config, store)
      await m.load()
      return { devices: m.list() }
    })
  }
  const id = checkDeviceId(args.id)
  if (args.action === 'add') {
    // Checked before the secret is made and before anything is asked of the gateway or the store.
    const input = parseDeviceInput({
      id,
      ...(args.publish === undefined ? {} : { publish: args.publish }),
      ...(args.subscribe === undefined ? {} : { subscribe: args.subscribe }),
    })
    const secret = generateToken()
    const body = { ...input, tokenHash: await hashToken(secret) }
    const r = await viaGatewayOrStore(config, (call) => call('POST', '/api/v1/devices', body), async (store) => {
      const m = manager(config, store)
      await m.load()
      return { ...(await m.add(body)) }
    })
    return { ...r, credential: `${id}:${secret}` }
  }
  const path = `/api/v1/devices/${encodeURIComponent(id)}`
  if (args.action === 'remove') {
    return viaGatewayOrStore(config, (call) => call('DELETE', path), async (store) => {
      const m = manager(config, store)
      await m.load()
      return { ...(await m.remove(id)) }
    })
  }
  const enabled = args.action === 'enable'
  return viaGatewayOrStore(config, (call) => call('PATCH', path, { enabled }), async (store) => {
    const m = manager(config, store)
    await m.load()
    return { device: await m.setEnabled(id, enabled) }
  })
}
