/**
 * The driver conformance suite: one set of tests, written once, run against
 * every driver (SPEC §2). It covers every behaviour of Glance's
 * ImageCacheTestCase (glance/tests/unit/test_image_cache.py: 1024-byte fixture,
 * max size 5 KiB) and the contract we add on top of it.
 *
 * A driver's test file calls runConformanceSuite() with its name, the options
 * it needs (e.g. a database URL) and what it is expected to support.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { describe, it, type TestContext } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import {
  ImageCache,
  silentLogger,
  type CacheWriter,
  type ByteRange,
  type DriverName,
  type ImageCacheOptions,
} from '../../src/index.js';
import {
  FIXTURE_DATA,
  ageFile,
  collect,
  hexDigest,
  listTree,
  makeTempDir,
  patternedBytes,
  removeDir,
  waitForClose,
  waitUntil,
} from '../helpers.js';

/** What a driver is expected to offer beyond the common contract. */
export interface DriverCapabilities {
  /**
   * getCachedNodes() works (centralized_db) and lists this node's
   * worker_self_reference_url for an image it holds; otherwise it rejects
   * with NotSupported.
   */
  cachedNodes: boolean;
}

export type MakeOptions = (dir: string) => Partial<ImageCacheOptions> | Promise<Partial<ImageCacheOptions>>;

const KIB = 1024;
const DAY = 86_400;

const code = (c: string) => ({ code: c });
const INVALID_IMAGE_ID = code('ERR_INVALID_IMAGE_ID');
const IMAGE_BEING_CACHED = code('ERR_IMAGE_BEING_CACHED');
const IMAGE_NOT_CACHED = code('ERR_IMAGE_NOT_CACHED');
const RANGE_NOT_SATISFIABLE = code('ERR_RANGE_NOT_SATISFIABLE');
const CHECKSUM_MISMATCH = code('ERR_CHECKSUM_MISMATCH');
const NOT_SUPPORTED = code('ERR_NOT_SUPPORTED');

interface Fixture {
  /** The test's own temporary directory; the cache directory is inside it. */
  root: string;
  /** image_cache_dir */
  dir: string;
  cache: ImageCache;
  /** The options the cache was created with. */
  options: ImageCacheOptions;
  /** Another ImageCache on the same directory and options (closed after the test). */
  open(overrides?: Partial<ImageCacheOptions>): Promise<ImageCache>;
  /** Path of a file in the cache directory, e.g. at('incomplete', '1'). */
  at(...parts: string[]): string;
}

/** Caches `data` under `imageId` (through cacheImageFile, as Glance's tests do) and checks it was cached. */
async function put(cache: ImageCache, imageId: string, data: Buffer = FIXTURE_DATA): Promise<void> {
  assert.equal(await cache.cacheImageFile(imageId, Readable.from([data])), true, `caching image ${imageId}`);
}

/** Reads a cached image to the end and waits for the stream to close (hits are recorded on close). */
async function read(cache: ImageCache, imageId: string, range?: ByteRange): Promise<Buffer> {
  const stream = await cache.openForRead(imageId, range);
  const data = await collect(stream);
  await waitForClose(stream);
  return data;
}

/** Writes one chunk and waits until it has reached the writer's file. */
function writeChunk(writer: CacheWriter, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => writer.write(chunk, (err) => (err ? reject(err) : resolve())));
}

/** Destroys an open writer (if a test left one open) and waits for it to let go of its file. */
async function discardWriter(writer: CacheWriter | undefined): Promise<void> {
  if (writer === undefined || writer.closed) return;
  writer.on('error', () => {});
  writer.destroy();
  await waitForClose(writer);
}

/** The V8 garbage collector as a function (what --expose-gc gives), without a command-line flag. */
function garbageCollector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

async function cachedIds(cache: ImageCache): Promise<string[]> {
  return (await cache.getCachedImages()).map((image) => image.imageId);
}

