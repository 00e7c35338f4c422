/**
 * The writer on its own: a real directory, real locks and files, and a
 * CacheIo / CommitMetadata the test controls, so that an fsync can be made
 * slow or fail, a rename or a record can fail, and another process can act
 * exactly between two steps of a commit. The driver-level contract is in
 * test/drivers/conformance.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { describe, it, type TestContext } from 'node:test';
import { CacheWriter, CommitTracker, type CommitMetadata, type WriterContext } from '../../src/content/writer.js';
import { claimIncomplete, isHeld, removeIfAbandoned } from '../../src/content/claim.js';
import { DirectorySync } from '../../src/fs/directory-sync.js';
import { systemIo, type CacheIo } from '../../src/fs/io.js';
import type { Logger } from '../../src/log.js';
import { ageFile, deferred, makeTempDir, removeDir, writeChunk } from '../helpers.js';

const ID = 'img-1';
const IMAGE_BEING_CACHED = { code: 'ERR_IMAGE_BEING_CACHED' };
const IMAGE_ALREADY_CACHED = { code: 'ERR_IMAGE_ALREADY_CACHED' };
const YEAR_S = 365 * 86_400;

interface Logged {
  level: string;
  message: string;
}

interface Rig {
  dir: string;
  at(...parts: string[]): string;
  /** A context for a writer of `imageId` with these overrides. */
  context(overrides?: Partial<WriterContext>, imageId?: string): WriterContext;
  /** Every call of the default metadata, in order: 'beforePublish' and 'record:<size>', each noting whether the active file existed then. */
  events: string[];
  logged: Logged[];
}

/** A cache-shaped directory (incomplete/, invalid/, queue/) and writer contexts on it. */
function rig(t: TestContext): Rig {
  const root = makeTempDir('image-cache-writer-');
  const dir = path.join(root, 'cache');
  for (const sub of ['incomplete', 'invalid', 'queue']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
  const directory = new DirectorySync(dir, systemIo);
  directory.open();
  t.after(async () => {
    await directory.close();
    removeDir(root);
  });
  const at = (...parts: string[]): string => path.join(dir, ...parts);
  const events: string[] = [];
  const logged: Logged[] = [];
  const log: Logger = {
    debug: () => {},
    info: () => {},
    warn: (_fields, message) => logged.push({ level: 'warn', message }),
    error: (_fields, message) => logged.push({ level: 'error', message }),
  };
  const metadata: CommitMetadata = {
    beforePublish: () => {
      events.push(`beforePublish active=${fs.existsSync(at(ID))}`);
    },
    record: (size) => ({
      commit: () => {
        events.push(`record:${size} active=${fs.existsSync(at(ID))}`);
      },
      abandon: () => {
        events.push('record abandoned');
      },
    }),
    unrecord: () => {
      events.push(`unrecord active=${fs.existsSync(at(ID))}`);
    },
  };
  const commits = new CommitTracker();
  return {
    dir,
    at,
    events,
    logged,
    context: (overrides = {}, imageId = ID) => ({
      imageId,
      paths: { incomplete: at('incomplete', imageId), invalid: at('invalid', imageId), active: at(imageId), queueMarker: at('queue', imageId) },
      io: systemIo,
      directory,
      metadata,
      commits,
      log,
      ...overrides,
    }),
  };
}

/** A CacheIo whose next fsync waits until the test lets it finish. */
function slowFsync(): { io: CacheIo; started: Promise<void>; finish: () => void } {
  const started = deferred();
  const mayFinish = deferred();
  let armed = true;
  return {
    io: {
      ...systemIo,
      async fsync(fd) {
        if (armed) {
          armed = false;
          started.resolve();
          await mayFinish.promise;
        }
        return systemIo.fsync(fd);
      },
    },
    started: started.promise,
    finish: () => mayFinish.resolve(),
  };
}

/**
 * Runs, in a separate process, what another cache process would do to the
 * image now: clean(0), then openForWrite. Prints what happened as JSON.
 */
function anotherProcessTriesToTakeOver(dir: string): { stalled: number; openForWrite: string } {
  const script = `
    import { ImageCache, silentLogger } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
    const cache = await ImageCache.create({ imageCacheDir: process.argv[1], logger: silentLogger });
    const { stalled } = await cache.clean(0);
    let openForWrite = 'claimed';
    try {
      const writer = await cache.openForWrite(process.argv[2]);
      writer.destroy();
    } catch (err) {
      openForWrite = err.code ?? String(err);
    }
    await cache.close();
    console.log(JSON.stringify({ stalled, openForWrite }));`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script, dir, ID], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(child.status, 0, child.stderr);
  return JSON.parse(child.stdout.trim()) as { stalled: number; openForWrite: string };
}

