/**
 * getCachingStream, cacheImageStream and cacheImageFile: the ImageCache's own
 * behaviour on top of any driver's write path, so it runs once, on the
 * embedded default (sqlite). The driver contract itself is
 * test/drivers/conformance.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { describe, it } from 'node:test';
import {
  FIXTURE_DATA,
  cacheFixture as setup,
  cachedIds,
  collect,
  discardWriter,
  hexDigest,
  patternedBytes,
  put,
  readAll as read,
  waitForClose,
  waitUntil,
} from '../helpers.js';

const KIB = 1024;
const CHECKSUM_MISMATCH = { code: 'ERR_CHECKSUM_MISMATCH' };

describe('caching streams', () => {
  describe('getCachingStream', () => {
    it('passes a multi-megabyte image through intact, chunk boundaries and backpressure included, and caches it', async (t) => {
      const { cache } = await setup(t, { imageCacheMaxSize: 64 * 1024 * 1024 });
      const data = patternedBytes(3 * 1024 * 1024 + 17);
      async function* source(): AsyncGenerator<Buffer> {
        for (let offset = 0; offset < data.length; offset += 100_003) yield data.subarray(offset, offset + 100_003);
      }
      const stream = cache.getCachingStream('big', { osHashAlgo: 'sha256', osHashValue: hexDigest('sha256', data) }, source());
      assert.deepEqual(await collect(stream), data);
      assert.equal(await cache.getImageSize('big'), data.length);
      assert.deepEqual(await read(cache, 'big'), data);
    });

    it('for an image that is already cached, the stream passes the source through and the cached copy stays as it was', async (t) => {
      const { cache, at } = await setup(t);
      await put(cache, '1');
      const stream = cache.getCachingStream('1', null, Readable.from([Buffer.from('different bytes')]));
      assert.deepEqual(await collect(stream), Buffer.from('different bytes'));
      await waitForClose(stream);
      assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      assert.equal(fs.existsSync(at('invalid', '1')), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
    });

    it('two concurrent caching streams of one image both get every byte, and the image is cached once', async (t) => {
      const { cache, at } = await setup(t);
      const data = patternedBytes(200 * KIB);
      async function* source(): AsyncGenerator<Buffer> {
        for (let offset = 0; offset < data.length; offset += 16 * KIB) {
          yield data.subarray(offset, offset + 16 * KIB);
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      const a = cache.getCachingStream('1', hexDigest('md5', data), source());
      const b = cache.getCachingStream('1', hexDigest('md5', data), source());
      const [fromA, fromB] = await Promise.all([collect(a), collect(b)]);
      assert.deepEqual(fromA, data);
      assert.deepEqual(fromB, data);
      await Promise.all([waitForClose(a), waitForClose(b)]);
      assert.deepEqual(await read(cache, '1'), data);
      assert.deepEqual(await cachedIds(cache), ['1']);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.equal(fs.existsSync(at('invalid', '1')), false);
    });

    it('an expected checksum that is not hex at all (\'foobar\') never caches the image', async (t) => {
      const { cache, at } = await setup(t);
      let failed = false;
      try {
        await collect(cache.getCachingStream('1', 'foobar', Readable.from([FIXTURE_DATA])));
      } catch {
        failed = true;
      }
      assert.equal(failed, true, 'a checksum that can never match was accepted');
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.deepEqual(await cachedIds(cache), []);
    });

    it('passes every byte through and, after the end, the image is cached', async (t) => {
      const { cache, at } = await setup(t);
      const stream = cache.getCachingStream('1', null, Readable.from([Buffer.from('a'), ...'bcdef']));
      assert.deepEqual(await collect(stream), Buffer.from('abcdef'));
      assert.equal(await cache.isCached('1'), true);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.equal(fs.existsSync(at('invalid', '1')), false);
      assert.deepEqual(await read(cache, '1'), Buffer.from('abcdef'));
      assert.equal(await cache.getImageSize('1'), 6);
    });

    it('a source (backend) failure errors the stream and caches nothing', async (t) => {
      const { cache, at } = await setup(t);
      const backendError = new Error('backend failed');
      async function* source(): AsyncGenerator<Buffer> {
        yield Buffer.from('abc');
        yield Buffer.from('def');
        throw backendError;
      }
      const stream = cache.getCachingStream('1', null, source());
      await assert.rejects(collect(stream), (err) => err === backendError);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.equal(fs.existsSync(at('invalid', '1')), true);
      assert.deepEqual(await cachedIds(cache), []);
    });

    it('a reader that stops early (destroys the stream) leaves the image uncached, its partial file in invalid/', async (t) => {
      const { cache, at } = await setup(t);
      async function* source(): AsyncGenerator<Buffer> {
        for (let i = 0; i < 1000; i++) yield Buffer.alloc(16 * KIB, i % 256);
      }
      const stream = cache.getCachingStream('1', null, source());
      const first = await new Promise<Buffer>((resolve) => {
        stream.once('data', (chunk: Buffer) => {
          stream.pause();
          stream.destroy();
          resolve(chunk);
        });
      });
      assert.ok(first.length > 0);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.equal(fs.existsSync(at('invalid', '1')), true);
      assert.deepEqual(await cachedIds(cache), []);
    });

    it('a matching md5 checksum (bare string) caches the image', async (t) => {
      const { cache } = await setup(t);
      const stream = cache.getCachingStream('1', hexDigest('md5', FIXTURE_DATA), Readable.from([FIXTURE_DATA]));
      assert.deepEqual(await collect(stream), FIXTURE_DATA);
      assert.equal(await cache.isCached('1'), true);
    });

    it('a wrong md5 checksum errors the stream with ChecksumMismatch and caches nothing', async (t) => {
      const { cache, at } = await setup(t);
      const stream = cache.getCachingStream('1', 'deadbeef', Readable.from([FIXTURE_DATA]));
      await assert.rejects(collect(stream), CHECKSUM_MISMATCH);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.equal(fs.existsSync(at('invalid', '1')), true);
      assert.deepEqual(await cachedIds(cache), []);
    });

    it('the strongest hash given wins: a good sha512 with a wrong md5 caches the image', async (t) => {
      const { cache } = await setup(t);
      const expected = { osHashAlgo: 'sha512', osHashValue: hexDigest('sha512', FIXTURE_DATA), checksum: 'deadbeef' };
      const stream = cache.getCachingStream('1', expected, Readable.from([FIXTURE_DATA]));
      assert.deepEqual(await collect(stream), FIXTURE_DATA);
      assert.equal(await cache.isCached('1'), true);
    });

    it('a wrong sha256 os_hash_value errors the stream with ChecksumMismatch, even with a good md5', async (t) => {
      const { cache } = await setup(t);
      const expected = { osHashAlgo: 'sha256', osHashValue: hexDigest('sha256', Buffer.from('other data')), checksum: hexDigest('md5', FIXTURE_DATA) };
      const stream = cache.getCachingStream('1', expected, Readable.from([FIXTURE_DATA]));
      await assert.rejects(collect(stream), CHECKSUM_MISMATCH);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
    });

    it('a failure of the cache write alone (its incomplete file removed behind the cache\'s back) does not fail the stream', async (t) => {
      const { cache, at } = await setup(t);
      const data = patternedBytes(64 * KIB);
      async function* source(): AsyncGenerator<Buffer> {
        yield data.subarray(0, 16 * KIB);
        // Once the cache writer is under way, an operator removes its file.
        await waitUntil(() => fs.existsSync(at('incomplete', '1')));
        fs.unlinkSync(at('incomplete', '1'));
        yield data.subarray(16 * KIB, 40 * KIB);
        yield data.subarray(40 * KIB);
      }
      const stream = cache.getCachingStream('1', hexDigest('md5', data), source());
      assert.deepEqual(await collect(stream), data);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.deepEqual(await cachedIds(cache), []);
      assert.equal(await cache.getCacheSize(), 0);
      // Nothing is left holding the image: it can be cached now.
      assert.equal(await cache.isCacheable('1'), true);
      assert.deepEqual(await collect(cache.getCachingStream('1', null, Readable.from([data]))), data);
      assert.deepEqual(await read(cache, '1'), data);
    });

    it('while another writer holds the image, the stream still yields every byte and leaves that writer alone', async (t) => {
      const { cache, at } = await setup(t);
      const other = await cache.openForWrite('1');
      t.after(() => discardWriter(other));
      const stream = cache.getCachingStream('1', null, Readable.from([FIXTURE_DATA]));
      assert.deepEqual(await collect(stream), FIXTURE_DATA);
      await waitForClose(stream);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), true);
      assert.equal(fs.existsSync(at('invalid', '1')), false);
      other.end(Buffer.from('from the other writer'));
      await finished(other);
      assert.deepEqual(await read(cache, '1'), Buffer.from('from the other writer'));
    });
  });

  describe('cacheImageStream and cacheImageFile', () => {
    it('cacheImageStream with a matching checksum caches the image and returns true', async (t) => {
      const { cache } = await setup(t);
      assert.equal(await cache.cacheImageStream('1', Readable.from([FIXTURE_DATA]), hexDigest('md5', FIXTURE_DATA)), true);
      assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
    });

    it('cacheImageStream with a wrong checksum rejects with ChecksumMismatch and caches nothing', async (t) => {
      const { cache, at } = await setup(t);
      await assert.rejects(cache.cacheImageStream('1', Readable.from([FIXTURE_DATA]), 'deadbeef'), CHECKSUM_MISMATCH);
      assert.equal(await cache.isCached('1'), false);
      assert.equal(await cache.isBeingCached('1'), false);
      assert.equal(fs.existsSync(at('incomplete', '1')), false);
      assert.deepEqual(await cachedIds(cache), []);
    });

    it('with the image\'s size, a source that sends fewer or more bytes fails with WrongImageLength and caches nothing, whichever way the image is cached', async (t) => {
      const { cache, at } = await setup(t);
      const data = patternedBytes(64 * KIB);
      const md5 = hexDigest('md5', data);
      const WRONG_LENGTH = { code: 'ERR_WRONG_IMAGE_LENGTH' };
      await assert.rejects(cache.cacheImageStream('1', Readable.from([data]), { checksum: md5, size: data.length + 1 }), WRONG_LENGTH);
      await assert.rejects(cache.cacheImageFile('2', Readable.from([data, Buffer.from('x')]), { checksum: md5, size: data.length }), WRONG_LENGTH);
      const stream = cache.getCachingStream('3', { checksum: md5, size: data.length - 1 }, Readable.from([data]));
      await assert.rejects(collect(stream), WRONG_LENGTH);
      await waitForClose(stream);
      assert.deepEqual(await cachedIds(cache), []);
      for (const id of ['1', '2', '3']) assert.equal(fs.existsSync(at('incomplete', id)), false);
      assert.equal(await cache.cacheImageStream('4', Readable.from([data]), { checksum: md5, size: data.length }), true);
      assert.deepEqual(await read(cache, '4'), data);
    });

    it('a large image is verified as the node verifies it (on a hash thread, from its cache file, when one is free): a good sha512 caches it, a wrong one caches nothing', async (t) => {
      const { cache, at } = await setup(t, { imageCacheMaxSize: 64 * 1024 * 1024 });
      const data = patternedBytes(5 * 1024 * 1024 + 3);
      const sha512 = hexDigest('sha512', data);
      const chunks = (): Buffer[] => [data.subarray(0, 1_000_003), data.subarray(1_000_003)];
      assert.equal(await cache.cacheImageStream('good', Readable.from(chunks()), { osHashAlgo: 'sha512', osHashValue: sha512, size: data.length }), true);
      assert.deepEqual(await read(cache, 'good'), data);
      await assert.rejects(cache.cacheImageStream('bad', Readable.from(chunks()), { osHashAlgo: 'sha512', osHashValue: hexDigest('sha512', Buffer.from('other')), size: data.length }), CHECKSUM_MISMATCH);
      assert.equal(await cache.isCached('bad'), false);
      assert.equal(fs.existsSync(at('incomplete', 'bad')), false);
      assert.equal(fs.existsSync(at('invalid', 'bad')), true);
    });

    it('cacheImageFile caches a file given by path', async (t) => {
      const { cache, root } = await setup(t);
      const source = path.join(root, 'source-image');
      const data = patternedBytes(3000);
      fs.writeFileSync(source, data);
      assert.equal(await cache.cacheImageFile('1', source), true);
      assert.deepEqual(await read(cache, '1'), data);
      assert.equal(await cache.getImageSize('1'), 3000);
      assert.equal(await cache.cacheImageFile('1', source), false);
    });
  });

});
