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
  abandonedWriterChannel,
  systemIo,
  type ImageCache,
  type DriverName,
  type ImageCacheOptions,
} from '../../src/index.js';
import {
  FIXTURE_DATA,
  ageFile,
  cacheFixture,
  cachedIds,
  collect,
  deferred,
  discardWriter,
  listTree,
  makeTempDir,
  patternedBytes,
  put,
  readAll as read,
  removeDir,
  waitForClose,
  writeChunk,
  type CacheFixture,
} from '../helpers.js';

/** What a driver is expected to offer beyond the common contract. */
export interface DriverCapabilities {
  /**
   * getCachedNodes() works (centralized_db) and lists this node's
   * worker_self_reference_url for an image it holds; otherwise it rejects
   * with NotSupported.
   */
  cachedNodes: boolean;
  /**
   * Metadata lives in records apart from the files (sqlite, centralized_db),
   * so records and files can disagree in both directions; xattr keeps it on
   * the files themselves.
   */
  records: boolean;
}

/** The options a driver needs beyond the common ones (a database URL, a node name), made afresh for each test. */
export type MakeOptions = () => Partial<ImageCacheOptions> | Promise<Partial<ImageCacheOptions>>;

const KIB = 1024;
const DAY = 86_400;

const code = (c: string) => ({ code: c });
const INVALID_IMAGE_ID = code('ERR_INVALID_IMAGE_ID');
const IMAGE_BEING_CACHED = code('ERR_IMAGE_BEING_CACHED');
const IMAGE_ALREADY_CACHED = code('ERR_IMAGE_ALREADY_CACHED');
const IMAGE_NOT_CACHED = code('ERR_IMAGE_NOT_CACHED');
const NOT_SUPPORTED = code('ERR_NOT_SUPPORTED');
const CLAIM_LOST = code('ERR_CLAIM_LOST');
const CACHE_CLOSED = code('ERR_CACHE_CLOSED');

/** What clean() removed, without verify()'s counts. */
async function cleaned(cache: ImageCache, stallTime?: number): Promise<{ invalid: number; stalled: number }> {
  const { invalid, stalled } = await cache.clean(stallTime);
  return { invalid, stalled };
}

/** The V8 garbage collector as a function (what --expose-gc gives), without a command-line flag. */
function garbageCollector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

