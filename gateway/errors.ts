// Every error gridgate reports has a stable GG_ERR_* code. The code is what scripts, logs and
// metric labels rely on; the message says what to do about it. The README's error table is checked
// against this registry by test/gateway/errors.test.ts.

export const ErrorCodes = {
  GG_ERR_CONFIG_INVALID: 'The configuration does not validate; every problem is listed with its path.',
  GG_ERR_CONFIG_NOT_FOUND: 'The configuration file could not be read.',
  GG_ERR_ENV_UNKNOWN: 'A GRIDGATE_* environment variable names no configuration key.',
  GG_ERR_PORT_IN_USE: 'A listener could not bind its address; another process holds the port.',
  GG_ERR_DATA_DIR: 'The data directory cannot be created or written.',
  GG_ERR_STORE_LOCKED: 'Another gridgate process owns this data directory.',
  GG_ERR_STORE_VERSION: 'The store was written by a newer gridgate; upgrade instead of downgrading.',
  GG_ERR_STORE_CORRUPT: 'The store was corrupt; it was moved aside into corrupt-<time>/ and a new one created.',
  GG_ERR_STORE_UNAVAILABLE: 'The store writer is not running; the event was not stored.',
  GG_ERR_STORE_FULL: 'The store is full; the event was not stored.',
  GG_ERR_EVENTS_DROPPED: 'Store policy (quota, TTL or an uplink\'s maxLag) removed events before they were delivered; counted in gridgate_dropped_events_total.',
  GG_ERR_STORE_COMMIT: 'The commit failed; the event was not stored.',
  GG_ERR_AUTH_FAILED: 'Unknown device, disabled device or wrong secret.',
  GG_ERR_AUTH_REQUIRED: 'No credential was given and anonymous access is off.',
  GG_ERR_FORBIDDEN_TOPIC: 'The device may not publish or subscribe to this topic.',
  GG_ERR_PAYLOAD_INVALID: 'The payload does not parse as its declared content type.',
  GG_ERR_PAYLOAD_TOO_LARGE: 'The HTTP body or WebSocket frame exceeds http.maxBodySize or websocket.maxFrameSize.',
  GG_ERR_CONTENT_TYPE_UNSUPPORTED: 'No decoder handles the declared content type; send a supported type or application/octet-stream.',
  GG_ERR_BATCH_TOO_LARGE: 'A WebSocket frame holds more events than websocket.maxBatch.',
  GG_ERR_METHOD_NOT_ALLOWED: 'The HTTP method is not allowed on this path (ingest paths take POST).',
  GG_ERR_UPLINK_REJECTED: 'The uplink refused the gateway itself (401/403/404...): check its URL and credentials. Events are kept.',
  GG_ERR_UPLINK_UNREACHABLE: 'The uplink could not be reached or failed; delivery is retried with backoff.',
  GG_ERR_UPLINK_POISON: 'The uplink rejected one event; it was moved to the dead letters.',
  GG_ERR_CLOCK_UNSYNCED: 'The wall clock is behind the persisted clock floor; time stamps use the floor until it catches up.',
  GG_ERR_SHUTDOWN_TIMEOUT: 'Shutdown did not finish within gateway.shutdownTimeout.',
  GG_ERR_FAULTS_FORBIDDEN: 'Test fault hooks were requested outside a test run (NODE_ENV is not "test").',
  GG_ERR_USAGE: 'The command line or an admin API request was not understood.',
  GG_ERR_NOT_FOUND: 'No such admin API route.',
  GG_ERR_DEVICE_INVALID: 'A device id or topic pattern given to gridgate device (or the devices admin API) is not valid.',
  GG_ERR_DEVICE_EXISTS: 'The device id is already in the registry or in the config.',
  GG_ERR_DEVICE_NOT_FOUND: 'No device with this id in the registry.',
  GG_ERR_DEVICE_IN_CONFIG: 'The device comes from the config file; change it there, not with gridgate device.',
  GG_ERR_INTERNAL: 'An unexpected error; the log has the details.',
  GG_ERR_RETAINED_LIMIT: 'mqtt.maxRetained retained messages are held: a retained message on a new topic is not retained (MQTT 5: refused with 0x97); clear unused ones with an empty retained publish, or raise the limit.',
  GG_ERR_MQTT_QUEUE_DROPPED: 'A persistent MQTT session\'s queue passed mqtt.maxOfflineMessages; its oldest messages were dropped (gridgate_mqtt_offline_dropped_total).',
  GG_ERR_MQTT_SESSION_LIMIT: 'mqtt.maxSessions disconnected persistent sessions are held; a session that disconnected beyond it ended at once.',
} as const

export type ErrorCode = keyof typeof ErrorCodes

export class GridgateError extends Error {
  readonly code: ErrorCode
  readonly details: readonly string[]

  constructor (code: ErrorCode, message?: string, options?: { cause?: unknown, details?: readonly string[] }) {
    super(message ?? ErrorCodes[code], options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'GridgateError'
    this.code = code
    this.details = options?.details ?? []
  }
}

export function isGridgateError (err: unknown, code?: ErrorCode): err is GridgateError {
  return err instanceof GridgateError && (code === undefined || err.code === code)
}
