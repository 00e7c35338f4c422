/**
 * The node in front of the real thing: Debian's glance-api (no cache of its
 * own, as it runs behind a cache node), started by the test. Upload and
 * delete through the node, downloads (miss, hit, ten at once, a range), and
 * Glance's own access log to count what it served.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { glanceAvailable, startGlance, type GlancePeer } from '../support/glance-peer.js';
import { imageBytes } from '../support/fake-glance.js';
import { download, fetchAll, sha512, startTestNode } from './helpers.js';

const missing = glanceAvailable() ? undefined : 'Debian\'s glance-api is not installed (apt-get install glance-api; .ci/run does)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

/** Downloads of the image's data that Glance itself served, from its access log. */
function glanceDownloads(glance: GlancePeer, imageId: string): number {
  const log = fs.existsSync(glance.log) ? fs.readFileSync(glance.log, 'utf8') : '';
  return log.split('\n').filter((line) => line.includes(`GET /v2/images/${imageId}/file`)).length;
}

describe('the node in front of a real Glance', { skip: missing }, () => {
  let glance: GlancePeer;
  before(async () => {
    glance = await startGlance({ cache: 'off' });
  });
  after(() => glance?.stop());

  it('uploads through the node, downloads through it (miss, hit, ranges from cache), and deletes through it', async (t) => {
    const { url, node } = await startTestNode(t, { upstreamUrl: glance.url });
    const headers = { 'x-auth-token': 'x' };
    const created = await fetchAll(`${url}/v2/images`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'through-the-node', disk_format: 'raw', container_format: 'bare' }),
    });
    assert.equal(created.status, 201, created.body.toString());
    const id = JSON.parse(created.body.toString()).id as string;
    const data = imageBytes(6 * 1024 * 1024 + 5);
    const uploaded = await fetchAll(`${url}/v2/images/${id}/file`, { method: 'PUT', headers: { ...headers, 'content-type': 'application/octet-stream' }, body: data });
    assert.equal(uploaded.status, 204, uploaded.body.toString());
    const metadata = JSON.parse((await fetchAll(`${url}/v2/images/${id}`, { headers })).body.toString());
    assert.equal(metadata.status, 'active');
    assert.equal(metadata.os_hash_value, sha512(data), 'Glance hashed what the node streamed to it');

    const miss = await fetchAll(`${url}/v2/images/${id}/file`, { headers });
    assert.equal(miss.status, 200);
    assert.ok(miss.body.equals(data));
    const hit = await fetchAll(`${url}/v2/images/${id}/file`, { headers });
    assert.ok(hit.body.equals(data));
    assert.equal(hit.headers['content-md5'], metadata.checksum);
    const range = await fetchAll(`${url}/v2/images/${id}/file`, { headers: { ...headers, range: 'bytes=1000-1999' } });
    assert.equal(range.status, 206);
    assert.ok(range.body.equals(data.subarray(1000, 2000)));
    assert.equal(glanceDownloads(glance, id), 1, 'Glance served the data once');

    const deleted = await fetchAll(`${url}/v2/images/${id}`, { method: 'DELETE', headers });
    assert.equal(deleted.status, 204);
    assert.equal(await node.cache.isCached(id), false);
    assert.equal((await fetchAll(`${url}/v2/images/${id}/file`, { headers })).status, 404);
  });

  it('answers 10 concurrent first downloads with one read from Glance', async (t) => {
    const { url } = await startTestNode(t, { upstreamUrl: glance.url });
    const data = imageBytes(16 * 1024 * 1024);
    const created = JSON.parse((await fetchAll(`${url}/v2/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"herd","disk_format":"raw","container_format":"bare"}' })).body.toString());
    assert.equal((await fetchAll(`${url}/v2/images/${created.id}/file`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: data })).status, 204);
    const results = await Promise.all(Array.from({ length: 10 }, () => download(`${url}/v2/images/${created.id}/file`, { 'x-auth-token': 'x' })));
    for (const result of results) assert.ok(result.ok && result.response.body.equals(data));
    assert.equal(glanceDownloads(glance, created.id), 1);
  });
});