export function runConformanceSuite(driverName: DriverName, makeOptions: MakeOptions, capabilities: DriverCapabilities): void {
  /** A fresh temporary directory and a cache of this driver on it (5 KiB max size, as Glance's tests). */
  async function setup(t: TestContext, overrides: Partial<ImageCacheOptions> = {}): Promise<CacheFixture> {
    const driverOptions = await makeOptions();
    return cacheFixture(t, { imageCacheDriver: driverName, imageCacheMaxSize: 5 * KIB, ...driverOptions, ...overrides });
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

      it('isCacheable is true only when the image is neither cached nor held by a live writer', async (t) => {
        const { cache, at } = await setup(t);
        assert.equal(await cache.isCacheable('1'), true);
        await put(cache, '1');
        assert.equal(await cache.isCacheable('1'), false);
        const writer = await cache.openForWrite('2');
        t.after(() => discardWriter(writer));
        assert.equal(await cache.isBeingCached('2'), true);
        assert.equal(await cache.isCacheable('2'), false);
        // A file no live writer holds is a dead writer's leftover: not being cached, and cacheable.
        fs.writeFileSync(at('incomplete', '3'), 'partial');
        assert.equal(await cache.isBeingCached('3'), false);
        assert.equal(await cache.isCacheable('3'), true);
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
        assert.deepEqual(await cleaned(cache), { invalid: 1, stalled: 0 });
        assert.equal(fs.existsSync(at('invalid', '1')), false);
        assert.deepEqual(await cleaned(cache), { invalid: 0, stalled: 0 });
      });

      it('clean(0) removes every file in incomplete/', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('incomplete', '1'), FIXTURE_DATA);
        assert.equal(fs.existsSync(at('incomplete', '1')), true);
        assert.deepEqual(await cleaned(cache, 0), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
      });

      it('clean() with the default stall time (86400 s) removes only incomplete files older than a day', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('incomplete', 'old'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'new'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'hours-old'), FIXTURE_DATA);
        ageFile(at('incomplete', 'old'), 2 * DAY);
        ageFile(at('incomplete', 'hours-old'), 2 * 3600);
        assert.deepEqual(await cleaned(cache), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
        assert.equal(fs.existsSync(at('incomplete', 'hours-old')), true);
        // An explicit stall time overrides the configured one.
        assert.deepEqual(await cleaned(cache, 3600), { invalid: 0, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'hours-old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
      });

      it('clean() with image_cache_stall_time 3600 removes only incomplete files older than an hour', async (t) => {
        const { cache, at } = await setup(t, { imageCacheStallTime: 3600 });
        fs.writeFileSync(at('incomplete', 'old'), FIXTURE_DATA);
        fs.writeFileSync(at('incomplete', 'new'), FIXTURE_DATA);
        ageFile(at('incomplete', 'old'), DAY);
        fs.writeFileSync(at('invalid', 'broken'), 'x');
        assert.deepEqual(await cleaned(cache), { invalid: 1, stalled: 1 });
        assert.equal(fs.existsSync(at('incomplete', 'old')), false);
        assert.equal(fs.existsSync(at('incomplete', 'new')), true);
        assert.equal(fs.existsSync(at('invalid', 'broken')), false);
      });

      it('clean(0) never removes a live writer\'s file, however long it has been idle; the writer then commits its own bytes', async (t) => {
        const { cache, at } = await setup(t);
        const writer = await cache.openForWrite('1');
        t.after(() => discardWriter(writer));
        await writeChunk(writer, Buffer.from('written by the live writer, '));
        ageFile(at('incomplete', '1'), 30 * DAY);
        assert.deepEqual(await cleaned(cache, 0), { invalid: 0, stalled: 0 });
        assert.deepEqual(await cleaned(cache), { invalid: 0, stalled: 0 });
        writer.end(Buffer.from('still'));
        await finished(writer);
        assert.deepEqual(await read(cache, '1'), Buffer.from('written by the live writer, still'));
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

        // Nor can an image that a live writer is caching.
        await cache.deleteCachedImage('1');
        const writer = await cache.openForWrite('1');
        assert.equal(await cache.isBeingCached('1'), true);
        assert.equal(await cache.queueImage('1'), false);
        assert.equal(await cache.isQueued('1'), false);
        await discardWriter(writer);
        assert.equal(await cache.isBeingCached('1'), false);
        assert.equal(fs.existsSync(at('queue', '1')), false);

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

      it('a live writer keeps its claim against a second writer, a takeover and clean(0), even when its file looks a month old', async (t) => {
        const fx = await setup(t);
        const other = await fx.open();
        const first = await fx.cache.openForWrite('1');
        t.after(() => discardWriter(first));
        await writeChunk(first, Buffer.from('first writer, '));
        // Nothing about time decides: the file's mtime says its writer has been silent for a month.
        ageFile(fx.at('incomplete', '1'), 30 * DAY);
        await assert.rejects(other.openForWrite('1'), IMAGE_BEING_CACHED);
        await assert.rejects(fx.cache.openForWrite('1'), IMAGE_BEING_CACHED);
        assert.deepEqual(await cleaned(other, 0), { invalid: 0, stalled: 0 });
        assert.equal(await other.isBeingCached('1'), true);
        first.end(Buffer.from('committed'));
        await finished(first);
        assert.deepEqual(await read(other, '1'), Buffer.from('first writer, committed'));
        assert.equal(fs.existsSync(fx.at('invalid', '1')), false);
      });

      it('a file in incomplete/ that no live writer holds (its writer died) is taken over at once, whatever its age, and goes to invalid/', async (t) => {
        const { cache, at } = await setup(t);
        // Written a moment ago, but by nobody alive: no lock is held on it.
        fs.writeFileSync(at('incomplete', '1'), 'a dead writer\'s partial data');
        const w = await cache.openForWrite('1');
        t.after(() => discardWriter(w));
        assert.equal(w.tookOver, true);
        assert.deepEqual(fs.readFileSync(at('invalid', '1')), Buffer.from('a dead writer\'s partial data'));
        w.end(Buffer.from('fresh'));
        await finished(w);
        assert.deepEqual(await read(cache, '1'), Buffer.from('fresh'));
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
        const again = await cache.openForWrite('2');
        t.after(() => discardWriter(again));
        assert.equal(again.tookOver, false);
      });

      it('a writer whose incomplete file is removed behind the cache\'s back (an operator\'s rm) fails with ClaimLost and publishes nothing', async (t) => {
        const { cache, at } = await setup(t);
        const w = await cache.openForWrite('1');
        t.after(() => discardWriter(w));
        await writeChunk(w, Buffer.from('partial'));
        fs.unlinkSync(at('incomplete', '1'));
        fs.writeFileSync(at('incomplete', '1'), 'somebody else\'s bytes');
        w.end(Buffer.from(' data'));
        await assert.rejects(finished(w), CLAIM_LOST);
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(cache), []);
        assert.deepEqual(fs.readFileSync(at('incomplete', '1')), Buffer.from('somebody else\'s bytes'), 'the other file was left where it was');
      });

      it('openForWrite on a cached image rejects with ImageAlreadyCached and leaves its bytes, hits and record alone', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1');
        await read(cache, '1');
        const before = await cache.getCachedImages();
        await assert.rejects(cache.openForWrite('1'), IMAGE_ALREADY_CACHED);
        assert.equal(fs.existsSync(at('incomplete', '1')), false);
        assert.deepEqual(await cache.getCachedImages(), before);
        assert.equal(await cache.getHitCount('1'), 1);
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('a writer dropped without end() or destroy() gives its file up to invalid/ once garbage-collected', async (t) => {
        const { cache, at } = await setup(t);
        const gc = garbageCollector();
        const given = deferred();
        const onAbandoned = (message: unknown): void => {
          if ((message as { imageId?: string }).imageId === '1') given.resolve();
        };
        abandonedWriterChannel.subscribe(onAbandoned);
        t.after(() => abandonedWriterChannel.unsubscribe(onAbandoned));
        await (async () => {
          const abandoned = await cache.openForWrite('1');
          await writeChunk(abandoned, Buffer.from('partial data'));
        })();
        // Collect until the finalizer has run: it publishes on the channel once the file is given up.
        let done = false;
        void given.promise.then(() => (done = true));
        for (let i = 0; i < 1000 && !done; i++) {
          gc();
          await new Promise((resolve) => setImmediate(resolve));
        }
        await given.promise;
        assert.equal(fs.existsSync(at('incomplete', '1')), false, 'the abandoned writer still holds incomplete/1');
        assert.deepEqual(fs.readFileSync(at('invalid', '1')), Buffer.from('partial data'));
        assert.equal(await cache.isCached('1'), false);
        assert.deepEqual(await cachedIds(cache), []);
        await put(cache, '1');
        assert.deepEqual(await read(cache, '1'), FIXTURE_DATA);
      });

      it('close() waits for a commit in flight (here, a slow fsync) and the image is cached and recorded', async (t) => {
        const fsyncStarted = deferred();
        const fsyncMayFinish = deferred();
        let holdNextFsync = false;
        const io = {
          ...systemIo,
          async fsync(fd: number) {
            if (holdNextFsync) {
              holdNextFsync = false;
              fsyncStarted.resolve();
              await fsyncMayFinish.promise;
            }
            return systemIo.fsync(fd);
          },
        };
        const fx = await setup(t, { io });
        const w = await fx.cache.openForWrite('1');
        holdNextFsync = true;
        w.end(FIXTURE_DATA);
        await fsyncStarted.promise;
        let closed = false;
        const closing = fx.cache.close().then(() => (closed = true));
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(closed, false, 'close() returned while a commit was in flight');
        fsyncMayFinish.resolve();
        await finished(w);
        await closing;
        const reopened = await fx.open();
        assert.deepEqual(await reopened.getCachedImages().then((images) => images.map((i) => [i.imageId, i.size, i.hits])), [['1', 1024, 0]]);
        if (capabilities.records) assert.equal((await reopened.verify()).filesAdopted, 0, 'the commit recorded the image before close() returned');
      });

      it('a writer ended after close() publishes nothing (CacheClosed) and its file goes to invalid/', async (t) => {
        const fx = await setup(t);
        const w = await fx.cache.openForWrite('1');
        await writeChunk(w, Buffer.from('partial'));
        await fx.cache.close();
        w.end();
        await assert.rejects(finished(w), CACHE_CLOSED);
        assert.equal(fs.existsSync(fx.at('1')), false);
        assert.deepEqual(fs.readFileSync(fx.at('invalid', '1')), Buffer.from('partial'));
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

    describe('verify', () => {
      it('listings write nothing: a file without metadata is listed from its stat, and verify() then adopts it, counts it, and finds nothing more', async (t) => {
        const { cache, at } = await setup(t, { imageCacheMaxSize: 64 * KIB });
        await put(cache, 'kept');
        fs.writeFileSync(at('orphan'), Buffer.alloc(4 * KIB, 'o'));
        const listed = await cache.getCachedImages();
        assert.deepEqual(listed.map((i) => [i.imageId, i.hits, i.size]), [['kept', 0, 1024], ['orphan', 0, 4 * KIB]]);
        assert.equal(await cache.getCacheSize(), 5 * KIB);
        assert.deepEqual((await cache.listLeastRecentlyAccessed()).map((e) => e.imageId).sort(), ['kept', 'orphan']);
        assert.deepEqual(await cache.verify(), { recordsDropped: 0, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
        assert.deepEqual(await cache.verify(), { recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 });
        assert.deepEqual(await cache.getCachedImages(), listed, 'adopting the file changed what the listing shows');
      });

      it('verify() drops the record of an image whose file is gone, and counts it', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1');
        await put(cache, '2');
        fs.unlinkSync(at('1'));
        assert.deepEqual(await cachedIds(cache), ['2']);
        const dropped = capabilities.records ? 1 : 0; // xattr keeps nothing apart from the file
        assert.deepEqual(await cache.verify(), { recordsDropped: dropped, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 });
        assert.equal((await cache.verify()).recordsDropped, 0);
        assert.deepEqual(await cachedIds(cache), ['2']);
      });

      it('verify() corrects a recorded size that disagrees with the file (rewritten by a process outside the cache)', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1');
        fs.writeFileSync(at('1'), Buffer.alloc(2000, 'x'));
        // Records are trusted for sizes (no stat per image per listing) until verify() says otherwise.
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.size]), [['1', capabilities.records ? 1024 : 2000]]);
        assert.equal((await cache.verify()).sizesCorrected, capabilities.records ? 1 : 0);
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.size]), [['1', 2000]]);
        assert.equal(await cache.getCacheSize(), 2000);
      });

      it('verify() drops the queue marker of an image that is cached (prefetch would report it forever); listing the queue does not', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1');
        assert.equal(await cache.queueImage('1'), false, 'a cached image was queued');
        assert.equal(fs.existsSync(at('queue', '1')), false);
        fs.writeFileSync(at('queue', '1'), ''); // left behind by a tool that does not check
        assert.deepEqual(await cache.getQueuedImages(), ['1']);
        assert.equal((await cache.verify()).queueMarkersDropped, 1);
        assert.deepEqual(await cache.getQueuedImages(), []);
      });

      it('recover() moves dead writers\' files to invalid/ whatever their age, leaves a live writer\'s, and runs verify()', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, 'lost');
        fs.unlinkSync(at('lost'));
        fs.writeFileSync(at('incomplete', 'dead'), 'what a writer that died wrote');
        fs.writeFileSync(at('orphan'), 'o');
        const writer = await cache.openForWrite('live');
        t.after(() => discardWriter(writer));
        await writeChunk(writer, Buffer.from('a live writer\'s bytes'));
        assert.deepEqual(await cache.recover(), { abandonedWrites: 1, recordsDropped: capabilities.records ? 1 : 0, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
        assert.equal(fs.readFileSync(at('invalid', 'dead'), 'utf8'), 'what a writer that died wrote');
        assert.deepEqual(fs.readdirSync(at('incomplete')).filter((name) => !name.startsWith('.')), ['live']);
        writer.end();
        await finished(writer);
        assert.deepEqual(await read(cache, 'live'), Buffer.from('a live writer\'s bytes'));
      });

      it('clean() runs verify() after cleaning and reports both', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('invalid', 'x'), 'x');
        fs.writeFileSync(at('orphan'), 'o');
        assert.deepEqual(await cache.clean(), { invalid: 1, stalled: 0, recordsDropped: 0, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
      });

      it('a delete in another process between a commit\'s publish and its record leaves no record behind for the next copy to inherit', async (t) => {
        let deleteOnPublish = true;
        const fx = await setup(t, {
          io: {
            ...systemIo,
            rename(from, to) {
              systemIo.rename(from, to);
              if (deleteOnPublish && path.basename(to) === '1' && path.basename(path.dirname(to)) !== 'invalid') {
                deleteOnPublish = false;
                fs.unlinkSync(to);
              }
            },
          },
        });
        await put(fx.cache, '1', Buffer.alloc(4096, 'a'));
        assert.equal(await fx.cache.isCached('1'), false);
        // The next copy, published by a writer that died before recording it.
        fs.writeFileSync(fx.at('1'), Buffer.alloc(1000, 'b'));
        assert.deepEqual((await fx.cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['1', 0, 1000]]);
        assert.deepEqual(await fx.cache.verify(), { recordsDropped: 0, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
      });

      it('a read of an earlier copy that ends after the image was replaced does not give the new copy its metadata', async (t) => {
        const { cache, at } = await setup(t);
        await put(cache, '1', Buffer.alloc(1024, 'a'));
        const oldRead = await cache.openForRead('1');
        await cache.deleteCachedImage('1');
        // The next copy, published by a writer that died before recording it.
        fs.writeFileSync(at('1'), Buffer.alloc(2000, 'b'));
        assert.equal((await collect(oldRead)).length, 1024);
        await waitForClose(oldRead);
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['1', 0, 2000]]);
        assert.equal((await cache.verify()).sizesCorrected, 0);
      });

      it('reads of an image that has no metadata yet (an adopted Glance directory) count, so it ages like any other', async (t) => {
        const { cache, at } = await setup(t);
        fs.writeFileSync(at('from-glance'), Buffer.alloc(100, 'g'));
        ageFile(at('from-glance'), DAY);
        await put(cache, 'newer');
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: 'from-glance', size: 100 });
        await read(cache, 'from-glance');
        await read(cache, 'from-glance');
        assert.equal(await cache.getHitCount('from-glance'), 2);
        assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['from-glance', 2, 100], ['newer', 0, 1024]]);
        assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: 'newer', size: 1024 }, 'the reads moved its last access forward');
        assert.equal((await cache.verify()).filesAdopted, 0, 'the reads gave it its metadata');
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