describe('CacheWriter', () => {
  it('commits in order: fsync, beforePublish, publish, then record and directory fsync, queue marker popped, claim released before finish', async (t) => {
    const r = rig(t);
    const steps: string[] = [];
    const io: CacheIo = {
      fsync: async (fd) => {
        steps.push(`fsync ${fs.existsSync(r.at(ID)) ? 'after' : 'before'} publish`);
        return systemIo.fsync(fd);
      },
      rename: (from, to) => {
        steps.push(`rename ${path.relative(r.dir, from)} -> ${path.relative(r.dir, to)}`);
        systemIo.rename(from, to);
      },
    };
    const directory = new DirectorySync(r.dir, io);
    directory.open();
    t.after(() => directory.close());
    fs.writeFileSync(r.at('queue', ID), '');
    const writer = CacheWriter.open(r.context({ io, directory }));
    assert.equal(isHeld(r.at('incomplete', ID)), true, 'the claim is a lock other processes see');
    writer.write(Buffer.from('hello '));
    writer.end(Buffer.from('world'));
    await finished(writer);
    assert.deepEqual(steps, [
      'fsync before publish', // the file
      `rename incomplete/${ID} -> ${ID}`,
      'fsync after publish', // the directory
    ]);
    assert.deepEqual(r.events, ['beforePublish active=false', 'record:11 active=true']);
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'hello world');
    assert.equal(fs.existsSync(r.at('queue', ID)), false, 'the queue marker was popped');
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false);
    assert.equal(fs.readdirSync(r.at('invalid')).length, 0);
    assert.equal(writer.bytesWritten, 11);
  });

  it('window 1: an fsync slower than any lease keeps the claim: neither another writer, a cleaner nor another process can take the image, and the commit publishes', async (t) => {
    const r = rig(t);
    const disk = slowFsync();
    const writer = CacheWriter.open(r.context({ io: disk.io }));
    await writeChunk(writer, Buffer.from('every byte of a large image'));
    writer.end();
    await disk.started;
    // The commit is stuck in fsync. Whatever time says — the file looks a year
    // old — the claim is the writer's lock, and the writer is alive.
    ageFile(r.at('incomplete', ID), YEAR_S);
    assert.throws(() => CacheWriter.open(r.context()), IMAGE_BEING_CACHED);
    assert.equal(removeIfAbandoned(r.at('incomplete', ID), () => true), false);
    assert.deepEqual(anotherProcessTriesToTakeOver(r.dir), { stalled: 0, openForWrite: 'ERR_IMAGE_BEING_CACHED' });
    disk.finish();
    await finished(writer);
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'every byte of a large image');
    assert.equal(fs.readdirSync(r.at('invalid')).length, 0);
    assert.deepEqual(r.events, ['beforePublish active=false', 'record:27 active=true']);
  });

  it('window 2: another process acting between the commit\'s check and its publish can neither remove nor replace the file, so the bytes published are the writer\'s', async (t) => {
    const r = rig(t);
    let intruder: { stalled: number; openForWrite: string } | undefined;
    const io: CacheIo = {
      ...systemIo,
      rename(from, to) {
        if (intruder === undefined && to === r.at(ID)) {
          // The commit has checked that incomplete/<id> is its file and is about
          // to publish it: another process cleans and tries to claim right now.
          intruder = anotherProcessTriesToTakeOver(r.dir);
        }
        systemIo.rename(from, to);
      },
    };
    const writer = CacheWriter.open(r.context({ io }));
    writer.end(Buffer.from('the writer\'s own bytes'));
    await finished(writer);
    assert.deepEqual(intruder, { stalled: 0, openForWrite: 'ERR_IMAGE_BEING_CACHED' });
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'the writer\'s own bytes');
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false, 'no second writer\'s file was left behind');
  });

  it('two processes that both find one dead writer\'s file: only one takes it over, and the winner\'s fresh file is never moved', async (t) => {
    const r = rig(t);
    fs.writeFileSync(r.at('incomplete', ID), 'left by a writer that died');
    let second: ReturnType<typeof claimIncomplete> | 'not run' = 'not run';
    const io: CacheIo = {
      ...systemIo,
      rename(from, to) {
        if (second === 'not run' && to === r.at('invalid', ID)) {
          // The first taker holds the dead file's lock and is about to move it: the second arrives now.
          second = claimIncomplete({ incomplete: r.at('incomplete', ID), invalid: r.at('invalid', ID) }, systemIo);
        }
        systemIo.rename(from, to);
      },
    };
    const first = claimIncomplete({ incomplete: r.at('incomplete', ID), invalid: r.at('invalid', ID) }, io);
    t.after(() => first && fs.closeSync(first.fd));
    assert.ok(first !== undefined, 'the first taker claimed the image');
    assert.equal(first.tookOver, true);
    assert.equal(second, undefined, 'the second taker was told the image is held');
    // The second taker came after the first had created its fresh file:
    const third = claimIncomplete({ incomplete: r.at('incomplete', ID), invalid: r.at('invalid', ID) }, systemIo);
    assert.equal(third, undefined);
    assert.equal(fs.statSync(r.at('incomplete', ID)).ino, fs.fstatSync(first.fd).ino, 'the winner\'s file is still at incomplete/');
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'left by a writer that died');
  });

  it('a delete by another process between the publish and the record: the writer succeeds and withdraws the record, which must not outlive its copy', async (t) => {
    const r = rig(t);
    const io: CacheIo = {
      ...systemIo,
      rename(from, to) {
        systemIo.rename(from, to);
        if (to === r.at(ID)) fs.unlinkSync(to); // deleteCachedImage (or prune) elsewhere, in that instant
      },
    };
    const writer = CacheWriter.open(r.context({ io }));
    writer.end(Buffer.from('published, then deleted'));
    await finished(writer);
    assert.deepEqual(r.events, ['beforePublish active=false', 'record:23 active=false', 'unrecord active=false']);
    assert.equal(fs.existsSync(r.at(ID)), false);
    assert.equal(fs.readdirSync(r.at('invalid')).length, 0, 'a published image is never moved to invalid/');
  });

  it('a failing fsync (EIO) fails the commit: nothing is published or recorded, the partial file goes to invalid/, the claim is released', async (t) => {
    const r = rig(t);
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    const writer = CacheWriter.open(r.context({ io: { ...systemIo, fsync: async () => { throw eio; } } }));
    writer.end(Buffer.from('bytes the disk lost'));
    await assert.rejects(finished(writer), (err) => err === eio);
    assert.equal(fs.existsSync(r.at(ID)), false);
    assert.deepEqual(r.events, ['record abandoned']);
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'bytes the disk lost');
    assert.equal(isHeld(r.at('incomplete', ID)), false);
    // The image can be written again at once.
    const again = CacheWriter.open(r.context());
    again.end(Buffer.from('ok'));
    await finished(again);
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'ok');
  });

  it('an fsync that finds the disk full (ENOSPC) fails the commit and removes the partial file rather than keeping it in invalid/', async (t) => {
    // The write itself running into a full disk is tested on a real small file system (test/server/disk-full.test.ts).
    const r = rig(t);
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, fsync'), { code: 'ENOSPC' });
    const writer = CacheWriter.open(r.context({ io: { ...systemIo, fsync: async () => { throw enospc; } } }));
    writer.end(Buffer.from('bytes with no room'));
    await assert.rejects(finished(writer), (err) => err === enospc);
    assert.equal(fs.existsSync(r.at(ID)), false);
    assert.deepEqual(r.events, ['record abandoned']);
    assert.deepEqual(fs.readdirSync(r.at('invalid')), [], 'nothing kept to fill the disk');
    assert.deepEqual(fs.readdirSync(r.at('incomplete')), []);
    assert.equal(isHeld(r.at('incomplete', ID)), false);
  });

  it('a failing publish rename fails the commit: nothing is published or recorded, the partial file goes to invalid/', async (t) => {
    const r = rig(t);
    const io: CacheIo = {
      ...systemIo,
      rename(from, to) {
        if (to === r.at(ID)) throw Object.assign(new Error('EACCES: permission denied, rename'), { code: 'EACCES' });
        systemIo.rename(from, to);
      },
    };
    const writer = CacheWriter.open(r.context({ io }));
    writer.end(Buffer.from('partial'));
    await assert.rejects(finished(writer), { code: 'EACCES' });
    assert.equal(fs.existsSync(r.at(ID)), false);
    assert.deepEqual(r.events, ['beforePublish active=false', 'record abandoned']);
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'partial');
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false);
  });

  it('a failing beforePublish (say, a file system refusing an attribute) fails the commit before anything is published', async (t) => {
    const r = rig(t);
    const metadata: CommitMetadata = {
      beforePublish: () => {
        throw new Error('ENOTSUP: operation not supported, setxattr');
      },
      record: () => ({ commit: () => assert.fail('recorded an image that was not published'), abandon: () => {} }),
      unrecord: () => assert.fail('withdrew a record never written'),
    };
    const writer = CacheWriter.open(r.context({ metadata }));
    writer.end(Buffer.from('partial'));
    await assert.rejects(finished(writer), /setxattr/);
    assert.equal(fs.existsSync(r.at(ID)), false);
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'partial');
  });

  it('once published, the writer reports success even when the record and the directory fsync fail; both are logged', async (t) => {
    const r = rig(t);
    const base = r.context();
    const io: CacheIo = { ...systemIo, fsync: async () => {} };
    const directory = new DirectorySync(r.dir, { ...systemIo, fsync: async () => { throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }); } });
    directory.open();
    t.after(() => directory.close());
    const metadata: CommitMetadata = {
      beforePublish: () => {},
      record: () => ({
        commit: async () => {
          throw new Error('database is locked');
        },
        abandon: () => assert.fail('abandoned the record of a published image'),
      }),
      unrecord: () => assert.fail('withdrew a record that failed'),
    };
    const writer = CacheWriter.open({ ...base, io, directory, metadata });
    writer.end(Buffer.from('published'));
    await finished(writer);
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'published');
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false);
    assert.deepEqual(r.logged.map((l) => l.level).sort(), ['error', 'error']);
    assert.ok(r.logged.some((l) => /record/.test(l.message)), JSON.stringify(r.logged));
    assert.ok(r.logged.some((l) => /fsync the cache directory/.test(l.message)), JSON.stringify(r.logged));
  });

  it('an image cached by someone outside the cache while the writer committed is not overwritten (ImageAlreadyCached)', async (t) => {
    const r = rig(t);
    const disk = slowFsync();
    const writer = CacheWriter.open(r.context({ io: disk.io }));
    writer.end(Buffer.from('ours'));
    await disk.started;
    fs.writeFileSync(r.at(ID), 'already there, being read');
    disk.finish();
    await assert.rejects(finished(writer), IMAGE_ALREADY_CACHED);
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'already there, being read');
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'ours');
  });

  it('open() refuses a cached image before claiming anything', (t) => {
    const r = rig(t);
    fs.writeFileSync(r.at(ID), 'cached');
    assert.throws(() => CacheWriter.open(r.context()), IMAGE_ALREADY_CACHED);
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false);
  });

  it('destroy() during a commit lets the commit decide: once published, the image stays and nothing goes to invalid/', async (t) => {
    const r = rig(t);
    const disk = slowFsync();
    const writer = CacheWriter.open(r.context({ io: disk.io }));
    writer.end(Buffer.from('committing'));
    await disk.started;
    writer.destroy();
    disk.finish();
    await new Promise((resolve) => writer.once('close', resolve));
    assert.equal(fs.readFileSync(r.at(ID), 'utf8'), 'committing');
    assert.equal(fs.readdirSync(r.at('invalid')).length, 0);
    assert.equal(fs.existsSync(r.at('incomplete', ID)), false);
  });

  it('destroy() before end moves the partial file to invalid/ and releases the claim; writing afterwards fails', async (t) => {
    const r = rig(t);
    const writer = CacheWriter.open(r.context());
    await writeChunk(writer, Buffer.from('partial'));
    writer.destroy();
    await new Promise((resolve) => writer.once('close', resolve));
    assert.equal(fs.readFileSync(r.at('invalid', ID), 'utf8'), 'partial');
    assert.equal(isHeld(r.at('incomplete', ID)), false);
    assert.deepEqual(r.events, []);
  });

  it('emits progress with the bytes written so far', async (t) => {
    const r = rig(t);
    const writer = CacheWriter.open(r.context());
    const seen: number[] = [];
    writer.on('progress', (n: number) => seen.push(n));
    await writeChunk(writer, Buffer.alloc(10));
    await writeChunk(writer, Buffer.alloc(5));
    writer.end();
    await finished(writer);
    assert.deepEqual(seen, [10, 15]);
  });
});

describe('CommitTracker', () => {
  it('close() waits for commits in flight, then refuses new ones with CacheClosed', async () => {
    const tracker = new CommitTracker();
    const release = deferred();
    let done = false;
    const running = tracker.run(async () => {
      await release.promise;
      done = true;
    });
    let closed = false;
    const closing = tracker.close().then(() => (closed = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(closed, false);
    release.resolve();
    await running;
    await closing;
    assert.equal(done, true);
    await assert.rejects(tracker.run(async () => {}), { code: 'ERR_CACHE_CLOSED' });
  });
});
