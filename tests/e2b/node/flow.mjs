// E2B's JS SDK (npm `e2b`, unmodified) against bhatti's E2B-compatible listener.
//
// Run by crates/bhatti/tests/e2b_node.rs with E2B_API_URL / E2B_SANDBOX_URL at the listener and
// E2B_API_KEY a bhatti API key, from the directory scripts/e2b-node installs (its
// node_modules has the SDK). One sandbox for every step; the last step kills it. Each step
// prints "ok <name>"; the first failure prints it and exits 1.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'

import { CommandExitError, NotFoundError, Sandbox, SandboxNotFoundError } from 'e2b'

const RUN = randomUUID().slice(0, 8)
let sbx
let passed = 0

async function step(name, body) {
  try {
    await body()
    passed += 1
    console.log(`ok ${name}`)
  } catch (e) {
    console.error(`FAILED ${name}:`, e)
    if (sbx) await sbx.kill().catch(() => {})
    process.exit(1)
  }
}

await step('create answers an id and a running sandbox', async () => {
  sbx = await Sandbox.create({ timeoutMs: 900_000, metadata: { suite: 'e2b-node', run: RUN } })
  assert.ok(sbx.sandboxId)
  assert.equal(await sbx.isRunning(), true)
})

await step('commands.run gives its stdout and exit code', async () => {
  const r = await sbx.commands.run('echo hi from node')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'hi from node\n')
})

await step('a non-zero exit raises CommandExitError', async () => {
  await assert.rejects(sbx.commands.run('echo oops; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, `${e}`)
    assert.equal(e.exitCode, 3)
    assert.match(e.stdout, /oops/)
    return true
  })
})

await step('envs and cwd reach the command', async () => {
  const r = await sbx.commands.run('echo $GREETING; pwd', { envs: { GREETING: 'namaste' }, cwd: '/tmp' })
  assert.equal(r.stdout, 'namaste\n/tmp\n')
})

await step('files write, read, list', async () => {
  const base = `/tmp/e2b-node-${RUN}`
  await sbx.files.write(`${base}/a.txt`, 'hello')
  assert.equal(await sbx.files.read(`${base}/a.txt`), 'hello')
  const bytes = new Uint8Array([0, 1, 2, 255])
  await sbx.files.write(`${base}/b.bin`, bytes.buffer)
  assert.deepEqual(new Uint8Array(await sbx.files.read(`${base}/b.bin`, { format: 'bytes' })), bytes)
  const names = (await sbx.files.list(base)).map((e) => e.name).sort()
  assert.deepEqual(names, ['a.txt', 'b.bin'])
  assert.equal(await sbx.files.exists(`${base}/a.txt`), true)
  assert.equal(await sbx.files.exists(`${base}/missing`), false)
  await assert.rejects(sbx.files.read(`${base}/missing`), NotFoundError)
})

await step('getInfo answers the sandbox, its metadata and a running state', async () => {
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.state, 'running')
  assert.equal(info.metadata.run, RUN)
  assert.ok(info.endAt > info.startedAt, `${info.startedAt} .. ${info.endAt}`)
  const byId = await Sandbox.getInfo(sbx.sandboxId)
  assert.equal(byId.sandboxId, sbx.sandboxId)
})

await step('list finds it by metadata', async () => {
  const page = await Sandbox.list({ query: { metadata: { run: RUN } } }).nextItems()
  assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
})

await step('kill ends it: getInfo is not found, a second kill answers false', async () => {
  await sbx.kill()
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  sbx = undefined
})

console.log(`${passed} passed, 0 failed`)
