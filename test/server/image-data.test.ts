/**
 * GET /v2/images/{id}/file through the node in front of a fake upstream
 * Glance: hits, misses, what the upstream refuses, non-active images,
 * checksums and eviction. Real sockets throughout.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { download, fetchAll, fileUrl, metric, startFakeGlanceAndNode, startTestNode } from './helpers.js';


describe('image data: hit and miss', () => {
  it('fetches the image once: the first download fills the cache, the second is a hit with Glance\'s headers', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(3 * 1024 * 1024 + 17);
    const image = await fake.addImage({ data });

    const first = await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'x' } });
    assert.equal(first.status, 200);
    assert.ok(first.body.equals(data));
    assert.equal(await node.cache.isCached(image.id), true);

    const second = await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'x' } });
    assert.equal(second.status, 200);
    assert.ok(second.body.equals(data));
    assert.equal(second.headers['content-type'], 'application/octet-stream');
    assert.equal(second.headers['content-length'], String(data.length));
    assert.equal(second.headers['content-md5'], image.checksum);

    assert.equal(fake.fileRequests(image.id), 1, 'one upstream download');
    assert.equal(fake.metadataRequests(image.id), 2, 'metadata checked on every request, hit or miss');
    assert.equal(await metric(url, 'image_cache_hit_responses_total'), 1);
    assert.equal(await metric(url, 'image_cache_miss_responses_total'), 1);
    assert.equal(await metric(url, 'image_cache_upstream_bytes_total'), data.length);
    assert.equal(await metric(url, 'image_cache_size_bytes'), data.length);
  });

  it('forwards the caller\'s token to the upstream on every request', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t, { fake: { validTokens: ['good'] } });
    const image = await fake.addImage({ data: imageBytes(1000) });
    await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'good' } });
    await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'good' } });
    const tokens = fake.requests.filter((r) => r.path.startsWith(`/v2/images/${image.id}`)).map((r) => r.headers['x-auth-token']);
    assert.deepEqual(tokens, ['good', 'good', 'good'], 'metadata, file, metadata');
  });
});

describe('image data: what is not cached', () => {
  it('serves an image larger than the whole cache straight from the upstream, every time', async (t) => {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const { url, node } = await startTestNode(t, { upstreamUrl: fake.url }, { imageCacheMaxSize: 1000 });
    const data = imageBytes(4096);
    const image = await fake.addImage({ data });
    for (let i = 0; i < 2; i++) assert.ok((await fetchAll(fileUrl(url, image.id))).body.equals(data));
    assert.equal(await node.cache.isCached(image.id), false);
    assert.equal(fake.fileRequests(image.id), 2);
    assert.equal(await metric(url, 'image_cache_bypass_responses_total'), 2);
  });

  it('serves an image whose ID cannot name a cache file from the upstream, and caches nothing', async (t) => {
    const { fake, url, dir } = await startFakeGlanceAndNode(t);
    const data = imageBytes(4096);
    const image = await fake.addImage({ id: 'name with spaces', data });
    const response = await fetchAll(fileUrl(url, encodeURIComponent(image.id)));
    assert.equal(response.status, 200);
    assert.ok(response.body.equals(data));
    assert.deepEqual(fs.readdirSync(path.join(dir, 'cache')).filter((name) => !['incomplete', 'invalid', 'queue', 'cache.db', 'cache.db-wal', 'cache.db-shm'].includes(name)), []);
  });
});

describe('image data: what the upstream refuses is refused', () => {
  for (const code of [401, 403, 404, 500]) {
    it(`passes the upstream's ${code} through with its body, and never serves the cached copy`, async (t) => {
      const { fake, url, node } = await startFakeGlanceAndNode(t, { server: { authStrategy: 'keystone' } });
      const image = await fake.addImage({ data: imageBytes(4096) });
      assert.equal((await fetchAll(fileUrl(url, image.id))).status, 200);
      fake.setFault(image.id, { kind: 'status', code, on: 'metadata', body: `refused with ${code}` });
      const refused = await fetchAll(fileUrl(url, image.id));
      assert.equal(refused.status, code);
      assert.equal(refused.body.toString(), `refused with ${code}`);
      assert.equal(await node.cache.isCached(image.id), true, 'the copy stays for callers the upstream lets in');
    });
  }

  it('refuses a cached image to a token the upstream refuses (401), and serves it to one it accepts', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t, { fake: { validTokens: ['good'] } });
    const image = await fake.addImage({ data: imageBytes(4096) });
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'good' } })).status, 200);
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'bad' } })).status, 401);
    assert.equal((await fetchAll(fileUrl(url, image.id))).status, 401);
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'good' } })).status, 200);
    assert.equal(fake.fileRequests(image.id), 1);
  });

  it('never serves a deactivated image from the cache: the request goes to the upstream', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    await fetchAll(fileUrl(url, image.id));
    fake.setStatus(image.id, 'deactivated');
    const response = await fetchAll(fileUrl(url, image.id));
    assert.equal(response.status, 403, 'Glance forbids downloading a deactivated image');
    assert.equal(fake.fileRequests(image.id), 2);
    assert.equal(await node.cache.isCached(image.id), true);
    fake.setStatus(image.id, 'active');
    assert.equal((await fetchAll(fileUrl(url, image.id))).status, 200);
    assert.equal(fake.fileRequests(image.id), 2, 'reactivated: a hit again');
  });

  it('does not cache an image that is not active (queued: 204 from the upstream)', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(100), status: 'queued' });
    assert.equal((await fetchAll(fileUrl(url, image.id))).status, 204);
    assert.equal(await node.cache.isCached(image.id), false);
  });
});

describe('image data: eviction on proof that the image is gone', () => {
  it('with noauth, an upstream 404 drops the cached copy', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t, { server: { authStrategy: 'noauth' } });
    const image = await fake.addImage({ data: imageBytes(4096) });
    await fetchAll(fileUrl(url, image.id));
    assert.equal((await fetchAll(`${fake.url}/v2/images/${image.id}`, { method: 'DELETE' })).status, 204, 'deleted on the upstream, not through this node');
    assert.equal((await fetchAll(fileUrl(url, image.id))).status, 404);
    assert.equal(await node.cache.isCached(image.id), false);
    assert.equal(await metric(url, 'image_cache_evictions_total{reason="upstream_deleted"}'), 1);
  });

  it('with keystone, a caller\'s 404 (another project\'s private image) never evicts it', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t, { fake: { validTokens: ['owner', 'stranger'] }, server: { authStrategy: 'keystone' } });
    const image = await fake.addImage({ data: imageBytes(4096), visibleTo: ['owner'] });
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'owner' } })).status, 200);
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'stranger' } })).status, 404);
    assert.equal(await node.cache.isCached(image.id), true);
    assert.equal((await fetchAll(fileUrl(url, image.id), { headers: { 'x-auth-token': 'owner' } })).status, 200);
    assert.equal(fake.fileRequests(image.id), 1, 'still a hit for its owner');
  });

  it('drops a cached copy whose size is not the image\'s, and fills again', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8192);
    const image = await fake.addImage({ data });
    await fetchAll(fileUrl(url, image.id));
    fs.truncateSync(node.cache.getImageFilepath(image.id), 100);
    const response = await fetchAll(fileUrl(url, image.id));
    assert.ok(response.body.equals(data));
    assert.equal(fake.fileRequests(image.id), 2);
    assert.equal(fs.statSync(node.cache.getImageFilepath(image.id)).size, data.length);
  });
});

describe('image data: only verified images are cached', () => {
  // 2 MiB is hashed inline; 8 MiB on a hash thread while it is written.
  for (const size of [2 * 1024 * 1024, 8 * 1024 * 1024]) {
    it(`a sha512 that does not match aborts the response and caches nothing (${size / 1024 / 1024} MiB)`, async (t) => {
      const { fake, url, node, dir } = await startFakeGlanceAndNode(t);
      const image = await fake.addImage({ data: imageBytes(size), osHashValue: 'ab'.repeat(64) });
      const result = await download(fileUrl(url, image.id));
      assert.equal(result.ok, false, 'the client sees an incomplete response, never a whole wrong one');
      assert.equal(await node.cache.isCached(image.id), false);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'cache', 'incomplete')), []);
      assert.equal(await metric(url, 'image_cache_upstream_fetches_total{outcome="failed"}'), 1);
    });

    it(`a sha512 that matches caches the image (${size / 1024 / 1024} MiB)`, async (t) => {
      const { fake, url, node } = await startFakeGlanceAndNode(t);
      const data = imageBytes(size);
      const image = await fake.addImage({ data });
      const result = await download(fileUrl(url, image.id));
      assert.ok(result.ok && result.response.body.equals(data));
      assert.equal(await node.cache.isCached(image.id), true);
    });
  }

  it('verifies concurrent fills whether they get a hash thread or hash inline (more fills than threads)', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const good = await Promise.all([1, 2, 3].map((seed) => fake.addImage({ data: imageBytes(8 * 1024 * 1024, seed) })));
    const bad = await Promise.all([4, 5, 6].map((seed) => fake.addImage({ data: imageBytes(8 * 1024 * 1024, seed), osHashValue: 'cd'.repeat(64) })));
    const results = await Promise.all([...good, ...bad].map((image) => download(fileUrl(url, image.id))));
    assert.deepEqual(results.map((r) => r.ok), [true, true, true, false, false, false]);
    for (const image of good) assert.equal(await node.cache.isCached(image.id), true);
    for (const image of bad) assert.equal(await node.cache.isCached(image.id), false);
  });

  it('verifies the strongest hash given: sha512 right and md5 wrong caches', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096), checksum: '0'.repeat(32) });
    const result = await download(fileUrl(url, image.id));
    assert.equal(result.ok, true);
    assert.equal(await node.cache.isCached(image.id), true);
  });

  it('falls back to md5 when there is no multihash: a wrong md5 caches nothing', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096), osHashAlgo: null, osHashValue: null, checksum: '0'.repeat(32) });
    assert.equal((await download(fileUrl(url, image.id))).ok, false);
    assert.equal(await node.cache.isCached(image.id), false);
  });
});

describe('image data: upstream faults', () => {
  const faults = [
    { name: 'resets mid-stream', fault: { kind: 'reset', afterBytes: 1024 * 1024 } },
    { name: 'sends fewer bytes than its Content-Length', fault: { kind: 'short', afterBytes: 1024 * 1024 } },
    { name: 'stalls past upstream_timeout', fault: { kind: 'stall', afterBytes: 1024 * 1024 } },
  ] as const;
  /**
   * upstream_timeout for the stall, short enough to keep the test short. It
   * is an idle limit, and the fake and the node share this process: the
   * retried download has to go through without one pause that long, so not
   * so short that a loaded machine's pause (a blocked write, a busy core)
   * could pass for a stall. The other faults end the connection, and run with
   * the default.
   */
  const STALL_TIMEOUT_S = 2;
  for (const { name, fault } of faults) {
    it(`when the upstream ${name}, the response is aborted and nothing is cached; the next request fills again`, async (t) => {
      const { fake, url, node } = await startFakeGlanceAndNode(t, fault.kind === 'stall' ? { server: { upstreamTimeout: STALL_TIMEOUT_S } } : {});
      const data = imageBytes(4 * 1024 * 1024);
      const image = await fake.addImage({ data });
      fake.setFault(image.id, fault);
      const failed = await download(fileUrl(url, image.id));
      assert.equal(failed.ok, false);
      assert.equal(await node.cache.isCached(image.id), false);
      fake.setFault(image.id, undefined);
      const retried = await download(fileUrl(url, image.id));
      assert.ok(retried.ok && retried.response.body.equals(data));
      assert.equal(await node.cache.isCached(image.id), true);
      assert.equal(fake.fileRequests(image.id), 2);
    });
  }

  it('passes an upstream 5xx on the download through and caches nothing', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    fake.setFault(image.id, { kind: 'status', code: 503, on: 'file', body: 'store unavailable' });
    const response = await fetchAll(fileUrl(url, image.id));
    assert.equal(response.status, 503);
    assert.equal(response.body.toString(), 'store unavailable');
    assert.equal(await node.cache.isCached(image.id), false);
  });

  it('answers 502 when the upstream cannot be reached', async (t) => {
    const fake = await startFakeGlance();
    const deadUrl = fake.url;
    await fake.close();
    const { url } = await startTestNode(t, { upstreamUrl: deadUrl });
    const response = await fetchAll(fileUrl(url, 'c0ffee00-0000-4000-8000-000000000000'), { headers: { accept: 'application/json' } });
    assert.equal(response.status, 502);
    assert.match(JSON.parse(response.body.toString()).message, /unavailable/);
  });
});
