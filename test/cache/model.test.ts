/**
 * A model-based randomized test (fast-check): random sequences of cache,
 * read, range read, delete, queue, dequeue, prune, clean, restart, a dead
 * writer's leftover and a crash (another process SIGKILLed while it caches an
 * image, see model-crash.ts), on every driver, each step checked against a
 * plain in-memory model (which images are cached with which bytes, which are
 * queued). fast-check prints the seed and the shrunk sequence of a failure
 * (a crash's kill point and delay with it); IMAGE_CACHE_MODEL_RUNS sets how
 * many sequences each driver runs.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { ImageCache, silentLogger, type DriverName } from '../../src/index.js';
import { TEST_ENGINE, makeTempDir, readAll, removeDir } from '../helpers.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { bytesOf, Crasher, type CrashPlan, type CrasherOptions } from './model-crash.js';

const IDS = ['a', 'b', 'c', 'd'] as const;
const MAX_SIZE = 6000;
const RUNS = Number(process.env.IMAGE_CACHE_MODEL_RUNS ?? 150);
/** Steps run so far, per driver: the test reports them. */
const steps = new Map<string, number>();
/** Crashes so far, per driver, by the last thing the crasher had said when it was killed: the test reports them. */
const crashes = new Map<string, Map<string, number>>();

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
  | { op: 'orphan'; id: string }
  | ({ op: 'crash'; clean: boolean } & CrashPlan);

