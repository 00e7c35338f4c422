/**
 * The cache management commands with --url: real child processes against a
 * real node started in this process (on a local image directory, or in
 * front of the fake Glance), through its cache API.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { importImage } from '../../src/sources/local-directory.js';
import { fetchAll, startTestNode, until, type NodeUnderTest } from '../server/helpers.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { ISO_TIME, ok, runCli } from './helpers.js';

/** A node whose source is its local image directory, holding these images. */
async function nodeWithImages(t: TestContext, images: Record<string, Buffer>): Promise<NodeUnderTest> {
  const under = await startTestNode(t, {});
  for (const [id, data] of Object.entries(images)) {
    const file = path.join(under.dir, `${id}.img`);
    fs.writeFileSync(file, data);
    await importImage(path.join(under.dir, 'images'), file, { id });
  }
  return under;
}

describe('image-cache --url', () => {
  it('queue-image asks the node, which caches the images; list-cached and list-queued show them, --json exactly as GET /v2/cache sends them', async (t) => {
    const { node, url } = await nodeWithImages(t, { 'img-a': imageBytes(64 * 1024), 'img-b': imageBytes(2000) });
    assert.equal(await ok(['queue-image', 'img-a', 'img-b', '--url', url]), 'Queued img-a.\nQueued img-b.\n');
    await until(async () => (await node.cache.isCached('img-a')) && (await node.cache.isCached('img-b')) && (await node.cache.getQueuedImages()).length === 0, 'the node\'s prefetch');

    const listing = JSON.parse(await ok(['list-cached', '--json', '--url', url])) as { cached_images: unknown[] };
    const api = JSON.parse((await fetchAll(`${url}/v2/cache`)).body.toString()) as { cached_images: unknown[] };
    assert.deepEqual(listing, { cached_images: api.cached_images });
    assert.equal(listing.cached_images.length, 2);

    const lines = (await ok(['list-cached', '--url', url])).trimEnd().split('\n');
    assert.match(lines[0]!, /^ID\s+Last Accessed \(UTC\)\s+Last Modified \(UTC\)\s+Size\s+Hits$/);
    assert.deepEqual(lines.slice(2, 4).map((line) => line.replace(new RegExp(ISO_TIME.source, 'g'), 'TIME').replace(/\s+/g, ' ')).sort(), ['img-a TIME TIME 64.0 KiB 0', 'img-b TIME TIME 2.0 KiB 0']);
    assert.equal(lines[4], '2 images, 66.0 KiB');

    await node.cache.queueImage('waiting');
    assert.equal(await ok(['list-queued', '--url', url]), 'ID\n-------\nwaiting\n1 image\n');
    assert.deepEqual(JSON.parse(await ok(['list-queued', '--json', '--url', url])), { queued_images: ['waiting'] });
  });

  it('delete-cached-image of an image the node does not know prints the node\'s 404 and its message, and exits 1', async (t) => {
    const { url } = await nodeWithImages(t, {});
    const result = await runCli(['delete-cached-image', 'never-heard-of-it', '--url', url]);
    assert.equal(result.status, 1);
    assert.equal(result.stdout, '');
    assert.equal(result.stderr, 'image-cache delete-cached-image: DELETE /v2/cache/never-heard-of-it: 404 Not Found: Image never-heard-of-it not found.\n');
  });

  it('delete-cached-image and delete-queued-image remove only what they name; the delete-all commands clear the cache and the queue', async (t) => {
    const { node, url } = await nodeWithImages(t, { a: imageBytes(100), b: imageBytes(200), c: imageBytes(300) });
    await ok(['queue-image', 'a', 'b', 'c', '--url', url]);
    await until(async () => (await node.cache.getCachedImages()).length === 3 && (await node.cache.getQueuedImages()).length === 0, 'the node\'s prefetch');
    await node.cache.queueImage('q1');
    await node.cache.queueImage('q2');

    assert.equal(await ok(['delete-queued-image', 'a', '--url', url]), 'Nothing deleted: it is cached, not queued (delete-cached-image removes it).\n');
    assert.equal(await node.cache.isCached('a'), true);
    assert.equal(await ok(['delete-cached-image', 'q1', '--url', url]), 'Nothing deleted: it is queued, not cached (delete-queued-image removes it).\n');
    assert.equal(await node.cache.isQueued('q1'), true);

    assert.equal(await ok(['delete-cached-image', 'a', '--url', url]), 'Deleted cached image a.\n');
    assert.equal(await node.cache.isCached('a'), false);
    assert.deepEqual(JSON.parse(await ok(['delete-queued-image', 'q1', '--json', '--url', url])), { image_id: 'q1', deleted: true });
    assert.equal(await node.cache.isQueued('q1'), false);

    assert.equal(await ok(['delete-all-cached-images', '--url', url]), 'Deleted 2 cached images.\n');
    assert.deepEqual(await node.cache.getCachedImages(), []);
    assert.deepEqual(await node.cache.getQueuedImages(), ['q2'], 'the queue is another list');
    assert.deepEqual(JSON.parse(await ok(['delete-all-queued-images', '--json', '--url', url])), { deleted: 1 });
    assert.deepEqual(await node.cache.getQueuedImages(), []);
  });

  it('prefetch asks the node for every queued image and ends once the node has cached it', async (t) => {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const { node, url } = await startTestNode(t, { upstreamUrl: fake.url });
    const image = await fake.addImage({ data: imageBytes(64 * 1024) });
    const held = fake.hold(image.id);
    await ok(['queue-image', image.id, '--url', url]);
    await held.waiting;
    // The download goes on only once prefetch has asked for the image: it finds the image queued and must wait for it.
    node.server.on('request', (req) => {
      if (req.method === 'PUT' && req.url === `/v2/cache/${image.id}`) held.release();
    });
    await node.cache.queueImage('ghost');
    const result = await runCli(['prefetch', '--url', url]);
    assert.equal(await node.cache.isCached(image.id), true, 'cached by the time prefetch ended');
    assert.equal(result.status, 1, 'ghost is unknown to the source');
    assert.equal(result.stdout, 'Prefetched 1 of 2 queued images.\n');
    assert.match(result.stderr, new RegExp(`^\\[[12]/2\\] ${image.id}: cached \\(64\\.0 KiB\\)$`, 'm'));
    assert.match(result.stderr, /^\[[12]\/2\] ghost: PUT \/v2\/cache\/ghost: 404 Not Found: Image ghost not found\. \(left queued\)$/m);
    assert.equal(fake.fileRequests(image.id), 1, 'one download');

    const json = await runCli(['prefetch', '--json', '--url', url]);
    assert.equal(json.status, 1);
    assert.deepEqual(JSON.parse(json.stdout), { cached_images: [], not_cached_images: { ghost: 'PUT /v2/cache/ghost: 404 Not Found: Image ghost not found. (left queued)' } });
    await node.cache.deleteQueuedImage('ghost');
    assert.equal(await ok(['prefetch', '--url', url]), 'Prefetched 0 of 0 queued images.\n');
  });

  it('sends the token of --token, else OS_AUTH_TOKEN, as X-Auth-Token', async (t) => {
    const fake = await startFakeGlance({ validTokens: ['good'] });
    t.after(() => fake.close());
    const { url } = await startTestNode(t, { upstreamUrl: fake.url, upstreamToken: 'good' });
    const image = await fake.addImage({ data: imageBytes(1000) });
    const without = await runCli(['queue-image', image.id, '--url', url]);
    assert.equal(without.status, 1);
    assert.match(without.stderr, /^image-cache queue-image: PUT \/v2\/cache\/\S+: 401 Unauthorized: /);
    assert.equal((await runCli(['queue-image', image.id, '--url', url], { env: { OS_AUTH_TOKEN: 'good' } })).status, 0);
    assert.equal((await runCli(['queue-image', image.id, '--url', url, '--token', 'good'], { env: { OS_AUTH_TOKEN: 'bad' } })).status, 0);
    assert.equal((await runCli(['queue-image', image.id, '--url', url, '--token', 'bad'], { env: { OS_AUTH_TOKEN: 'good' } })).status, 1, '--token wins');
  });

  it('a node that cannot be reached is an error (exit 1) that names it', async () => {
    const result = await runCli(['list-cached', '--url', 'http://127.0.0.1:1']);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /^image-cache list-cached: cannot reach the node at http:\/\/127\.0\.0\.1:1: /);
  });
});