export function runConformanceSuite(driverName: DriverName, makeOptions: MakeOptions, capabilities: DriverCapabilities): void {
  /** A fresh temporary directory and an ImageCache on it, closed and removed after the test. */
  async function setup(t: TestContext, overrides: Partial<ImageCacheOptions> = {}): Promise<Fixture> {
    const root = makeTempDir(`image-cache-${driverName}-`);
    const dir = path.join(root, 'cache');
    const opened: ImageCache[] = [];
    t.after(async () => {
      for (const cache of opened) await cache.close();
      removeDir(root);
    });
    const options: ImageCacheOptions = {
      imageCacheDir: dir,
      imageCacheDriver: driverName,
      imageCacheMaxSize: 5 * KIB,
      logger: silentLogger,
      ...(await makeOptions(dir)),
      ...overrides,
    };
    const open = async (more: Partial<ImageCacheOptions> = {}): Promise<ImageCache> => {
      const cache = await ImageCache.create({ ...options, ...more });
      opened.push(cache);
      // ImageCache.create falls back to sqlite when a driver cannot be configured:
      // make sure the driver under test is the one being tested.
      assert.equal(cache.driver.name, driverName, `ImageCache.create fell back from ${driverName} to ${cache.driver.name}`);
      return cache;
    };
    const cache = await open();
    return { root, dir, cache, options, open, at: (...parts) => path.join(dir, ...parts) };
  }

  describe(`driver conformance: ${driverName}`, () => {
    describe('caching, reading and deleting (Glance ImageCacheTestCase)', () => {
      it('isCached is false before and true after cacheImageFile returns true', async (t) => {
        const { cache } = await setup(t);
        assert.equal(await cache.isCached('1'), false);
        assert.equal(await cache.cacheImageFile('1', Readable.from([FIXTURE_DATA])), true);
        assert.equal(await cache.isCached('1'), true);
      });

      it('cacheImageFile returns false for an image that is already cached and leaves it unchanged', async (t) => {
        const { cache } = await setup(t);
        await put(cache, '1');
        assert.equal(await cache.cacheImageFile('1', Readable.from([Buffer.from('other')])), false);
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('openForRead streams back exactly the bytes that were cached', async (t) => {
        const { cache } = await setup(t);
        await put(cache, '1');
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('getImageSize is the size of the cached file and rejects with ImageNotCached for an uncached image', async (t) => {
        const { cache } = await setup(t);
        await put(cache, '1');
        assert.equal(await cache.getImageSize('1'), 1024);
        await assert.rejects(cache.getImageSize('2'), IMAGE_NOT_CACHED);
      });

      it('deleteCachedImage removes the image; deleting an absent image is not an error', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1');
        assert.equal(await cache.isCached('1'), true);
        await cache.deleteCachedImage('1');
        assert.equal(await cache.isCached('1'), false);
        assert.equal(fs.existsSync(at('1')), false);
        assert.deepEqual(await cachedIds(cache), []);
        await cache.deleteCachedImage('1');
        await cache.deleteCachedImage('never-cached');
      });

      it('deleteAllCachedImages removes every image and returns how many it removed', async (t) => {
        const { cache } = await setup(t);
        for (const id of ['1', '2']) assert.equal(await cache.isCached(id), false);
        for (const id of ['1', '2']) await put(cache, id);
        for (const id of ['1', '2']) assert.equal(await cache.isCached(id), true);
        assert.equal(await cache.deleteAllCachedImages(), 2);
        for (const id of ['1', '2']) assert.equal(await cache.isCached(id), false);
        assert.deepEqual(await cachedIds(cache), []);
        assert.equal(await cache.getCacheSize(), 0);
        assert.equal(await cache.deleteAllCachedImages(), 0);
      });

      it('isCacheable is true only when the image is neither cached nor being cached', async (t) => {
        const { cache, at } = await setup(t);
        assert.equal(await cache.isCacheable('1'), true);
        await put(cache, '1');
        assert.equal(await cache.isCacheable('1'), false);
        fs.writeFileSync(at('incomplete', '2'), 'partial');
        assert.equal(await cache.isBeingCached('2'), true);
        assert.equal(await cache.isCacheable('2'), false);
      });

      it('two ImageCache instances on one directory see each other\'s images', async (t) => {
        const fx = await setup(t);
        const other = await fx.open();
        await put(fx.cache, '1');
        await put(other, '2', Buffer.alloc(10));
        for (const cache of [fx.cache, other]) {
          assert.equal(await cache.isCached('1'), true);
          assert.equal(await cache.isCached('2'), true);
          assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.size]), [['1', 1024], ['2', 10]]);
          assert.equal(await cache.getCacheSize(), 1034);
        }
        assert.deepEqual(await read(other, '1'), FIXTURE_DATA);
        await other.deleteCachedImage('1');
        assert.equal(await fx.cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(fx.cache), ['2']);
      });

      it('cached images and their hits survive closing and reopening the cache', async (t) => {
        const fx = await setup(t);
        await put(fx.cache, '1');
        await read(fx.cache, '1');
        await read(fx.cache, '1');
        const before = await fx.cache.getCachedImages();
        await fx.cache.close();
        const reopened = await fx.open();
        assert.equal(await reopened.isCached('1'), true);
        assert.equal(await reopened.getHitCount('1'), 2);
        assert.deepEqual(await reopened.getCachedImages(), before);
        assert.deepEqual(await read(reopened, '1'), FIXTURE_DATA);
      });
    });

    describe('clean', () => {
      it('clean() removes every file in invalid/ and counts it', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('invalid', '1'), FIXTURE_DATA);
        assert.deepEqual(await cache.clean(), { invalid: 1, stalled: 0 });
        assert.equal(fs.existsSync(at('invalid', '1')), false);
        assert.deepEqual(await cache.clean(), { invalid: 0, stalled: 0 });
      });

      it('clean(0) removes every file in incomplete/', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('incomplete', '1'), FIXTURE_DATA);
        assert.equal(fs.existsSync(at('incomplete', '1')), true);
        assert.deepEqual(await cache.clean(0), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
      });

      it('clean() with the default stall time (86400 s) removes only incomplete files older than a day', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('incomplete', 'old'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'new'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'hours-old'), FIXTURE_DATA);
        ageFile(at('incomplete', 'old'), 2 * DAY);
        ageFile(at('incomplete', 'hours-old'), 2 * 3600);
        assert.deepEqual(await cache.clean(), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
        assert.equal(fs.existsSync(at('incomplete', 'hours-old')), true);
        // An explicit stall time overrides the configured one.
        assert.deepEqual(await cache.clean(3600), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'hours-old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
      });

      it('clean() with image_cache_stall_time 3600 removes only incomplete files older than an hour', async (t) => {
        const { cache, at } = await setup(t, { imageCacheStallTime: 3600 });
        fs.writeFileSync(at('incomplete', 'old'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'new'), FIXTURE_DATA);
        ageFile(at('incomplete', 'old'), DAY);
        fs.writeFileSync(at('invalid', 'broken'), 'x');
        assert.deepEqual(await cache.clean(), { invalid: 1, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
        assert.equal(fs.existsSync(at('invalid', 'broken')), false);
      });
    });

    describe('prune', () => {
      it('prune evicts the least recently accessed images until the cache is at or below image_cache_max_size', async (t) => {
        const { cache } = await setup(t);
        assert.equal(await cache.getCacheSize(), 0);
        const ids = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];
        for (const id of ids) await put(cache, id);
        assert.equal(await cache.getCacheSize(), 10 * KIB);
        // Hit every image, in order, so that '0' is the least recently accessed.
        for (const id of ids) assert.deepEqual(await read(cache, id), FIXTURE_DATA);
        // Cached after all those reads and never read: the most recently accessed of all.
        await put(cache, '99');
        assert.equal(await cache.getCacheSize(), 11 * KIB);

        assert.deepEqual(await cache.prune(), { totalFilesPruned: 6, totalBytesPruned: 6 * KIB });

        assert.equal(await cache.getCacheSize(), 5 * KIB);
        for (const id of ['0', '1', '2', '3', '4', '5']) assert.equal(await cache.isCached(id), false, `image ${id} is still cached`);
        for (const id of ['6', '7', '8', '9', '99']) assert.equal(await cache.isCached(id), true, `image ${id} was pruned`);
        assert.deepEqual(await cachedIds(cache), ['6', '7', '8', '9', '99']);
      });

      it('prune follows the order of reads, not the order of caching', async (t) => {
        const { cache } = await setup(t);
        const ids = ['a', 'b', 'c', 'd', 'e', 'f'];
        for (const id of ids) await put(cache, id);
        // Read in reverse, so that 'f', cached last, is now the least recently accessed.
        for (const id of [...ids].reverse()) await read(cache, id);
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: 'f', size: 1024 });
        assert.deepEqual(await cache.prune(), { totalFilesPruned: 1, totalBytesPruned: 1024 });
        assert.deepEqual(await cachedIds(cache), ['a', 'b', 'c', 'd', 'e']);
      });

      it('prune with image_cache_max_size 0 empties the cache', async (t) => {
        const { cache } = await setup(t, { imageCacheMaxSize: 0 });
        await put(cache, '1');
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
        assert.deepEqual(await cache.prune(), { totalFilesPruned: 1, totalBytesPruned: 1024 });
        assert.equal(await cache.getCacheSize(), 0);
        assert.equal(await cache.isCached('1'), false);
      });

      it('prune removes nothing when the cache already fits', async (t) => {
        const { cache } = await setup(t);
        for (const id of ['a', 'b', 'c', 'd', 'e']) await put(cache, id);
        assert.deepEqual(await cache.prune(), { totalFilesPruned: 0, totalBytesPruned: 0 });
        assert.deepEqual(await cachedIds(cache), ['a', 'b', 'c', 'd', 'e']);
      });
    });

    describe('queue', () => {
      it('follows Glance\'s queueing rules (queued, cached, being cached) and lists the queue in order', async (t) => {
        const { cache, at } = await setup(t);
        assert.equal(await cache.isCached('1'), false);
        assert.equal(await cache.isQueued('1'), false);

        assert.equal(await cache.queueImage('1'), true);
        assert.equal(await cache.isQueued('1'), true);
        assert.equal(await cache.isCached('1'), false);
        // Not again while it is queued.
        assert.equal(await cache.queueImage('1'), false);
        assert.equal(await cache.isCached('1'), false);

        // Caching the image pops its queue marker; a cached image cannot be queued.
        await put(cache, '1');
        assert.equal(await cache.isQueued('1'), false);
        assert.equal(await cache.isCached('1'), true);
        assert.equal(await cache.queueImage('1'), false);
        assert.equal(await cache.isQueued('1'), false);

        // Nor can an image that is being cached.
        await cache.deleteCachedImage('1');
        fs.writeFileSync(at('incomplete', '1'), 'partial');
        assert.equal(await cache.isBeingCached('1'), true);
        assert.equal(await cache.queueImage('1'), false);
        assert.equal(await cache.isQueued('1'), false);
        await cache.clean(0);
        assert.equal(await cache.isBeingCached('1'), false);

        for (const id of ['0', '1', '2']) assert.equal(await cache.queueImage(id), true, `queueing ${id}`);
        assert.deepEqual(await cache.getQueuedImages(), ['0', '1', '2']);
      });

      it('getQueuedImages lists the oldest marker first, then by image id', async (t) => {
        const { cache, at } = await setup(t);
        for (const id of ['a', 'b', 'c']) assert.equal(await cache.queueImage(id), true);
        ageFile(at('queue', 'c'), 30);
        ageFile(at('queue', 'a'), 20);
        ageFile(at('queue', 'b'), 20);
        assert.deepEqual(await cache.getQueuedImages(), ['c', 'a', 'b']);
      });

      it('deleteQueuedImage removes one marker and deleteAllQueuedImages the rest, returning how many', async (t) => {
        const { cache } = await setup(t);
        for (const id of ['a', 'b', 'c']) await cache.queueImage(id);
        await cache.deleteQueuedImage('b');
        assert.equal(await cache.isQueued('b'), false);
        await cache.deleteQueuedImage('b'); // absent: not an error
        assert.deepEqual(await cache.getQueuedImages(), ['a', 'c']);
        assert.equal(await cache.deleteAllQueuedImages(), 2);
        assert.deepEqual(await cache.getQueuedImages(), []);
        assert.equal(await cache.isQueued('a'), false);
        assert.equal(await cache.deleteAllQueuedImages(), 0);
      });
    });

    describe('openForWrite', () => {
      it('a writer ended without data commits a zero-byte image that reads back empty', async (t) => {
        const { cache } = await setup(t);
        const w = await cache.openForWrite('empty');
        w.end();
        await finished(w);
        assert.equal(await cache.isCached('empty'), true);
        assert.equal(await cache.getImageSize('empty'), 0);
        assert.deepEqual(await read(cache, 'empty'), Buffer.alloc(0));
        assert.equal(await cache.getHitCount('empty'), 1);
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.size]), [['empty', 0]]);
      });

      it('ending the writer commits: cached, recorded with hits 0, nothing left in incomplete/ or invalid/', async (t) => {
        const { cache, at } = await setup(t);
        const w = await cache.openForWrite('1');
        assert.equal(await cache.isBeingCached('1'), true);
        w.end(Buffer.from('a'));
        await finished(w);
        assert.equal(await cache.isCached('1'), true);
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
        assert.equal(fs.existsSync(at('invalid', '1')), false);
        const images = await cache.getCachedImages();
        assert.equal(images.length, 1);
        assert.equal(images[0]!.imageId, '1');
        assert.equal(images[0]!.hits, 0);
        assert.equal(images[0]!.size, 1);
        assert.deepEqual(await read(cache, '1'), Buffer.from('a'));
      });

      it('destroying the writer with an error moves the partial file to invalid/ and records nothing', async (t) => {
        const { cache, at } = await setup(t);
        const w = await cache.openForWrite('1');
        const errors: Error[] = [];
        w.on('error', (err) => errors.push(err));
        await writeChunk(w, Buffer.from('partial data'));
        w.destroy(new Error('boom'));
        await waitForClose(w);
        assert.deepEqual(errors.map((e) => e.message), ['boom']);
        assert.equal(await cache.isCached('1'), false);
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
        assert.equal(fs.existsSync(at('invalid', '1')), true);
        assert.deepEqual(fs.readFileSync(at('invalid', '1')), Buffer.from('partial data'));
        assert.deepEqual(await cachedIds(cache), []);
        assert.equal(await cache.getCacheSize(), 0);
        // The image can be cached afterwards.
        await put(cache, '1');
        assert.equal(await cache.isCached('1'), true);
      });

      it('a second openForWrite while the first writer is open rejects with ImageBeingCached', async (t) => {
        const { cache } = await setup(t);
        const first = await cache.openForWrite('1');
        t.after(() => discardWriter(first));
        await assert.rejects(cache.openForWrite('1'), IMAGE_BEING_CACHED);
        // The first writer is unaffected and still commits.
        first.end(FIXTURE_DATA);
        await finished(first);
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('a writer whose incomplete file was cleaned and re-claimed by another writer fails instead of publishing the other\'s file', async (t) => {
        const { cache, at } = await setup(t);
        const first = await cache.openForWrite('1');
        t.after(() => discardWriter(first));
        await writeChunk(first, Buffer.from('first writer'));
        assert.deepEqual(await cache.clean(0), { invalid: 0, stalled: 1 });
        const second = await cache.openForWrite('1');
        t.after(() => discardWriter(second));
        await writeChunk(second, Buffer.from('second '));
        first.end();
        await assert.rejects(finished(first));
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(cache), []);
        assert.deepEqual(fs.readFileSync(at('incomplete', '1')), Buffer.from('second '));
        second.end(Buffer.from('writer'));
        await finished(second);
        assert.deepEqual(await read(cache, '1'), Buffer.from('second writer'));
        assert.deepEqual(await cachedIds(cache), ['1']);
      });

      it('an incomplete file left by a dead writer (mtime older than the writer lease) does not block the image', async (t) => {
        const { cache, at } = await setup(t, { writerLeaseSeconds: 60 });
        fs.writeFileSync(at('incomplete', '1'), 'stale partial data');
        ageFile(at('incomplete', '1'), 600);
        const w = await cache.openForWrite('1');
        t.after(() => discardWriter(w));
        w.end(Buffer.from('fresh'));
        await finished(w);
        assert.equal(await cache.isCached('1'), true);
        assert.deepEqual(await read(cache, '1'), Buffer.from('fresh'));
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
      });

      it('a writer dropped without end() or destroy() gives its file up to invalid/ once garbage-collected', async (t) => {
        const { cache, at } = await setup(t);
        const gc = garbageCollector();
        await (async () => {
          const abandoned = await cache.openForWrite('1');
          await writeChunk(abandoned, Buffer.from('partial data'));
        })();
        for (let i = 0; i < 100 && fs.existsSync(at('incomplete', '1')); i++) {
          gc();
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        assert.equal(fs.existsSync(at('incomplete', '1')), false, 'the abandoned writer still holds incomplete/1');
        assert.deepEqual(fs.readFileSync(at('invalid', '1')), Buffer.from('partial data'));
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(cache), []);
        await put(cache, '1');
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('a live writer whose source is idle for longer than the writer lease keeps its claim (heartbeat)', async (t) => {
        const { cache, at } = await setup(t, { writerLeaseSeconds: 0.3 });
        const w = await cache.openForWrite('1');
        t.after(() => discardWriter(w));
        await writeChunk(w, Buffer.from('first half, '));
        // The backend stalls for more than two leases; the writer is alive all along.
        await new Promise((resolve) => setTimeout(resolve, 700));
        let intruder: CacheWriter | undefined;
        try {
          intruder = await cache.openForWrite('1');
        } catch (err) {
          assert.equal((err as { code?: unknown }).code, 'ERR_IMAGE_BEING_CACHED');
        }
        t.after(() => discardWriter(intruder));
        assert.ok(intruder === undefined, 'a second writer took over the image of a live writer');
        w.end(Buffer.from('second half'));
        await finished(w);
        assert.deepEqual(await read(cache, '1'), Buffer.from('first half, second half'));
        assert.equal(fs.existsSync(at('invalid', '1')), false);
      });

      it('an incomplete file with a fresh mtime (a live writer, maybe in another process) blocks openForWrite', async (t) => {
        const { cache, at } = await setup(t, { writerLeaseSeconds: 60 });
        fs.writeFileSync(at('incomplete', '1'), 'partial data');
        await assert.rejects(cache.openForWrite('1'), IMAGE_BEING_CACHED);
        assert.deepEqual(fs.readFileSync(at('incomplete', '1')), Buffer.from('partial data'));
        assert.equal(await cache.isCached('1'), false);
      });
    });

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

      it('a failure of the cache write alone (incomplete file removed by a concurrent clean) does not fail the stream', async (t) => {
        const { cache, at } = await setup(t);
        const data = patternedBytes(64 * KIB);
        async function* source(): AsyncGenerator<Buffer> {
          yield data.subarray(0, 16 * KIB);
          // Once the cache writer is under way, another process's clean(0) removes its file.
          await waitUntil(() => fs.existsSync(at('incomplete', '1')));
          assert.deepEqual(await cache.clean(0), { invalid: 0, stalled: 1 });
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

    describe('image IDs', () => {
      it('getImageFilepath gives absolute paths in the layout of SPEC §1, even for a relative image_cache_dir', async (t) => {
        const root = makeTempDir(`image-cache-${driverName}-`);
        const dir = path.join(root, 'cache');
        const relative = path.relative(process.cwd(), dir);
        const fx = await setup(t, { imageCacheDir: relative });
        t.after(() => removeDir(root));
        const base = fs.realpathSync(dir);
        assert.equal(fs.realpathSync(path.dirname(fx.cache.getImageFilepath('1'))), base);
        for (const [status, expected] of [['active', '1'], ['incomplete', 'incomplete/1'], ['invalid', 'invalid/1'], ['queue', 'queue/1']] as const) {
          const p = fx.cache.getImageFilepath('1', status);
          assert.ok(path.isAbsolute(p), `${status} path ${p} is not absolute`);
          assert.equal(path.relative(path.resolve(dir), p), expected);
        }
        assert.equal(fx.cache.getImageFilepath('1'), fx.cache.getImageFilepath('1', 'active'));
      });

      // The last three are the cache's own sub-directories.
      const INVALID_IDS = ['../x', 'a/b', '.', '..', '', 'x'.repeat(300), 'a\0b', '/x', '../../x', 'a b', 'é', 'incomplete', 'invalid', 'queue'];

      it('invalid image IDs are rejected with InvalidImageId by every method, and nothing is created', async (t) => {
        const { cache, root } = await setup(t);
        const source = path.join(root, 'source-image');
        fs.writeFileSync(source, FIXTURE_DATA);
        const before = listTree(root);
        const asyncMethods: Array<[string, (id: string) => Promise<unknown>]> = [
          ['isCached', (id) => cache.isCached(id)],
          ['isCacheable', (id) => cache.isCacheable(id)],
          ['isQueued', (id) => cache.isQueued(id)],
          ['isBeingCached', (id) => cache.isBeingCached(id)],
          ['queueImage', (id) => cache.queueImage(id)],
          ['deleteQueuedImage', (id) => cache.deleteQueuedImage(id)],
          ['openForWrite', (id) => cache.openForWrite(id)],
          ['openForRead', (id) => cache.openForRead(id)],
          ['deleteCachedImage', (id) => cache.deleteCachedImage(id)],
          ['getImageSize', (id) => cache.getImageSize(id)],
          ['getHitCount', (id) => cache.getHitCount(id)],
          ['cacheImageFile', (id) => cache.cacheImageFile(id, source)],
          ['cacheImageStream', (id) => cache.cacheImageStream(id, Readable.from([FIXTURE_DATA]))],
        ];
        for (const id of INVALID_IDS) {
          for (const [name, call] of asyncMethods) {
            await assert.rejects(async () => call(id), INVALID_IMAGE_ID, `${name}(${JSON.stringify(id)})`);
          }
          for (const status of ['active', 'incomplete', 'invalid', 'queue'] as const) {
            assert.throws(() => cache.getImageFilepath(id, status), INVALID_IMAGE_ID, `getImageFilepath(${JSON.stringify(id)}, ${status})`);
          }
          assert.throws(() => cache.getCachingStream(id, null, Readable.from([FIXTURE_DATA])), INVALID_IMAGE_ID, `getCachingStream(${JSON.stringify(id)})`);
        }
        // Give anything started in the background a chance to touch the disk before looking.
        await new Promise((resolve) => setTimeout(resolve, 20));
        assert.deepEqual(listTree(root), before);
        assert.equal(fs.existsSync(path.join(root, 'x')), false);
        assert.deepEqual(await cachedIds(cache), []);
        assert.deepEqual(await cache.getQueuedImages(), []);
      });

      it('IDs made of every allowed character, up to 255 bytes long, work', async (t) => {
        const { cache, at } = await setup(t);
        const ids = ['AZaz09._~-', '6a1e2f3c-0d4b-4c5e-9f60-7a8b9c0d1e2f', 'x'.repeat(255), '...', '-leading-dash'];
        for (const id of ids) {
          await put(cache, id);
          assert.equal(cache.getImageFilepath(id), at(id));
          assert.equal(await cache.isCached(id), true);
          assert.deepEqual(await read(cache, id), FIXTURE_DATA);
        }
        assert.deepEqual(await cachedIds(cache), [...ids].sort());
      });
    });

    describe('metadata', () => {
      it('an active file without a record (e.g. Glance crashed between rename and insert) counts toward the cache size and prune gets the cache under the limit', async (t) => {
        const { cache, at } = await setup(t);
        for (const id of ['1', '2']) await put(cache, id);
        fs.writeFileSync(at('orphan'), Buffer.alloc(4 * KIB, 'o'));
        assert.equal(await cache.isCached('orphan'), true);
        assert.equal(await cache.getCacheSize(), 6 * KIB, 'getCacheSize is the total size of the active files');
        const result = await cache.prune();
        assert.ok(result.totalFilesPruned >= 1, `prune removed ${result.totalFilesPruned} files`);
        assert.ok(await cache.getCacheSize() <= 5 * KIB, `cache is ${await cache.getCacheSize()} bytes after prune, over the 5 KiB limit`);
        const onDisk = ['1', '2', 'orphan'].reduce((sum, name) => sum + (fs.statSync(at(name), { throwIfNoEntry: false })?.size ?? 0), 0);
        assert.ok(onDisk <= 5 * KIB, `${onDisk} bytes of images remain on disk after prune`);
      });

      it('an image pruned while it is being read still streams to the end; re-caching it starts again at 0 hits', async (t) => {
        const { cache } = await setup(t, { imageCacheMaxSize: 0 });
        const data = patternedBytes(256 * KIB);
        await put(cache, '1', data);
        await read(cache, '1');
        const stream = await cache.openForRead('1');
        assert.deepEqual(await cache.prune(), { totalFilesPruned: 1, totalBytesPruned: data.length });
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await collect(stream), data);
        await waitForClose(stream);
        assert.deepEqual(await cachedIds(cache), []);
        assert.equal(await cache.getHitCount('1'), 0);
        await put(cache, '1', data);
        assert.equal(await cache.getHitCount('1'), 0);
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits]), [['1', 0]]);
      });

      it('a record whose file was deleted behind the cache\'s back is not reported, counted or pruned', async (t) => {
        const { cache, at } = await setup(t);
        for (const id of ['1', '2', '3', '4', '5', '6']) await put(cache, id);
        assert.equal(await cache.getCacheSize(), 6 * KIB);
        fs.unlinkSync(at('1'));
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(cache), ['2', '3', '4', '5', '6']);
        assert.equal(await cache.getCacheSize(), 5 * KIB);
        assert.equal(await cache.getHitCount('1'), 0);
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: '2', size: 1024 });
        assert.deepEqual(await cache.prune(), { totalFilesPruned: 0, totalBytesPruned: 0 });
        for (const id of ['2', '3', '4', '5', '6']) assert.equal(await cache.isCached(id), true, `image ${id} was pruned`);
      });

      it('each completed read counts a hit and moves last access forward (epoch seconds)', async (t) => {
        const { cache } = await setup(t);
        const before = Date.now() / 1000;
        await put(cache, '1');
        assert.equal(await cache.getHitCount('1'), 0);
        await read(cache, '1');
        const [afterOne] = await cache.getCachedImages();
        await read(cache, '1');
        assert.equal(await cache.getHitCount('1'), 2);
        const images = await cache.getCachedImages();
        assert.equal(images.length, 1);
        const image = images[0]!;
        assert.equal(image.imageId, '1');
        assert.equal(image.hits, 2);
        assert.equal(image.size, 1024);
        assert.equal(typeof image.lastModified, 'number');
        assert.equal(typeof image.lastAccessed, 'number');
        assert.ok(image.lastAccessed >= image.lastModified, `lastAccessed ${image.lastAccessed} < lastModified ${image.lastModified}`);
        assert.ok(image.lastAccessed >= afterOne!.lastAccessed, 'last access went backwards');
        assert.equal(image.lastModified, afterOne!.lastModified, 'a read changed lastModified');
        const now = Date.now() / 1000;
        for (const time of [image.lastModified, image.lastAccessed]) {
          assert.ok(time >= before - 2 && time <= now + 2, `time ${time} is not epoch seconds near ${now}`);
        }
      });

      it('getHitCount is 0 for an image that is not cached', async (t) => {
        const { cache } = await setup(t);
        assert.equal(await cache.getHitCount('nope'), 0);
      });

      it('getCachedImages is ordered by image id', async (t) => {
        const { cache } = await setup(t);
        for (const id of ['c', 'a', 'd', 'b']) await put(cache, id, Buffer.from(id.repeat(10)));
        await read(cache, 'd');
        const images = await cache.getCachedImages();
        assert.deepEqual(images.map((i) => i.imageId), ['a', 'b', 'c', 'd']);
        assert.deepEqual(images.map((i) => i.hits), [0, 0, 0, 1]);
        assert.deepEqual(images.map((i) => i.size), [10, 10, 10, 10]);
      });

      it('getLeastRecentlyAccessed is null for an empty cache, else the LRU image and its size', async (t) => {
        const { cache } = await setup(t);
        assert.equal(await cache.getLeastRecentlyAccessed(), null);
        await put(cache, 'a', Buffer.alloc(10));
        await put(cache, 'b', Buffer.alloc(20));
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: 'a', size: 10 });
        await read(cache, 'a');
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: 'b', size: 20 });
        await cache.deleteAllCachedImages();
        assert.equal(await cache.getLeastRecentlyAccessed(), null);
      });
    });

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

    describe('getCachedNodes', () => {
      if (capabilities.cachedNodes) {
        it('getCachedNodes lists this node for an image it has cached', async (t) => {
          const { cache, options } = await setup(t);
          await put(cache, '1');
          const self = options.workerSelfReferenceUrl;
          assert.ok(self !== undefined, 'a driver with cachedNodes needs workerSelfReferenceUrl in its options');
          assert.ok((await cache.getCachedNodes('1')).includes(self));
        });
      } else {
        it(`getCachedNodes rejects with NotSupported for the ${driverName} driver`, async (t) => {
          const { cache } = await setup(t);
          await put(cache, '1');
          await assert.rejects(cache.getCachedNodes('1'), NOT_SUPPORTED);
        });
      }
    });
  });
}
