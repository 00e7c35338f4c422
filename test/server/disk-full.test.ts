/**
 * The cache's disk fills (issue 9): a real, small file system (tmpfs) under
 * the cache directory, so ENOSPC comes from the kernel. Expected outcome:
 * every client still gets the image's exact bytes (what reached the disk,
 * then the rest from the upstream), nothing partial is cached or left
 * behind, and the cache caches again once there is room.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { freeBytes, mountSmallDisk } from '../support/small-disk.js';
import { download, fetchAll, fileUrl, metric, startFakeGlanceAndNode, startServe, until } from './helpers.js';
import { makeTempDir, removeDir } from '../helpers.js';

const MiB = 1024 * 1024;
const DISK = 24 * MiB;

async function setUp(t: TestContext) {
  const disk = mountSmallDisk(t, DISK);
  // image_cache_max_size larger than the disk: the misconfiguration (or the other tenant of the disk) that makes it fill.
  return { disk, ...(await startFakeGlanceAndNode(t, { cache: { imageCacheDir: disk, imageCacheMaxSize: 1024 * MiB } })) };
}

/** Nothing the failed fills left behind, and nothing verify() would have to repair. */
async function assertConsistent(node: Awaited<ReturnType<typeof setUp>>['node'], disk: string, cached: string[]): Promise<void> {
  assert.deepEqual(fs.readdirSync(path.join(disk, 'incomplete')), [], 'no incomplete/ leftovers');
  assert.deepEqual(fs.readdirSync(path.join(disk, 'invalid')), [], 'no partial file kept in invalid/: it held right bytes, and would keep the disk full');
  assert.deepEqual((await node.cache.getCachedImages()).map((image) => image.imageId).sort(), [...cached].sort());
  assert.deepEqual(await node.cache.verify(), { recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 });
}

