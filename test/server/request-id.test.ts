/**
 * Request ids, as OpenStack services use them: every answer of the node
 * carries an id of its own (x-openstack-request-id: req-<uuid>, never the
 * upstream's), the request's log line has it and the caller's global id, and
 * the upstream requests made for it (metadata, the fill, a forward) carry the
 * global id, or the node's own when the caller sent none, so that the
 * upstream's log and ours can be joined.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { createLogger } from '../../src/log.js';
import { SERVE_DEFAULTS } from '../../src/server/config.js';
import { startNode } from '../../src/server/node.js';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance, type FakeGlance } from '../support/fake-glance.js';
import { fetchAll, fileUrl } from './helpers.js';

const OWN_ID = /^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const GLOBAL_ID = 'req-0d5a5b6e-8c1e-4f7b-9a3d-2b6c4e8f1a20';

/** A fake Glance and a node in front of it whose log lines (info and up) the test reads. */
async function setUp(t: TestContext): Promise<{ fake: FakeGlance; url: string; lines: Array<Record<string, unknown>> }> {
  const fake = await startFakeGlance();
  t.after(() => fake.close());
  const dir = makeTempDir('image-cache-node-');
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger('info', (line) => {
    lines.push(JSON.parse(line) as Record<string, unknown>);
  });
  const node = await startNode({
    cache: { imageCacheDir: `${dir}/cache` },
    server: { ...SERVE_DEFAULTS, filesystemStoreDatadir: `${dir}/images`, bindPort: 0, upstreamUrl: fake.url },
  }, { log });
  t.after(async () => {
    await node.close();
    removeDir(dir);
  });
  return { fake, url: node.url, lines };
}

function idOf(response: { headers: Record<string, string | string[] | undefined> }): string {
  const id = response.headers['x-openstack-request-id'];
  assert.equal(typeof id, 'string', 'an x-openstack-request-id on the answer');
  return id as string;
}

/** The request log line of the answer with this id. */
function lineOf(lines: Array<Record<string, unknown>>, requestId: string): Record<string, unknown> {
  const line = lines.find((l) => l.msg === 'request' && l.requestId === requestId);
  assert.ok(line !== undefined, `a request line with requestId ${requestId}`);
  return line;
}

describe('request ids', () => {
  it('answers every request with an id of its own, a new one each time, and logs it on the request\'s line', async (t) => {
    const { fake, url, lines } = await setUp(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    const answers = [
      await fetchAll(fileUrl(url, image.id)), // miss
      await fetchAll(fileUrl(url, image.id)), // hit
      await fetchAll(`${url}/v2/images/${image.id}`), // forwarded: the fake Glance sends an id of its own
      await fetchAll(`${url}/v2/cache`),
      await fetchAll(`${url}/v2/cache/nodes/${image.id}`), // the node's own refusal (409)
      await fetchAll(`${url}/nowhere`), // 404
      await fetchAll(`${url}/healthcheck`),
      await fetchAll(`${url}/versions`),
    ];
    assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 200, 409, 404, 200, 200]);
    const ids = answers.map(idOf);
    for (const id of ids) assert.match(id, OWN_ID);
    assert.equal(new Set(ids).size, ids.length, 'a new id for each request');
    for (const id of ids) assert.equal(lineOf(lines, id).globalRequestId, undefined);
    assert.equal(lineOf(lines, ids[1]!).cache, 'hit');
  });

  it('keeps a caller\'s global id: on the log line, and on every upstream request made for it (metadata, fill, forward)', async (t) => {
    const { fake, url, lines } = await setUp(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    const headers = { 'x-openstack-request-id': GLOBAL_ID };
    const miss = await fetchAll(fileUrl(url, image.id), { headers });
    assert.equal(miss.status, 200);
    const forwarded = await fetchAll(`${url}/v2/images/${image.id}`, { headers });
    assert.equal(forwarded.status, 200);
    for (const answer of [miss, forwarded]) {
      const id = idOf(answer);
      assert.notEqual(id, GLOBAL_ID, 'the node\'s own id on its answer, as oslo.middleware answers');
      assert.match(id, OWN_ID);
      assert.equal(lineOf(lines, id).globalRequestId, GLOBAL_ID);
    }
    const upstream = fake.requests.map((r) => [r.method, r.path, r.headers['x-openstack-request-id']]);
    assert.deepEqual(upstream, [
      ['GET', `/v2/images/${image.id}`, GLOBAL_ID],
      ['GET', `/v2/images/${image.id}/file`, GLOBAL_ID],
      ['GET', `/v2/images/${image.id}`, GLOBAL_ID],
    ]);
  });

  it('sends its own id upstream when the caller sends no global id or one not in oslo\'s form (which it does not log)', async (t) => {
    const { fake, url, lines } = await setUp(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    const plain = await fetchAll(fileUrl(url, image.id));
    const forged = await fetchAll(`${url}/v2/images/${image.id}`, { headers: { 'x-openstack-request-id': 'req-"} {"level":"error' } });
    assert.equal(plain.status, 200);
    assert.equal(forged.status, 200);
    assert.equal(lineOf(lines, idOf(forged)).globalRequestId, undefined);
    const sent = fake.requests.map((r) => r.headers['x-openstack-request-id']);
    assert.deepEqual(sent, [idOf(plain), idOf(plain), idOf(forged)]);
  });
});
