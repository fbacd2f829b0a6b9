import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import Fastify from 'fastify'
import { noSchemaCompilers } from '../../gateway/no-schemas.js'

// Each test file runs in its own process, so the module cache below is this file's alone.
const loaded = (name: string): boolean => Object.keys(createRequire(import.meta.url).cache).some(f => f.includes(`/node_modules/${name}`))

test('a server without schemas answers without ever loading ajv or the fast-json-stringify compiler', async (t) => {
  const app = Fastify({ logger: false, schemaController: noSchemaCompilers })
  t.after(() => app.close())
  app.post('/x', async (req) => ({ got: (req.body as { n: number }).n, at: [1, 2] }))
  app.setErrorHandler((err: Error, _req, reply) => { void reply.code(418).send({ code: 'E', message: err.message }) })
  await app.ready()
  const ok = await app.inject({ method: 'POST', url: '/x', payload: { n: 7 } })
  assert.equal(ok.statusCode, 200)
  assert.deepEqual(ok.json(), { got: 7, at: [1, 2] })
  const bad = await app.inject({ method: 'POST', url: '/x', headers: { 'content-type': 'application/json' }, payload: '{' })
  assert.equal(bad.statusCode, 418)
  for (const name of ['ajv/', '@fastify/ajv-compiler/', 'fast-json-stringify/index.js', '@fastify/fast-json-stringify-compiler/']) assert.equal(loaded(name), false, `${name} was loaded`)
  assert.equal(loaded('fastify/'), true)
})

test('a route that declares a schema fails when the server starts, saying why', async (t) => {
  const app = Fastify({ logger: false, schemaController: noSchemaCompilers })
  t.after(() => app.close())
  app.post('/x', { schema: { body: { type: 'object' } } }, async () => ({}))
  await assert.rejects(async () => { await app.ready() }, /declare no JSON schemas/)
})
