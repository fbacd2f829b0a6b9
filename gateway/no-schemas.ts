// Fastify option for servers whose routes declare no JSON schemas (gridgate's admin API and its HTTP
// device listener). Without it, creating a server requires fastify's default compilers and with them
// ajv, ajv-formats and fast-json-stringify (about 1 MiB of heap that an idle gateway never uses). Fastify
// calls these factories only for a route that has a schema; none does, and one that did would fail
// when it is registered, at start-up, with the message below.
import type { FastifyServerOptions } from 'fastify'

function noSchemas (): never {
  throw new Error('gridgate routes declare no JSON schemas (gateway/no-schemas.ts): validate in the handler')
}

export const noSchemaCompilers: NonNullable<FastifyServerOptions['schemaController']> = {
  compilersFactory: { buildValidator: noSchemas, buildSerializer: noSchemas },
}
