/**
 * The node counts prune's evictions (issue 14, item 3):
 * image_cache_evictions_total{reason="prune"} is the number of images the
 * prunes after its commits removed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { imageBytes } from '../support/fake-glance.js';
import { download, metric, startFakeGlanceAndNode, until } from './helpers.js';

describe('prune evictions in the metrics', () => {
  it('counts every image a prune after a commit removed as image_cache_evictions_total{reason="prune"}', async (t) => {
    const size = 64 * 1024;
    const images = 6;
    const { fake, url, node } = await startFakeGlanceAndNode(t, { cache: { imageCacheMaxSize: Math.floor(2.5 * size) } });
    for (let i = 0; i < images; i++) {
      const image = await fake.addImage({ data: imageBytes(size, i + 1) });
      const result = await download(`${url}/v2/images/${image.id}/file`);
      assert.ok(result.ok, 'no client error');
      await until(async () => (await node.cache.getCacheSize()) <= 2.5 * size, `the cache back under its limit after image ${i}`);
    }
    await node.cache.maintenance.settled();
    const left = (await node.cache.getCachedImages()).length;
    assert.equal(left, 2);
    assert.equal(await metric(url, 'image_cache_evictions_total{reason="prune"}'), images - left);
  });
});
