/**
 * The writer process that model.test.ts kills (see Crasher in model-crash.ts):
 * on a 'cache' command, it opens the test's cache directory (and database)
 * with the test's options and caches one image there in several pieces,
 * reporting as it goes ('writing' before it claims the image, 'committing'
 * when the commit's fsync begins, 'cached' when it is done) so that the test
 * can SIGKILL it at a moment of its choosing. Asked to, it halts where the
 * test wants to kill it (see Halt): before the last piece of its write, or
 * between the publish and the record.
 */
import fs from 'node:fs';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
// Not the package index: that loads the server and the sources too, and each respawn pays for what it loads.
import { ImageCache } from '../../src/cache/image-cache.js';
import { systemIo, type CacheIo } from '../../src/fs/io.js';
import { silentLogger } from '../../src/log.js';
import type { DriverName } from '../../src/config.js';
import { bytesOf, HALT_FD, type CrasherCommand, type CrasherReport, type Halt } from './model-crash.js';

/**
 * The driver's module, loaded before saying 'ready' rather than by the first
 * ImageCache.create: a successor is started as soon as its predecessor is
 * killed, and loads this while the test goes on.
 */
const DRIVER_MODULES: Record<DriverName, string> = { sqlite: 'sqlite.js', xattr: 'xattr.js', centralized_db: 'centralized-db.js' };
const driver = process.argv[2] as DriverName;
if (!Object.hasOwn(DRIVER_MODULES, driver)) throw new Error(`usage: model-crasher.js <driver>, one of ${Object.keys(DRIVER_MODULES).join(', ')}`);
await import(`../../src/metadata/${DRIVER_MODULES[driver]}`);

/** The image being cached, while a 'cache' command runs: what the io below reports on. */
let current: { active: string; halt: Halt | null; committing: boolean } | undefined;

/** The real system calls, reporting the commit's steps of the image being cached. */
const io: CacheIo = {
  fsync: (fd) => {
    // The commit's first fsync is its file's (the directory's comes after the publish).
    if (current !== undefined && !current.committing) {
      current.committing = true;
      report({ type: 'committing' });
    }
    return systemIo.fsync(fd);
  },
  rename: (from, to) => {
    systemIo.rename(from, to);
    if (current?.halt === 'published' && to === current.active) halt('published');
  },
};

/**
 * Stops this process dead where it stands (nothing after this call runs):
 * says where on HALT_FD (a synchronous write, which IPC is not, and the
 * event loop never turns again) and blocks until the test kills it. If no
 * kill comes (the test is gone), it exits after a while rather than linger.
 */
function halt(where: Halt): never {
  fs.writeSync(HALT_FD, `${where}\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
  process.exit(1);
}

function report(message: CrasherReport): void {
  process.send!(message);
}

/**
 * The image in `count` pieces, a turn of the event loop between two, so that
 * a kill can land between them; halting before the last one if asked to. The
 * source is read only once the image is claimed, and a piece reaches the
 * file (the writer's writes are synchronous) before the next is asked for.
 */
async function* pieces(data: Buffer, count: number, haltBeforeLast: boolean): AsyncGenerator<Buffer> {
  const size = Math.ceil(data.length / count);
  for (let offset = 0; offset < data.length; offset += size) {
    if (offset > 0) await nextTurn();
    if (haltBeforeLast && offset + size >= data.length) halt('written');
    yield data.subarray(offset, offset + size);
  }
}

/** The one command of a crasher's life: it is killed before it could get another. */
async function handle(command: CrasherCommand): Promise<void> {
  // The model prunes when its sequence says so, and nowhere else.
  const cache = await ImageCache.create({ ...command.options, logger: silentLogger, io }, { pruneAfterCommit: false });
  current = { active: path.join(path.resolve(command.options.imageCacheDir), command.id), halt: command.halt, committing: false };
  const data = bytesOf(command.size, command.seed);
  report({ type: 'writing' });
  const done = await cache.cacheImageStream(command.id, pieces(data, command.pieces, command.halt === 'written'));
  current = undefined;
  report({ type: 'cached', done });
}

process.on('message', (command: CrasherCommand) => {
  handle(command).catch((err: unknown) => report({ type: 'failed', error: err instanceof Error ? (err.stack ?? err.message) : String(err) }));
});
// The test process is gone (it died, or forgot us): so are we.
process.on('disconnect', () => process.exit(0));
report({ type: 'ready' });
