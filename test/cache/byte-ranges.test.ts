/**
 * Byte ranges of cached images (openForRead with a range): the same code for
 * every driver (ImageCache.openForRead, through the content store), so it runs once, on sqlite.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FIXTURE_DATA, cacheFixture as setup, collect, patternedBytes, put, readAll as read } from '../helpers.js';

const RANGE_NOT_SATISFIABLE = { code: 'ERR_RANGE_NOT_SATISFIABLE' };
const IMAGE_NOT_CACHED = { code: 'ERR_IMAGE_NOT_CACHED' };

describe('reading', () => {
  describe('byte ranges', () => {
    it('openForRead with a range streams exactly those bytes (inclusive end, clamped to the file)', async (t) => {
      const { cache } = await setup(t);
      const data = patternedBytes(1024);
      await put(cache, '1', data);
      const stream = await cache.openForRead('1', { start: 10, end: 19 });
      assert.equal(stream.fileSize, 1024);
      assert.equal(stream.start, 10);
      assert.equal(stream.end, 19);
      const middle = await collect(stream);
      assert.equal(middle.length, 10);
      assert.deepEqual(middle, data.subarray(10, 20));
      assert.deepEqual(await read(cache, '1', { start: 1000 }), data.subarray(1000));
      assert.equal((await read(cache, '1', { start: 1000 })).length, 24);
      assert.deepEqual(await read(cache, '1', { start: 1000, end: 5000 }), data.subarray(1000));
      assert.deepEqual(await read(cache, '1', { start: 0, end: 0 }), data.subarray(0, 1));
      assert.deepEqual(await read(cache, '1', { start: 1023 }), data.subarray(1023));
    });

    it('a range starting at or beyond the end rejects with RangeNotSatisfiable', async (t) => {
      const { cache } = await setup(t);
      await put(cache, '1');
      await assert.rejects(cache.openForRead('1', { start: 1024 }), RANGE_NOT_SATISFIABLE);
      await assert.rejects(cache.openForRead('1', { start: 5000, end: 6000 }), RANGE_NOT_SATISFIABLE);
      await assert.rejects(cache.openForRead('1', { start: -1 }), RANGE_NOT_SATISFIABLE);
      await assert.rejects(cache.openForRead('1', { start: 20, end: 10 }), RANGE_NOT_SATISFIABLE);
      assert.equal(await cache.getHitCount('1'), 0);
    });

    it('openForRead of an image that is not cached rejects with ImageNotCached', async (t) => {
      const { cache } = await setup(t);
      await assert.rejects(cache.openForRead('1'), IMAGE_NOT_CACHED);
      await assert.rejects(cache.openForRead('1', { start: 0, end: 9 }), IMAGE_NOT_CACHED);
    });
  });

});
