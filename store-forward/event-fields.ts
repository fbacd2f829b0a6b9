// The two fields routing needs (type and subject), read straight from a stored
// io.cloudevents.v1.CloudEvent without the schema: the SQLite worker must not load .proto files
// (inside the single executable a worker cannot read them from disk).
import protobuf from 'protobufjs/minimal.js'

const { Reader } = protobuf

/** `type` (field 4) and the `subject` attribute (field 5, map<string, CloudEventAttributeValue>, ce_string = 3). */
export function routingFields (body: Uint8Array): { type: string, subject: string } {
  const r = Reader.create(body)
  let type = ''
  let subject = ''
  while (r.pos < r.len) {
    const tag = r.uint32()
    const field = tag >>> 3
    if (field === 4 && (tag & 7) === 2) {
      type = r.string()
    } else if (field === 5 && (tag & 7) === 2) {
      const end = r.uint32() + r.pos
      let key = ''
      let value = ''
      while (r.pos < end) {
        const t = r.uint32()
        if (t >>> 3 === 1 && (t & 7) === 2) {
          key = r.string()
        } else if (t >>> 3 === 2 && (t & 7) === 2) {
          const vEnd = r.uint32() + r.pos
          while (r.pos < vEnd) {
            const vt = r.uint32()
            if (vt >>> 3 === 3 && (vt & 7) === 2) value = r.string()
            else r.skipType(vt & 7)
          }
        } else {
          r.skipType(t & 7)
        }
      }
      if (key === 'subject') subject = value
    } else {
      r.skipType(tag & 7)
    }
  }
  return { type, subject }
}
