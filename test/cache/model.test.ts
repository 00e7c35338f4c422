/**
 * A model-based randomized test (fast-check): random sequences of cache,
 * read, range read, delete, queue, dequeue, prune, clean, restart and a dead
 * writer's leftover, on every driver, each step checked against a plain
 * in-memory model (which images are cached with which bytes, which are
 * queued). fast-check prints the seed and the shrunk sequence of a failure;
 * IMAGE_CACHE_MODEL_RUNS sets how many sequences each driver runs.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { ImageCache, silentLogger, type DriverName, type ImageCacheOptions } from '../../src/index.js';
import { makeTempDir, readAll, removeDir } from '../helpers.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';

const IDS = ['a', 'b', 'c', 'd'] as const;
const MAX_SIZE = 6000;
const RUNS = Number(process.env.IMAGE_CACHE_MODEL_RUNS ?? 150);
/** Steps run so far, per driver: the test reports them. */
const steps = new Map<string, number>();

type Op =
  | { op: 'cache'; id: string; size: number; seed: number }
  | { op: 'read'; id: string }
  | { op: 'range'; id: string; start: number; length: number }
  | { op: 'delete'; id: string }
  | { op: 'queue'; id: string }
  | { op: 'dequeue'; id: string }
  | { op: 'prune' }
  | { op: 'clean' }
  | { op: 'restart' }
  | { op: 'orphan'; id: string };

const id = fc.constantFrom(...IDS);
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('cache' as const), id, size: fc.integer({ min: 0, max: 3000 }), seed: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('read' as const), id }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('range' as const), id, start: fc.integer({ min: 0, max: 3000 }), length: fc.integer({ min: 1, max: 500 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), id }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('queue' as const), id }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('dequeue' as const), id }) },
  { weight: 1, arbitrary: fc.constant({ op: 'prune' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'clean' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'restart' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('orphan' as const), id }) },
);

function bytesOf(size: number, seed: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (seed * 31 + i * 7) & 0xff;
  return data;
}

