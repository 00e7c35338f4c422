/** AccessBatch: reads written in batches, one write at a time, and a flush that finishes under any load. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AccessBatch, MAX_KEPT_IMAGES, type PendingAccess } from '../../src/metadata/access-batch.js';
import { MetadataStoreUnavailable } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { deferred, waitUntil } from '../helpers.js';

type Batch = Record<string, PendingAccess>;

/** A batch whose writes are recorded, and held until the test releases them when `gated`. */
function recorder(gated = false) {
  const writes: Batch[] = [];
  const gates: Array<() => void> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const errors: string[] = [];
  const log: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: (_f, message) => errors.push(message) };
  let failNext = false;
  const batch = new AccessBatch(async (entries) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      writes.push(Object.fromEntries([...entries].map(([id, access]) => [id, { ...access }])));
      if (gated) {
        const gate = deferred();
        gates.push(() => gate.resolve());
        await gate.promise;
      }
      if (failNext) {
        failNext = false;
        throw new Error('database is locked');
      }
    } finally {
      inFlight--;
    }
  }, log, () => 'test');
  /** Resolves once `n` writes have begun (a write starts a microtask or more after the flush that queues it). */
  const begun = async (n: number): Promise<void> => {
    for (let i = 0; i < 100 && writes.length < n; i++) await Promise.resolve();
    assert.ok(writes.length >= n, `${writes.length} writes began, expected ${n}`);
  };
  return { batch, writes, gates, errors, begun, maxInFlight: () => maxInFlight, failOnce: () => (failNext = true) };
}

const read = (at: number, size = 100) => ({ at, ino: 7, size, lastModified: 1 });
const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('AccessBatch', () => {
  it('reads closed during one turn of the event loop become one write: hits summed, latest access kept', async () => {
    const r = recorder();
    r.batch.add('a', read(10));
    r.batch.add('a', read(30));
    r.batch.add('a', read(20));
    r.batch.add('b', read(5, 7));
    assert.equal(r.writes.length, 0, 'nothing is written synchronously');
    await turn();
    await r.batch.settled();
    assert.deepEqual(r.writes, [{
      a: { hits: 3, lastAccessed: 30, ino: 7, size: 100, lastModified: 1 },
      b: { hits: 1, lastAccessed: 5, ino: 7, size: 7, lastModified: 1 },
    }]);
  });

  it('flush() finishes under a steady stream of reads: one write in flight, at most one queued behind it, taking whatever has gathered', async () => {
    const r = recorder(true);
    r.batch.add('a', read(1));
    const first = r.batch.flush();
    await r.begun(1);
    // While the first write is in flight, reads keep arriving and flushes keep being asked for.
    const flushes: Array<Promise<void>> = [];
    for (let i = 0; i < 50; i++) {
      r.batch.add('b', read(2 + i));
      flushes.push(r.batch.flush());
      await turn();
    }
    assert.equal(r.writes.length, 1, 'a second write started while one was in flight');
    assert.equal(new Set(flushes).size, 1, 'each flush queued a write of its own');
    r.gates[0]!();
    await first;
    await r.begun(2);
    assert.deepEqual(r.writes[1], { b: { hits: 50, lastAccessed: 51, ino: 7, size: 100, lastModified: 1 } }, 'the queued write took every read gathered meanwhile');
    // Reads that arrive during the second write go to a third; the earlier flushes do not wait for it.
    r.batch.add('c', read(100));
    const later = r.batch.flush();
    r.gates[1]!();
    await Promise.all(flushes);
    let laterDone = false;
    void later.then(() => (laterDone = true));
    await turn();
    assert.equal(laterDone, false, 'the earlier flushes resolved while the third write was still held');
    await r.begun(3);
    r.gates[2]!();
    await later;
    assert.deepEqual(r.writes.map((w) => Object.keys(w)), [['a'], ['b'], ['c']]);
    assert.equal(r.maxInFlight(), 1, 'two writes ran at once');
  });

  it('a failed write is logged and the batches after it are still written', async () => {
    const r = recorder();
    r.failOnce();
    r.batch.add('a', read(1));
    await r.batch.flush();
    assert.deepEqual(r.errors, ['could not record image reads']);
    r.batch.add('b', read(2));
    await r.batch.flush();
    assert.deepEqual(r.writes.map((w) => Object.keys(w)), [['a'], ['b']]);
  });

  it('forget() drops the unwritten reads of an image; settled() waits for the write in flight without starting another', async () => {
    const r = recorder(true);
    r.batch.add('a', read(1));
    const flushing = r.batch.flush();
    r.batch.add('b', read(2));
    r.batch.add('c', read(3));
    r.batch.forget('b');
    const settled = r.batch.settled();
    await r.begun(1);
    r.gates[0]!();
    await flushing;
    await settled;
    assert.equal(r.writes.length, 1, 'settled() started a write');
    const next = r.batch.flush();
    await r.begun(2);
    r.gates[1]!();
    await next;
    assert.deepEqual(r.writes.map((w) => Object.keys(w)), [['a'], ['c']]);
  });

  it('flush() with nothing pending resolves at once', async () => {
    const r = recorder();
    await r.batch.flush();
    assert.equal(r.writes.length, 0);
  });
});

