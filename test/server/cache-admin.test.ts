/**
 * The cache management API (Glance's v2.14+ routes) with its status codes,
 * prefetching through the one-fetch-per-image fills, and maintenance
 * without cron: real sockets, a fake upstream Glance, noauth.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { download, fetchAll, startFakeGlanceAndNode, startTestNode, until } from './helpers.js';


const json = (body: Buffer): any => JSON.parse(body.toString());
/** Errors come as JSON only when asked for (as Glance's do). */
const ACCEPT_JSON = { accept: 'application/json' };

describe('cache management API', () => {
  it('GET /v2/cache lists cached images in Glance\'s shape and the queue', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(4096);
    const cached = await fake.addImage({ data });
    await fetchAll(`${url}/v2/images/${cached.id}/file`);
    await node.cache.queueImage('queued-only');
    const response = await fetchAll(`${url}/v2/cache`);
    assert.equal(response.status, 200);
    const body = json(response.body);
    assert.deepEqual(body.queued_images, ['queued-only']);
    assert.equal(body.cached_images.length, 1);
    const [entry] = body.cached_images;
    assert.deepEqual(Object.keys(entry).sort(), ['hits', 'image_id', 'last_accessed', 'last_modified', 'size']);
    assert.equal(entry.image_id, cached.id);
    assert.equal(entry.size, data.length);
    assert.equal(typeof entry.last_modified, 'number');
  });

  it('PUT /v2/cache/{id} answers 202 and fetches the image at once; 404 for an unknown image, 400 for one not active', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(64 * 1024) });
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT' })).status, 202);
    await until(() => node.cache.isCached(image.id), 'the prefetch');
    // The commit pops the marker just after it publishes the image.
    await until(async () => !(await node.cache.isQueued(image.id)), 'the commit to pop the queue marker');
    assert.equal(fake.fileRequests(image.id), 1);

    const unknown = await fetchAll(`${url}/v2/cache/00000000-0000-4000-8000-000000000000`, { method: 'PUT', headers: ACCEPT_JSON });
    assert.equal(unknown.status, 404);
    assert.match(json(unknown.body).message, /not found/);
    const queued = await fake.addImage({ data: imageBytes(10), status: 'queued' });
    const notActive = await fetchAll(`${url}/v2/cache/${queued.id}`, { method: 'PUT', headers: ACCEPT_JSON });
    assert.equal(notActive.status, 400);
    assert.match(json(notActive.body).message, /active/);
  });

  it('DELETE /v2/cache/{id}: 204 for a cached or queued image, 404 when neither and unknown upstream', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    await fetchAll(`${url}/v2/images/${image.id}/file`);
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'DELETE' })).status, 204);
    assert.equal(await node.cache.isCached(image.id), false);
    await node.cache.queueImage('only-queued');
    assert.equal((await fetchAll(`${url}/v2/cache/only-queued`, { method: 'DELETE' })).status, 204);
    assert.equal(await node.cache.isQueued('only-queued'), false);
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'DELETE' })).status, 204, 'known upstream, though not cached');
    assert.equal((await fetchAll(`${url}/v2/cache/never-heard-of-it`, { method: 'DELETE' })).status, 404);
  });

  for (const [target, cacheCleared, queueCleared] of [[undefined, true, true], ['both', true, true], ['cache', true, false], ['queue', false, true]] as const) {
    it(`DELETE /v2/cache with clear target ${target ?? '(absent)'} answers 204 and clears ${[cacheCleared && 'the cache', queueCleared && 'the queue'].filter(Boolean).join(' and ')}`, async (t) => {
      const { fake, url, node } = await startFakeGlanceAndNode(t);
      const image = await fake.addImage({ data: imageBytes(4096) });
      await fetchAll(`${url}/v2/images/${image.id}/file`);
      await node.cache.queueImage('waiting');
      const response = await fetchAll(`${url}/v2/cache`, { method: 'DELETE', headers: target === undefined ? {} : { 'x-image-cache-clear-target': target } });
      assert.equal(response.status, 204);
      assert.equal(await node.cache.isCached(image.id), !cacheCleared);
      assert.equal(await node.cache.isQueued('waiting'), !queueCleared);
    });
  }

  it('DELETE /v2/cache with an unknown clear target is a 400 and clears nothing', async (t) => {
    const { url, node } = await startFakeGlanceAndNode(t);
    await node.cache.queueImage('waiting');
    const response = await fetchAll(`${url}/v2/cache`, { method: 'DELETE', headers: { ...ACCEPT_JSON, 'x-image-cache-clear-target': 'everything' } });
    assert.equal(response.status, 400);
    assert.match(json(response.body).message, /x-image-cache-clear-target/);
    assert.equal(await node.cache.isQueued('waiting'), true);
  });

  it('POST /v2/cache/prune prunes to the size limit and says what it removed; POST /v2/cache/clean answers 200', async (t) => {
    // The cache is filled past its limit on purpose, for the POST to prune: no prune after these commits.
    const { url, node } = await startFakeGlanceAndNode(t, { cache: { imageCacheMaxSize: 10_000 }, engine: { pruneAfterCommit: false } });
    for (const id of ['a', 'b', 'c']) assert.ok(await node.cache.cacheImageStream(id, [imageBytes(6_000)]));
    const pruned = await fetchAll(`${url}/v2/cache/prune`, { method: 'POST' });
    assert.equal(pruned.status, 200);
    assert.deepEqual(json(pruned.body), { total_files_pruned: 2, total_bytes_pruned: 12_000 });
    fs.writeFileSync(path.join(node.cache.options.imageCacheDir, 'invalid', 'leftover'), 'x');
    const cleaned = await fetchAll(`${url}/v2/cache/clean`, { method: 'POST' });
    assert.equal(cleaned.status, 200);
    assert.equal(json(cleaned.body).invalid, 1);
  });

  it('GET /v2/cache/nodes/{id} is a 409 unless the driver is centralized_db', async (t) => {
    const { url } = await startFakeGlanceAndNode(t);
    const response = await fetchAll(`${url}/v2/cache/nodes/any-image`, { headers: ACCEPT_JSON });
    assert.equal(response.status, 409);
    assert.match(json(response.body).message, /centralized_db/);
  });

  it('answers /versions itself, listing v2.18 as current and the cache API\'s v2.14', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const response = await fetchAll(`${url}/versions`);
    const ids = json(response.body).versions.map((v: { id: string }) => v.id);
    assert.equal(json(response.body).versions[0].status, 'CURRENT');
    assert.ok(ids.includes('v2.18') && ids.includes('v2.14'));
    assert.equal(fake.requests.filter((r) => r.path === '/versions').length, 0, 'not forwarded');
  });
});