/** One sequence on a fresh cache directory (and database), checked after every step. */
async function runSequence(ops: Op[], options: Omit<ImageCacheOptions, 'imageCacheDir'>): Promise<void> {
  const root = makeTempDir('image-cache-model-');
  const dir = path.join(root, 'cache');
  const open = (): Promise<ImageCache> => ImageCache.create({ ...options, imageCacheDir: dir, imageCacheMaxSize: MAX_SIZE, logger: silentLogger });
  let cache = await open();
  const cached = new Map<string, Buffer>();
  const queued = new Set<string>();
  try {
    for (const step of ops) {
      await apply(step);
      await check(step);
      steps.set(options.imageCacheDriver ?? 'sqlite', (steps.get(options.imageCacheDriver ?? 'sqlite') ?? 0) + 1);
    }
  } finally {
    await cache.close();
    removeDir(root);
  }

  async function apply(step: Op): Promise<void> {
    switch (step.op) {
      case 'cache': {
        const data = bytesOf(step.size, step.seed);
        const done = await cache.cacheImageStream(step.id, [data]);
        assert.equal(done, !cached.has(step.id), 'cached exactly when it was not cached yet');
        if (done) {
          cached.set(step.id, data);
          queued.delete(step.id); // the commit pops the marker
        }
        return;
      }
      case 'read': {
        if (!cached.has(step.id)) {
          await assert.rejects(cache.openForRead(step.id), { code: 'ERR_IMAGE_NOT_CACHED' });
          return;
        }
        assert.ok((await readAll(cache, step.id)).equals(cached.get(step.id)!), 'read the bytes cached');
        return;
      }
      case 'range': {
        const data = cached.get(step.id);
        if (data === undefined) return;
        const end = step.start + step.length - 1;
        if (step.start >= data.length) {
          await assert.rejects(cache.openForRead(step.id, { start: step.start, end }), { code: 'ERR_RANGE_NOT_SATISFIABLE' });
          return;
        }
        assert.ok((await readAll(cache, step.id, { start: step.start, end })).equals(data.subarray(step.start, end + 1)), 'range bytes');
        return;
      }
      case 'delete':
        await cache.deleteCachedImage(step.id);
        cached.delete(step.id);
        return;
      case 'queue': {
        const done = await cache.queueImage(step.id);
        assert.equal(done, !cached.has(step.id) && !queued.has(step.id), 'queued exactly when neither cached nor queued');
        if (done) queued.add(step.id);
        return;
      }
      case 'dequeue':
        await cache.deleteQueuedImage(step.id);
        queued.delete(step.id);
        return;
      case 'prune': {
        const before = new Map(cached);
        const result = await cache.prune();
        const left = new Set((await cache.getCachedImages()).map((image) => image.imageId));
        for (const imageId of before.keys()) if (!left.has(imageId)) cached.delete(imageId);
        let total = 0;
        for (const data of cached.values()) total += data.length;
        const beforeTotal = [...before.values()].reduce((sum, data) => sum + data.length, 0);
        assert.ok(total <= MAX_SIZE, 'pruned down to the limit');
        if (beforeTotal <= MAX_SIZE) assert.equal(result.totalFilesPruned, 0, 'nothing pruned under the limit');
        assert.equal(result.totalFilesPruned, before.size - cached.size, 'counted what it pruned');
        return;
      }
      case 'clean':
        await cache.clean(0);
        return;
      case 'restart':
        await cache.close();
        cache = await open();
        return;
      case 'orphan': {
        // What a writer that died leaves: an incomplete file nobody holds. Only where no image is cached
        // (a live cache never writes one beside a cached image) and none is left already.
        const file = path.join(dir, 'incomplete', step.id);
        if (cached.has(step.id) || fs.existsSync(file)) return;
        fs.writeFileSync(file, bytesOf(100, 9));
        return;
      }
    }
  }

  async function check(step: Op): Promise<void> {
    const listed = new Map((await cache.getCachedImages()).map((image) => [image.imageId, image.size]));
    assert.deepEqual([...listed.keys()].sort(), [...cached.keys()].sort(), `cached images after ${step.op}`);
    for (const [imageId, data] of cached) assert.equal(listed.get(imageId), data.length, `size of ${imageId} after ${step.op}`);
    assert.deepEqual((await cache.getQueuedImages()).sort(), [...queued].sort(), `queue after ${step.op}`);
    assert.equal(await cache.getCacheSize(), [...cached.values()].reduce((sum, data) => sum + data.length, 0), `cache size after ${step.op}`);
  }
}

function property(options: Omit<ImageCacheOptions, 'imageCacheDir'>): Promise<void> {
  return fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40, size: 'max' }), (ops) => runSequence(ops, options)), { numRuns: RUNS });
}

describe('the cache against a model, random sequences', () => {
  for (const driver of ['sqlite', 'xattr'] as DriverName[]) {
    it(`${driver}: every step agrees with the model`, async (t) => {
      await property({ imageCacheDriver: driver });
      t.diagnostic(`${steps.get(driver)} steps checked`);
    });
  }

  describe('centralized_db', () => {
    let database: TestDatabase | undefined;
    let unreachable: string | undefined;
    before(async () => {
      unreachable = await unreachableReason();
      if (unreachable !== undefined) return;
      database = new TestDatabase();
      await database.create();
    });
    after(() => database?.drop());

    it('every step agrees with the model', async (t) => {
      if (unreachable !== undefined) {
        if (process.env.CI) throw new Error(`no PostgreSQL server at ${ADMIN_URL} (${unreachable})`);
        t.skip(unreachable);
        return;
      }
      let node = 0;
      // Each sequence is another node of the same database: its own rows, as a fresh node's would be.
      await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40, size: 'max' }), (ops) => runSequence(ops, {
        imageCacheDriver: 'centralized_db',
        databaseConnection: database!.url,
        workerSelfReferenceUrl: `http://model-node-${process.pid}-${node++}:9292`,
      })), { numRuns: Math.max(1, Math.floor(RUNS / 2)) });
      t.diagnostic(`${steps.get('centralized_db')} steps checked`);
    });
  });
});