describe('AccessBatch while the metadata store is unavailable', () => {
  /** A batch whose writes fail with MetadataStoreUnavailable while `down`; `partly` makes a failing write take the first image first. */
  function store() {
    const state = { down: true, partly: false, gate: undefined as Promise<void> | undefined };
    const written: Batch = {};
    const attempts: string[][] = [];
    const logged: Array<{ level: string; message: string; fields: Record<string, unknown> }> = [];
    const entry = (level: string) => (fields: Record<string, unknown>, message: string) => logged.push({ level, message, fields });
    const log: Logger = { debug: entry('debug'), info: entry('info'), warn: entry('warn'), error: entry('error') };
    const take = (id: string, access: PendingAccess): void => {
      const before = written[id];
      written[id] = before === undefined ? { ...access } : { ...access, hits: before.hits + access.hits };
    };
    const batch = new AccessBatch(async (entries) => {
      attempts.push([...entries.keys()]);
      await state.gate;
      if (state.down) {
        const first = [...entries][0];
        if (state.partly && first !== undefined) {
          take(...first);
          entries.delete(first[0]);
        }
        throw new MetadataStoreUnavailable('test', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
      }
      for (const [id, access] of entries) take(id, access);
    }, log, () => 'test');
    return { state, written, attempts, logged, batch };
  }

  it('keeps the reads of a write the store could not take, merged with newer ones, and writes them on its own once the store answers', async () => {
    const s = store();
    s.batch.add('a', { at: 10, ino: 1, size: 100, lastModified: 1 });
    s.batch.add('b', read(11));
    await s.batch.flush();
    assert.deepEqual(s.written, {}, 'nothing was written');
    assert.ok(s.logged.some((l) => l.level === 'warn' && l.message === 'could not record image reads; keeping them for later'));
    // While the store is down, new reads wait for the retry timer instead of each trying the store.
    const tries = s.attempts.length;
    s.batch.add('a', { at: 30, ino: 2, size: 200, lastModified: 2 });
    await turn();
    await s.batch.settled();
    assert.equal(s.attempts.length, tries, 'a read tried the store before the retry');
    s.state.down = false;
    await waitUntil(() => s.written.a !== undefined, 5_000);
    await s.batch.settled();
    assert.deepEqual(s.written, {
      a: { hits: 2, lastAccessed: 30, ino: 2, size: 200, lastModified: 2 },
      b: { hits: 1, lastAccessed: 11, ino: 7, size: 100, lastModified: 1 },
    });
    // Recovered: reads are written as they come again.
    s.batch.add('c', read(40));
    await turn();
    await s.batch.settled();
    assert.equal((s.written as Batch)['c']?.hits, 1);
  });

  it('a write that failed part-way keeps only the reads it did not write', async () => {
    const s = store();
    s.state.partly = true;
    s.batch.add('a', read(1));
    s.batch.add('b', read(2));
    await s.batch.flush();
    s.state.down = false;
    await s.batch.flush();
    assert.equal(s.written.a?.hits, 1, 'the written read was written again');
    assert.equal(s.written.b?.hits, 1);
  });

  it('does not keep the reads of an image forgotten while the failing write ran (its record is being replaced)', async () => {
    const s = store();
    const gate = deferred();
    s.state.gate = gate.promise;
    s.batch.add('a', read(1));
    s.batch.add('b', read(2));
    const flushing = s.batch.flush();
    s.batch.forget('a');
    gate.resolve();
    await flushing;
    s.state.down = false;
    await s.batch.flush();
    assert.deepEqual(Object.keys(s.written), ['b']);
  });

  it(`keeps the reads of at most ${MAX_KEPT_IMAGES} images, and says how many reads it dropped`, async () => {
    const s = store();
    for (let i = 0; i < MAX_KEPT_IMAGES + 3; i++) s.batch.add(`image-${i}`, read(i));
    s.batch.add('image-0', read(1));
    await s.batch.flush();
    const error = s.logged.find((l) => l.level === 'error');
    assert.equal(error?.fields.dropped, 3);
    s.state.down = false;
    await s.batch.flush();
    assert.equal(Object.keys(s.written).length, MAX_KEPT_IMAGES);
    assert.equal(s.written['image-0']?.hits, 2);
  });

  it('close() gives the kept reads up and says how many', async () => {
    const s = store();
    s.batch.add('a', read(1));
    await s.batch.flush();
    s.batch.close();
    assert.ok(s.logged.some((l) => l.level === 'warn' && /closing with image reads/.test(l.message) && l.fields.hits === 1));
    const tries = s.attempts.length;
    s.state.down = false;
    await s.batch.flush();
    assert.equal(s.attempts.length, tries, 'a read kept before close() was tried again');
    assert.deepEqual(s.written, {});
  });
});

describe('AccessBatch gathering for a shared store (gatherMs)', () => {
  it('writes the reads of a whole interval at once, however many arrive in it, and flush() does not wait for the interval', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const writes: number[] = [];
    const log: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
    const batch = new AccessBatch(async (entries) => {
      writes.push([...entries.values()].reduce((n, read) => n + read.hits, 0));
    }, log, () => 'test', () => 1_000);
    const read = { at: 1, ino: 1, size: 1, lastModified: 1 };
    for (let i = 0; i < 500; i++) {
      batch.add(`image-${i % 7}`, read);
      await new Promise<void>((resolve) => setImmediate(resolve)); // turns of the event loop pass: no write yet
    }
    assert.deepEqual(writes, []);
    t.mock.timers.tick(1_000);
    await batch.settled();
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(writes, [500]);
    batch.add('image-0', read);
    await batch.flush();
    assert.deepEqual(writes, [500, 1]);
    batch.close();
  });
});