describe('prefetching', () => {
  it('a queued image downloaded by 10 clients meanwhile is fetched from the upstream once', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const held = fake.hold(image.id);
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT' })).status, 202);
    await held.waiting;
    const downloads = Array.from({ length: 10 }, () => download(`${url}/v2/images/${image.id}/file`));
    held.release();
    for (const result of await Promise.all(downloads)) assert.ok(result.ok && result.response.body.equals(data));
    assert.equal(fake.fileRequests(image.id), 1);
  });

  it('keeps the marker of a failed fetch and tries again until it succeeds', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    fake.setFault(image.id, { kind: 'status', code: 503, on: 'file' });
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT' })).status, 202);
    await until(() => fake.fileRequests(image.id) >= 1, 'the first attempt');
    assert.equal(await node.cache.isQueued(image.id), true, 'the marker stays');
    fake.setFault(image.id, undefined);
    await until(() => node.cache.isCached(image.id), 'a retry to succeed');
    await until(async () => !(await node.cache.isQueued(image.id)), 'the commit to pop the queue marker');
  });

  it('fetches the images queued before it started', async (t) => {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const image = await fake.addImage({ data: imageBytes(4096) });
    const first = await startTestNode(t, { upstreamUrl: fake.url });
    const cacheDir = first.node.cache.options.imageCacheDir;
    // Queued in the directory (as an earlier run or Glance's tools leave it), with no fetch started, then the node stopped.
    await first.node.cache.queueImage(image.id);
    await first.node.close();
    assert.ok(fs.existsSync(path.join(cacheDir, 'queue', image.id)));
    const second = await startTestNode(t, { upstreamUrl: fake.url }, { imageCacheDir: cacheDir });
    await until(() => second.node.cache.isCached(image.id), 'the resumed prefetch');
  });
});

describe('maintenance without cron', () => {
  it('prunes as soon as a commit takes the cache past image_cache_max_size: never over the limit after a commit, no client error', async (t) => {
    const size = 64 * 1024;
    const { fake, url, node } = await startFakeGlanceAndNode(t, { cache: { imageCacheMaxSize: Math.floor(2.5 * size) } });
    for (let i = 0; i < 8; i++) {
      const image = await fake.addImage({ data: imageBytes(size, i + 1) });
      const result = await download(`${url}/v2/images/${image.id}/file`);
      assert.ok(result.ok, 'no client error');
      await until(async () => (await node.cache.getCacheSize()) <= 2.5 * size, `the cache back under its limit after image ${i}`);
    }
    assert.ok((await node.cache.getCachedImages()).length <= 2);
  });
});
