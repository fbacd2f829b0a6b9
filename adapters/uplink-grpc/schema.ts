// The gRPC uplink's schema: gateway/proto/ingest.proto on top of the CloudEvents proto, loaded once
// with protobufjs from the repo's own files (embedded in the single binary), never from the network.
import protobuf from 'protobufjs'
import { protoSource } from '../../gateway/proto/index.js'

function load (): protobuf.Root {
  const root = new protobuf.Root()
  for (const file of ['cloudevents.proto', 'ingest.proto']) {
    const parsed = protobuf.parse(protoSource(file), root, { keepCase: true })
    for (const name of parsed.imports ?? []) {
      if (name === 'cloudevents.proto') continue
      const common = (protobuf.common as unknown as Record<string, protobuf.INamespace | undefined>)[name]
      if (common?.nested === undefined) throw new Error(`${file} imports ${name}, which protobufjs does not bundle`)
      root.addJSON(common.nested)
    }
  }
  root.resolveAll()
  return root
}

const root = load()
const service = root.lookupService('gridgate.v1.EventIngest')
const publish = service.methods['Publish']
if (publish === undefined) throw new Error('ingest.proto has no EventIngest/Publish')

/** The HTTP/2 path of the unary call: /<package>.<Service>/<Method>. */
export const PUBLISH_PATH = `/${service.fullName.replace(/^\./, '')}/${publish.name}`

export const publishResponse = root.lookupType('gridgate.v1.PublishResponse')

/** CloudEventBatch read with each event left as its encoded bytes (same wire format, field 1). */
export const rawBatch = new protobuf.Type('RawBatch').add(new protobuf.Field('events', 1, 'bytes', 'repeated'))
new protobuf.Root().add(rawBatch)

export function decodeRawBatch (bytes: Uint8Array): Uint8Array[] {
  return (rawBatch.decode(bytes) as unknown as { events: Uint8Array[] }).events
}

export function encodePublishResponse (accepted: number): Buffer {
  return Buffer.from(publishResponse.encode({ accepted }).finish())
}
