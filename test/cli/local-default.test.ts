/**
 * The commands on the cache directory find serve's cache where serve puts
 * it by default (./var/cache), as a new user expects after `npm start`; and
 * where there is none they do not start one.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageBytes } from '../support/fake-glance.js';
import { fetchAll, startServe } from '../server/helpers.js';
import { ok, runCli, tempDir } from './helpers.js';

describe('the cache directory by default', () => {
  it('serve, then list-cached --local and prune in the same directory, work on serve\'s ./var/cache', async (t) => {
    const cwd = tempDir(t);
    const data = imageBytes(64 * 1024);
    fs.writeFileSync(path.join(cwd, 'disk.img'), data);
    const id = (await ok(['import', 'disk.img'], { cwd })).trim();
    const { url } = await startServe(t, ['--bind-port', '0'], cwd);
    assert.ok((await fetchAll(`${url}/v2/images/${id}/file`)).body.equals(data));

    const listing = JSON.parse(await ok(['list-cached', '--local', '--json'], { cwd })) as { cached_images: Array<{ image_id: string; size: number }> };
    assert.deepEqual(listing.cached_images.map((image) => [image.image_id, image.size]), [[id, data.length]]);
    assert.deepEqual(JSON.parse(await ok(['prune', '--json', '--image-cache-max-size', '0'], { cwd })), { total_files_pruned: 1, total_bytes_pruned: data.length });
    assert.equal(fs.existsSync(path.join(cwd, 'var', 'cache', id)), false, 'pruned from serve\'s directory');
  });

  it('where there is no ./var/cache, asks for image_cache_dir and creates nothing', async (t) => {
    const cwd = tempDir(t);
    for (const args of [['list-cached', '--local'], ['queue-image', 'some-image', '--local'], ['verify']]) {
      const result = await runCli(args, { cwd });
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, /image_cache_dir is required: .*\(serve's default, \.\/var\/cache, is not here\)/);
    }
    assert.deepEqual(fs.readdirSync(cwd), []);
  });
});
