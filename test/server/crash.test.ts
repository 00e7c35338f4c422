/**
 * A serving process killed in the middle of a fill (SIGKILL, as the OOM
 * killer or a crash would): nothing partial is ever served or listed, the
 * restarted node fills the image again, and with workers = 2 the followers in
 * the other worker are cut off (never a short 200) while the primary starts a
 * new worker.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance, type FakeGlance } from '../support/fake-glance.js';
import { download, fetchAll, startServe, until } from './helpers.js';
import { ImageCache, silentLogger } from '../../src/index.js';

/** The processes with an open descriptor for writing on `file` (the fill's writer). */
function writersOf(file: string): number[] {
  const pids: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) !== file) continue;
        const flags = Number.parseInt(/flags:\s*(\d+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!, 8);
        if ((flags & 3) !== 0) pids.push(Number(pid));
      } catch {
        // closed while we looked
      }
    }
  }
  return [...new Set(pids)];
}

/** An 8 MiB image behind an upstream slow enough (16 MiB/s) to kill a fill in its middle, and a node's config for it. */
async function setUp(t: TestContext, workers: number): Promise<{ fake: FakeGlance; data: Buffer; imageId: string; dir: string; cacheDir: string; config: string }> {
  const dir = makeTempDir('image-cache-crash-');
  t.after(() => removeDir(dir));
  const fake = await startFakeGlance({ bytesPerSecond: 16 * 1024 * 1024 });
  t.after(() => fake.close());
  const data = imageBytes(8 * 1024 * 1024);
  const image = await fake.addImage({ data });
  const cacheDir = path.join(dir, 'cache');
  const config = path.join(dir, 'node.conf');
  fs.writeFileSync(config, `[DEFAULT]\nbind_port = 0\nworkers = ${workers}\nimage_cache_dir = ${cacheDir}\nupstream_url = ${fake.url}\n`);
  return { fake, data, imageId: image.id, dir, cacheDir, config };
}

/** Resolves once the fill of the image has written over 1 MiB: under way, far from done. */
function fillUnderWay(cacheDir: string, imageId: string): Promise<void> {
  const incomplete = path.join(cacheDir, 'incomplete', imageId);
  return until(() => (fs.statSync(incomplete, { throwIfNoEntry: false })?.size ?? 0) > 1024 * 1024, 'the fill to be under way');
}

describe('crash safety', () => {
  it('a node killed mid-fill serves and lists nothing partial after a restart, and fills the image again', async (t) => {
    const { fake, data, imageId, dir, cacheDir, config } = await setUp(t, 1);
    const first = await startServe(t, ['--config-file', config], dir);
    const cut = download(`${first.url}/v2/images/${imageId}/file`);
    await fillUnderWay(cacheDir, imageId);
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    assert.equal((await cut).ok, false, 'the client saw the connection cut, not a short 200');
    assert.equal(fs.existsSync(path.join(cacheDir, imageId)), false);

    const second = await startServe(t, ['--config-file', config], dir);
    const listed = JSON.parse((await fetchAll(`${second.url}/v2/cache`)).body.toString());
    assert.deepEqual(listed.cached_images, [], 'nothing partial listed');
    const again = await fetchAll(`${second.url}/v2/images/${imageId}/file`);
    assert.ok(again.body.equals(data));
    assert.equal(fake.fileRequests(imageId), 2);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'incomplete')).filter((name) => !name.startsWith('.')), []);
    assert.ok(fs.readdirSync(path.join(cacheDir, 'invalid')).length <= 1, 'the dead fill\'s leftover went to invalid/');
  });

  it('a node killed in the middle of several fills recovers its directory before serving: dead fills to invalid/, a record without its file dropped, a file without a record adopted', async (t) => {
    const { fake, data, imageId, dir, cacheDir, config } = await setUp(t, 1);
    const others = await Promise.all([2, 3].map((seed) => fake.addImage({ data: imageBytes(8 * 1024 * 1024, seed) })));
    const filling = [{ id: imageId, data }, ...others.map((image, i) => ({ id: image.id, data: imageBytes(8 * 1024 * 1024, i + 2) }))];
    const kept = await fake.addImage({ data: imageBytes(4096, 9) });
    const first = await startServe(t, ['--config-file', config], dir);
    assert.equal((await fetchAll(`${first.url}/v2/images/${kept.id}/file`)).status, 200);
    const cut = filling.map((image) => download(`${first.url}/v2/images/${image.id}/file`));
    for (const image of filling) await fillUnderWay(cacheDir, image.id);
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    assert.ok((await Promise.all(cut)).every((result) => !result.ok), 'every client saw its connection cut');
    // While the node is down: a cached file goes behind its back (its record stays), and a whole file appears without a record.
    fs.unlinkSync(path.join(cacheDir, kept.id));
    const adopted = '0ad0b7ed-0000-4000-8000-000000000001';
    fs.writeFileSync(path.join(cacheDir, adopted), imageBytes(5000, 7));

    const second = await startServe(t, ['--config-file', config], dir);
    // Before any request for an image: the start-up recovery has run.
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'incomplete')).filter((name) => !name.startsWith('.')), []);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'invalid')).sort(), filling.map((image) => image.id).sort(), 'each dead fill\'s file went to invalid/');
    const listed = JSON.parse((await fetchAll(`${second.url}/v2/cache`)).body.toString());
    assert.deepEqual(listed.cached_images.map((image: { image_id: string }) => image.image_id), [adopted], 'nothing partial listed, the lost file not listed');
    const observer = await ImageCache.create({ imageCacheDir: cacheDir, logger: silentLogger });
    try {
      assert.deepEqual(await observer.verify(), { recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 }, 'the records were repaired at start');
    } finally {
      await observer.close();
    }
    for (const image of filling) {
      const again = await fetchAll(`${second.url}/v2/images/${image.id}/file`);
      assert.ok(again.body.equals(image.data), 'fills again, whole');
    }
  });

  it('with workers = 2, killing the worker that owns a fill cuts off every follower, and the next request fills again', async (t) => {
    const { data, imageId, dir, cacheDir, config } = await setUp(t, 2);
    const { url } = await startServe(t, ['--config-file', config], dir);

    const downloads = Array.from({ length: 6 }, () => download(`${url}/v2/images/${imageId}/file`));
    await fillUnderWay(cacheDir, imageId);
    const [owner] = writersOf(fs.realpathSync(path.join(cacheDir, 'incomplete', imageId)));
    assert.ok(owner !== undefined, 'a worker writes the fill');
    process.kill(owner, 'SIGKILL');
    // The fill died: every follower saw its connection cut (fetchAll rejects a body shorter than its length).
    assert.ok((await Promise.all(downloads)).every((result) => !result.ok), 'no follower got a body from a dead fill');
    const again = await fetchAll(`${url}/v2/images/${imageId}/file`);
    assert.equal(again.status, 200);
    assert.ok(again.body.equals(data));
  });
});
