// Anything without a decoder: the bytes as they came, under the type the device declared
// (rendered as data_base64).

import type { Decoder, DecodeResult } from './index.js'

export const OCTET_STREAM = 'application/octet-stream'

export const binaryDecoder: Decoder = {
  contentTypes: [OCTET_STREAM],
  decode (payload: Uint8Array, contentType: string): DecodeResult {
    // The declared type is kept as given (parameters included); the registry has checked its syntax.
    return { data: { kind: 'binary', bytes: payload }, datacontenttype: contentType.trim() }
  },
}
