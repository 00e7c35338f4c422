/** DirectorySync: one directory fsync shared by every commit that needs it, with fsync under the test's control. */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { DirectorySync } from '../../src/fs/directory-sync.js';
import { systemIo, type CacheIo } from '../../src/fs/io.js';
import { deferred, makeTempDir, removeDir } from '../helpers.js';

/** A CacheIo whose fsyncs each wait for the test to finish (or fail) them; started(n) resolves once n have begun. */
function gatedIo(): { io: CacheIo; calls: Array<{ finish: () => void; fail: (err: Error) => void }>; started: (n: number) => Promise<void> } {
  const calls: Array<{ finish: () => void; fail: (err: Error) => void }> = [];
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  return {
    calls,
    started: (n) => new Promise<void>((resolve) => (calls.length >= n ? resolve() : waiters.push({ n, resolve }))),
    io: {
      ...systemIo,
      async fsync(fd) {
        const gate = deferred();
        calls.push({ finish: () => gate.resolve(), fail: (err) => gate.reject(err) });
        for (const waiter of waiters.filter((w) => calls.length >= w.n)) waiter.resolve();
        await gate.promise;
        return systemIo.fsync(fd);
      },
    },
  };
}

function open(t: TestContext, io: CacheIo): DirectorySync {
  const dir = makeTempDir('image-cache-dirsync-');
  const sync = new DirectorySync(dir, io);
  sync.open();
  t.after(async () => {
    await sync.close();
    removeDir(dir);
  });
  return sync;
}

/** Which of these promises have settled, after the event loop has run what it can. */
async function settledFlags(promises: Array<Promise<unknown>>): Promise<boolean[]> {
  const flags = promises.map(() => false);
  promises.forEach((p, i) => p.then(() => (flags[i] = true), () => (flags[i] = true)));
  await new Promise((resolve) => setImmediate(resolve));
  return flags;
}

describe('DirectorySync', () => {
  it('callers that arrive while an fsync runs share the one next fsync: three callers, two fsyncs', async (t) => {
    const gated = gatedIo();
    const sync = open(t, gated.io);
    const first = sync.sync();
    await gated.started(1);
    // These renames happened after the running fsync began: it may not cover them.
    const second = sync.sync();
    const third = sync.sync();
    assert.equal(gated.calls.length, 1);
    gated.calls[0]!.finish();
    await first;
    await gated.started(2);
    assert.deepEqual(await settledFlags([second, third]), [false, false], 'resolved before an fsync that began after them');
    assert.equal(gated.calls.length, 2);
    gated.calls[1]!.finish();
    await Promise.all([second, third]);
    assert.equal(gated.calls.length, 2);
  });

  it('a failing fsync rejects everyone waiting on it, and the next sync runs afresh', async (t) => {
    const gated = gatedIo();
    const sync = open(t, gated.io);
    const a = sync.sync();
    await gated.started(1);
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    gated.calls[0]!.fail(eio);
    await assert.rejects(a, (err) => err === eio);
    const b = sync.sync();
    await gated.started(2);
    gated.calls[1]!.finish();
    await b;
  });

  it('close() waits for the fsync in flight; sync() after close() fails clearly', async (t) => {
    const gated = gatedIo();
    const dir = makeTempDir('image-cache-dirsync-');
    t.after(() => removeDir(dir));
    const sync = new DirectorySync(dir, gated.io);
    sync.open();
    const running = sync.sync();
    await gated.started(1);
    const closing = sync.close();
    assert.deepEqual(await settledFlags([closing]), [false]);
    gated.calls[0]!.finish();
    await running;
    await closing;
    await assert.rejects(sync.sync(), /not open/);
  });
});
