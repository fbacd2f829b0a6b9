// The body of a device add (admin API, `gridgate device add`), checked like a config device. It is a
// module of its own so that the schema library loads on the first add: a gateway whose registry is
// never changed at run time does not keep it in memory (the config is checked in a thread of its
// own, see config/isolated.ts).
import { z } from 'zod'
import { GridgateError } from './errors.js'
import { DEVICE_ID, isValidTokenHash } from './identity.js'
import { topicFilterProblem } from '../config/topics.js'

/** A pattern as config devices take it: an MQTT topic filter, optionally negated with a leading '!'. */
const pattern = z.string().check((ctx) => {
  const filter = ctx.value.startsWith('!') ? ctx.value.slice(1) : ctx.value
  const problem = topicFilterProblem(filter)
  if (problem !== undefined) ctx.issues.push({ code: 'custom', input: ctx.value, message: `invalid MQTT topic filter ${JSON.stringify(ctx.value)}: ${problem}` })
})

const deviceInput = z.strictObject({
  id: z.string({ error: 'expected a device id' }).regex(DEVICE_ID, { error: 'expected 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit' }),
  publish: z.array(pattern).max(64).optional(),
  subscribe: z.array(pattern).max(64).optional(),
  enabled: z.boolean().optional(),
  // Only the hash crosses the admin API when the CLI adds a device: the secret stays in the CLI.
  tokenHash: z.string().refine(isValidTokenHash, { error: 'expected a PHC scrypt hash (gridgate hash-token)' }).optional(),
})

export type DeviceInput = z.output<typeof deviceInput>

/** A device to add, checked like a config device; GG_ERR_DEVICE_INVALID lists every problem. */
export function parseDeviceInput (input: unknown): DeviceInput {
  const r = deviceInput.safeParse(input)
  if (r.success) return r.data
  const details = r.error.issues.map(i => `${i.path.length === 0 ? 'device' : i.path.join('.')}: ${i.message}`)
  throw new GridgateError('GG_ERR_DEVICE_INVALID', `invalid device: ${details.join('; ')}`, { details })
}