describe('image data: the cache\'s disk fills', () => {
  it('during a fill, every client gets the whole image right (the rest from the upstream), nothing partial stays, and it caches once there is room', async (t) => {
    const { fake, url, node, disk } = await setUp(t);
    const first = await fake.addImage({ data: imageBytes(10 * MiB, 1) });
    assert.equal((await download(fileUrl(url, first.id))).ok, true);
    assert.equal(await node.cache.isCached(first.id), true);

    // Larger than what is left: the fill's writes fail with ENOSPC part of the way.
    const data = imageBytes(20 * MiB, 2);
    const image = await fake.addImage({ data });
    assert.ok(freeBytes(disk) < data.length, 'the image does not fit in what is left');
    const held = fake.hold(image.id);
    const downloads = [0, 1, 2].map(() => download(fileUrl(url, image.id)));
    await held.waiting;
    // The other two follow the fill before it fails: one that came after would be a fill of its own, not a follower.
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 2, 'two followers');
    held.release();
    for (const result of await Promise.all(downloads)) {
      assert.ok(result.ok, `a download failed: ${result.ok ? '' : result.error.message}`);
      assert.equal(result.response.status, 200);
      assert.ok(result.response.body.equals(data), 'the exact bytes');
    }
    const fileRequests = fake.requests.filter((r) => r.path === `/v2/images/${image.id}/file`);
    const rests = fileRequests.map((r) => /^bytes=(\d+)-/.exec(String(r.headers.range ?? ''))).filter((m) => m !== null);
    assert.ok(rests.some((m) => Number(m[1]) > 0), 'a follower took the rest from the upstream, from where the disk failed');
    assert.ok(fileRequests.length <= 4, 'one fill, then at most one request per client');

    assert.equal(await node.cache.isCached(image.id), false);
    await assertConsistent(node, disk, [first.id]);
    assert.ok(freeBytes(disk) > DISK - 12 * MiB, 'the partial file\'s space is free again');

    // The cached image is still served; once it is deleted there is room, and the image caches.
    const hit = await fetchAll(fileUrl(url, first.id));
    assert.equal(hit.status, 200);
    assert.ok(hit.body.equals(imageBytes(10 * MiB, 1)));
    assert.equal((await fetchAll(`${url}/v2/cache/${first.id}`, { method: 'DELETE' })).status, 204);
    const again = await download(fileUrl(url, image.id));
    assert.ok(again.ok && again.response.body.equals(data));
    assert.equal(await node.cache.isCached(image.id), true);
    await assertConsistent(node, disk, [image.id]);
  });

  it('when the disk is already full, a miss is served whole from the upstream and a hit from the cache; nothing is left behind', async (t) => {
    const { fake, url, node, disk } = await setUp(t);
    const cachedData = imageBytes(2 * MiB, 3);
    const cached = await fake.addImage({ data: cachedData });
    assert.equal((await download(fileUrl(url, cached.id))).ok, true);
    // Something else takes the rest of the disk (in a directory of its own: not a cache file).
    fs.mkdirSync(path.join(disk, 'other-tenant'));
    const filler = fs.openSync(path.join(disk, 'other-tenant', 'blob'), 'w');
    const block = Buffer.alloc(MiB);
    try {
      for (;;) fs.writeSync(filler, block);
    } catch (err) {
      assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
    } finally {
      fs.closeSync(filler);
    }

    const data = imageBytes(6 * MiB, 4);
    const image = await fake.addImage({ data });
    const miss = await download(fileUrl(url, image.id));
    assert.ok(miss.ok, `the miss failed: ${miss.ok ? '' : miss.error.message}`);
    assert.equal(miss.response.status, 200);
    assert.ok(miss.response.body.equals(data));
    const range = await fetchAll(fileUrl(url, image.id), { headers: { range: 'bytes=100-199' } });
    assert.equal(range.status, 206);
    assert.ok(range.body.equals(data.subarray(100, 200)));
    const hit = await fetchAll(fileUrl(url, cached.id));
    assert.equal(hit.status, 200);
    assert.ok(hit.body.equals(cachedData));
    assert.equal(await node.cache.isCached(image.id), false);
    assert.deepEqual(fs.readdirSync(path.join(disk, 'incomplete')), []);
    assert.deepEqual(fs.readdirSync(path.join(disk, 'invalid')), []);

    fs.rmSync(path.join(disk, 'other-tenant'), { recursive: true });
    const again = await download(fileUrl(url, image.id));
    assert.ok(again.ok && again.response.body.equals(data));
    assert.equal(await node.cache.isCached(image.id), true);
    await assertConsistent(node, disk, [cached.id, image.id]);
  });

  it('with workers = 2, the followers in the worker that does not own the fill also get the whole image right', async (t) => {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const disk = mountSmallDisk(t, DISK);
    const dir = makeTempDir('image-cache-disk-full-');
    t.after(() => removeDir(dir));
    const config = path.join(dir, 'glance-api.conf');
    fs.writeFileSync(config, `[DEFAULT]\nbind_port = 0\nworkers = 2\nimage_cache_dir = ${disk}\nimage_cache_max_size = ${1024 * MiB}\nupstream_url = ${fake.url}\n`);
    const { url } = await startServe(t, ['--config-file', config], dir);
    const first = await fake.addImage({ data: imageBytes(10 * MiB, 5) });
    assert.equal((await download(fileUrl(url, first.id))).ok, true);

    const data = imageBytes(20 * MiB, 6);
    const image = await fake.addImage({ data });
    const held = fake.hold(image.id);
    // Each on a connection of its own: the workers take turns accepting them.
    const downloads = Array.from({ length: 6 }, () => download(fileUrl(url, image.id)));
    await held.waiting;
    held.release();
    for (const result of await Promise.all(downloads)) {
      assert.ok(result.ok, `a download failed: ${result.ok ? '' : result.error.message}`);
      assert.ok(result.response.body.equals(data), 'the exact bytes');
    }
    assert.deepEqual(fs.readdirSync(path.join(disk, 'incomplete')), []);
    assert.deepEqual(fs.readdirSync(path.join(disk, 'invalid')), []);
    assert.equal(fs.existsSync(path.join(disk, image.id)), false);
  });
});
