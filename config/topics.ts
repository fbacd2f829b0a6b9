// MQTT topic filter rules shared by the config schema and the device registry API. Kept apart from
// config/schema.ts so that a running gateway checks filters without loading the schema library.

/** Why filter is not a valid MQTT topic filter (the spec's rules cited), or undefined when it is. */
export function topicFilterProblem (filter: string): string | undefined {
  if (filter === '') return 'a topic filter must not be empty' // [MQTT-4.7.3-1]
  if (filter.includes('\u0000')) return 'a topic filter must not contain U+0000' // [MQTT-4.7.3-2]
  if (Buffer.byteLength(filter) > 65_535) return 'a topic filter must not exceed 65535 bytes' // [MQTT-4.7.3-3]
  const levels = filter.split('/')
  for (const [i, level] of levels.entries()) {
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return "'#' must be alone in the last level" // [MQTT-4.7.1-2]
    }
    if (level.includes('+') && level !== '+') return "'+' must be alone in its level" // [MQTT-4.7.1-3]
  }
  return undefined
}
