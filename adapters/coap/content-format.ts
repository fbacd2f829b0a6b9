// CoAP Content-Format numbers (IANA "CoAP Content-Formats" registry) and the media types they stand
// for. Decoding itself goes through the decoder registry by media type; this table only translates.

export const CONTENT_FORMATS: ReadonlyMap<number, string> = new Map([
  [0, 'text/plain;charset=utf-8'],
  [40, 'application/link-format'],
  [41, 'application/xml'],
  [42, 'application/octet-stream'],
  [47, 'application/exi'],
  [50, 'application/json'],
  [51, 'application/json-patch+json'],
  [52, 'application/merge-patch+json'],
  [60, 'application/cbor'],
  [61, 'application/cwt'],
  [110, 'application/senml+json'],
  [111, 'application/sensml+json'],
  [112, 'application/senml+cbor'],
  [113, 'application/sensml+cbor'],
  [310, 'application/senml+xml'],
  [311, 'application/sensml+xml'],
])

/** The media type for a Content-Format number, or undefined when gridgate does not know the number. */
export function mediaTypeOf (format: number): string | undefined {
  return CONTENT_FORMATS.get(format)
}

/** The link-format media type of /.well-known/core (RFC 6690). */
export const LINK_FORMAT = 40