const id = fc.constantFrom(...IDS);
/** The steps that cost milliseconds. */
const quickOp: fc.Arbitrary<Op> = fc.oneof(
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
/**
 * A crash (see CrashPlan): its kill point and delay are data, so that a
 * failure's seed replays them and its shrunk sequence shows them. Where a
 * delayed kill lands still depends on the machine's timing (the check accepts
 * either outcome); delays of a few milliseconds span a whole write and commit
 * here (claim to 'cached' takes some 5 to 50 ms on two busy cores). A kill
 * where the crasher halts ('written', 'published') lands there exactly.
 */
const crashOp: fc.Arbitrary<Op> = fc.record({
  op: fc.constant('crash' as const),
  id,
  size: fc.integer({ min: 0, max: 3000 }),
  seed: fc.integer({ min: 0, max: 255 }),
  pieces: fc.integer({ min: 1, max: 4 }),
  at: fc.constantFrom('writing' as const, 'written' as const, 'committing' as const, 'published' as const),
  delayMs: fc.integer({ min: 0, max: 12 }),
  clean: fc.boolean(),
});
/**
 * A crash costs the start of a crasher process (0.2 to 0.6 s of CPU, partly
 * overlapped with the steps that follow) and a restart: some 0.1 to 0.3 s of
 * wall time, where a quick step costs 2 to 15 ms. One step in CRASH_ODDS + 1
 * is one: 20 to 30 crashes per driver in a default run (a crash drawn for an
 * image that is cached already does nothing).
 */
const CRASH_ODDS = 70;
const op: fc.Arbitrary<Op> = fc.oneof({ weight: CRASH_ODDS, arbitrary: quickOp }, { weight: 1, arbitrary: crashOp });

/** The options of a sequence's caches (the test's and the crasher's) but for the directory and size each sequence gets. */
type SequenceOptions = Omit<CrasherOptions, 'imageCacheDir' | 'imageCacheMaxSize'>;

/** One sequence on a fresh cache directory (and database), checked after every step. */
async function runSequence(ops: Op[], options: SequenceOptions, crasher: Crasher): Promise<void> {
  const driver = options.imageCacheDriver ?? 'sqlite';
  const root = makeTempDir('image-cache-model-');
  const dir = path.join(root, 'cache');
  const cacheOptions: CrasherOptions = { ...options, imageCacheDir: dir, imageCacheMaxSize: MAX_SIZE };
  // The model prunes when its sequence says so, and nowhere else.
  const open = (): Promise<ImageCache> => ImageCache.create({ ...cacheOptions, logger: silentLogger }, TEST_ENGINE);
  let cache = await open();
  const cached = new Map<string, Buffer>();
  const queued = new Set<string>();
  try {
    for (const step of ops) {
      await apply(step);
      await check(step);
      steps.set(driver, (steps.get(driver) ?? 0) + 1);
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
        // verify() drops the queue marker of a cached image (one a crash left between the publish and its pop).
        for (const imageId of cached.keys()) queued.delete(imageId);
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
      case 'crash': {
        // The crasher would find a cached image not cacheable, as the cache op does: nothing to kill it in.
        if (cached.has(step.id)) return;
        const result = await crasher.crash(cacheOptions, step);
        const counts = crashes.get(driver) ?? new Map<string, number>();
        crashes.set(driver, counts.set(result.lastReport, (counts.get(result.lastReport) ?? 0) + 1));
        await cache.close();
        cache = await open();
        if (step.clean) await cache.clean(0);
        // Either outcome is legal: the image cached with exactly its bytes, or not cached at all.
        const data = bytesOf(step.size, step.seed);
        const listed = (await cache.getCachedImages()).find((image) => image.imageId === step.id);
        if (listed !== undefined) {
          assert.equal(listed.size, data.length, 'the image of a killed writer is listed with its whole size');
          assert.ok((await readAll(cache, step.id)).equals(data), 'the image of a killed writer reads back whole');
          cached.set(step.id, data);
        } else {
          await assert.rejects(cache.openForRead(step.id), { code: 'ERR_IMAGE_NOT_CACHED' }, 'nothing of the image of a killed writer is readable');
          assert.equal(result.done, undefined, 'an image whose commit finished before the kill is cached');
          if (step.clean) assert.ok(!fs.existsSync(path.join(dir, 'incomplete', step.id)), 'clean(0) removes the partial file of a killed writer');
        }
        if (result.done !== undefined) assert.ok(result.done, 'the crasher cached the image');
        // Its queue marker goes with the commit's last step, which the kill may have cut off; verify() drops it.
        if (listed !== undefined && !(await cache.isQueued(step.id))) queued.delete(step.id);
        if (step.clean) for (const imageId of cached.keys()) queued.delete(imageId);
        // The other images are untouched.
        for (const [imageId, bytes] of cached) assert.ok((await readAll(cache, imageId)).equals(bytes), `${imageId} after a crash`);
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

function property(options: SequenceOptions, crasher: Crasher): Promise<void> {
  return fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40, size: 'max' }), (ops) => runSequence(ops, options, crasher)), { numRuns: RUNS });
}

/** What the test reports for a driver: its steps, and its crashes by what the crasher had said when killed. */
function summary(driver: string): string {
  const counts = crashes.get(driver) ?? new Map<string, number>();
  const total = [...counts.values()].reduce((sum, n) => sum + n, 0);
  const by = [...counts].sort(([a], [b]) => (a < b ? -1 : 1)).map(([report, n]) => `${n} after '${report}'`).join(', ');
  return `${steps.get(driver) ?? 0} steps checked, ${total} crashes (${by})`;
}

describe('the cache against a model, random sequences', () => {
  const crasher = new Crasher();
  // However a test ends, its crasher is killed and reaped.
  after(() => crasher.stop());

  for (const driver of ['sqlite', 'xattr'] as DriverName[]) {
    it(`${driver}: every step agrees with the model`, async (t) => {
      await property({ imageCacheDriver: driver }, crasher);
      t.diagnostic(summary(driver));
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
      // As many sequences as the other drivers run, for as many steps (thousands).
      await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40, size: 'max' }), (ops) => runSequence(ops, {
        imageCacheDriver: 'centralized_db',
        databaseConnection: database!.url,
        workerSelfReferenceUrl: `http://model-node-${process.pid}-${node++}:9292`,
      }, crasher)), { numRuns: RUNS });
      t.diagnostic(summary('centralized_db'));
    });
  });
});
