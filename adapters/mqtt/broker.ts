// aedes with gridgate's session rules. aedes 2.0.0-beta.1 times out MQTT 5 sessions only: a
// persistent MQTT 3.1.1 session (clean session 0) is kept until the client returns, however long
// that is. Here every persistent session expires the same way, after the Session Expiry Interval
// aedes assigned it: for 3.1.1 that is "never" clamped to sessionExpiryIntervalLimit
// (mqtt.sessionExpiry); for MQTT 5 the client's own interval, clamped to the same limit.
import { Aedes } from 'aedes'
import type { AedesOptions, Client } from 'aedes'

interface SessionExpiryHooks {
  scheduleSessionExpiry (client: Client): void
  expiringSessions: Map<string, unknown>
}

const base = Aedes.prototype as unknown as SessionExpiryHooks
if (typeof base.scheduleSessionExpiry !== 'function') {
  throw new Error('aedes no longer has scheduleSessionExpiry(): adapters/mqtt/broker.ts must be revisited for this aedes version')
}

export class GridgateBroker extends Aedes {
  constructor (opts: AedesOptions) {
    super(opts)
  }

  /** Disconnected persistent sessions waiting to expire (capped by pendingSessionsLimit). */
  get offlineSessions (): number {
    return (this as unknown as SessionExpiryHooks).expiringSessions.size
  }

  /** Called by aedes when a registered client's connection ends. */
  scheduleSessionExpiry (client: Client): void {
    const c = client as Client & { version: number, clean: boolean }
    if (c.version === 5 || c.clean) {
      base.scheduleSessionExpiry.call(this, client)
      return
    }
    // aedes skips everything below version 5; the MQTT 5 path is what a 3.1.1 persistent session
    // needs too (same timer, same cap, same wipe of subscriptions, queue and will).
    const version = c.version
    c.version = 5
    try {
      base.scheduleSessionExpiry.call(this, client)
    } finally {
      c.version = version
    }
  }
}
