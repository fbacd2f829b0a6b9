// The device registry's rows in the SQLite file (schema v2 table `devices`), run by the writer worker
// only: `gridgate device add|enable|disable|remove` and the admin API change them one statement at a
// time (each an atomic autocommit), the gateway reads them all at start. Secrets are never here: a
// row holds the scrypt PHC hash of its device's secret.
import type Database from 'better-sqlite3'
import type { DeviceRow } from './protocol.js'

interface SqlRow { id: string, token_hash: string, publish: string, subscribe: string, enabled: number, created_ms: number, updated_ms: number }

function toRow (r: SqlRow): DeviceRow {
  return {
    id: r.id,
    tokenHash: r.token_hash,
    publish: JSON.parse(r.publish) as string[],
    subscribe: JSON.parse(r.subscribe) as string[],
    enabled: r.enabled !== 0,
    createdMs: r.created_ms,
    updatedMs: r.updated_ms,
  }
}

const COLUMNS = 'id, token_hash, publish, subscribe, enabled, created_ms, updated_ms'

export function listDeviceRows (db: Database.Database): DeviceRow[] {
  return (db.prepare(`SELECT ${COLUMNS} FROM devices ORDER BY id`).all() as SqlRow[]).map(toRow)
}

/** Inserts a new device; an id already in the table is refused with code GG_ERR_DEVICE_EXISTS. */
export function addDeviceRow (db: Database.Database, d: DeviceRow): DeviceRow {
  const r = db.prepare(`INSERT INTO devices (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`)
    .run(d.id, d.tokenHash, JSON.stringify(d.publish), JSON.stringify(d.subscribe), d.enabled ? 1 : 0, d.createdMs, d.updatedMs)
  if (r.changes === 0) throw Object.assign(new Error(`device ${d.id} is already in the registry`), { code: 'GG_ERR_DEVICE_EXISTS' })
  return d
}

/** Enables or disables a device; an unknown id is refused with code GG_ERR_DEVICE_NOT_FOUND. */
export function setDeviceEnabled (db: Database.Database, id: string, enabled: boolean, nowMs: number): DeviceRow {
  const r = db.prepare('UPDATE devices SET enabled = ?, updated_ms = ? WHERE id = ?').run(enabled ? 1 : 0, nowMs, id)
  if (r.changes === 0) throw Object.assign(new Error(`no device ${id} in the registry`), { code: 'GG_ERR_DEVICE_NOT_FOUND' })
  return toRow(db.prepare(`SELECT ${COLUMNS} FROM devices WHERE id = ?`).get(id) as SqlRow)
}

/** Deletes a device; an unknown id is refused with code GG_ERR_DEVICE_NOT_FOUND. */
export function removeDeviceRow (db: Database.Database, id: string): void {
  const r = db.prepare('DELETE FROM devices WHERE id = ?').run(id)
  if (r.changes === 0) throw Object.assign(new Error(`no device ${id} in the registry`), { code: 'GG_ERR_DEVICE_NOT_FOUND' })
}
