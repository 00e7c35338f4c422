/**
 * Once every commit has settled, the cache is at or under
 * image_cache_max_size, whichever process committed and however the commits
 * and prunes interleave (issue 14, item 3). Real processes on one directory:
 * commits through the library (no server), one process's prune racing the
 * other's commits, and the maintenance lock held by a third process while the
 * commits land.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ImageCache, silentLogger } from '../../src/index.js';
import { makeTempDir, removeDir } from '../helpers.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const KIB = 1024;
const MAX_SIZE = 8 * KIB;
const IMAGE_SIZE = KIB;
/** Images each process commits: together several times what the cache holds. */
const PER_PROCESS = 24;

interface Child {
  process: ChildProcessWithoutNullStreams;
  /** Resolves when the child has printed this line. */
  said(line: string): Promise<void>;
  stderr(): string;
}

function start(t: TestContext, script: string, args: string[]): Child {
  const child = spawn(process.execPath, [path.join(FIXTURES, script), ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const seen = new Set<string>();
  const waiting = new Map<string, () => void>();
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    seen.add(line);
    waiting.get(line)?.();
  });
  const exited = once(child, 'exit');
  return {
    process: child,
    stderr: () => stderr,
    said: (line) => (seen.has(line) ? Promise.resolve() : Promise.race([
      new Promise<void>((resolve) => waiting.set(line, resolve)),
      exited.then(([code]) => {
        throw new Error(`${script} exited (${code}) before saying ${line}: ${stderr}`);
      }),
    ])),
  };
}

async function exitedCleanly(child: Child): Promise<void> {
  const [code] = child.process.exitCode !== null ? [child.process.exitCode] : await once(child.process, 'exit');
  assert.equal(code, 0, child.stderr());
}

async function sizeOf(dir: string): Promise<{ size: number; images: number }> {
  const cache = await ImageCache.create({ imageCacheDir: dir, imageCacheMaxSize: MAX_SIZE, logger: silentLogger });
  try {
    return { size: await cache.getCacheSize(), images: (await cache.getCachedImages()).length };
  } finally {
    await cache.close();
  }
}

function committer(t: TestContext, dir: string, prefix: string): Child {
  return start(t, 'commit-worker.js', [dir, prefix, String(PER_PROCESS), String(MAX_SIZE), String(IMAGE_SIZE)]);
}

describe('the prune after a commit, across processes', () => {
  it('two processes committing at once through the library leave the cache at or under its limit', async (t) => {
    const dir = makeTempDir('image-cache-prune-');
    t.after(() => removeDir(dir));
    const workers = [committer(t, dir, 'a'), committer(t, dir, 'b')];
    await Promise.all(workers.map((w) => w.said('ready')));
    for (const w of workers) w.process.stdin.write('go\n');
    await Promise.all(workers.map(exitedCleanly));
    const { size, images } = await sizeOf(dir);
    assert.ok(size <= MAX_SIZE, `${size} bytes cached, over the limit of ${MAX_SIZE}`);
    assert.ok(images > 0, 'prune kept what fits');
  });

  it('commits landing while another process holds the maintenance lock are pruned once it lets go, not skipped', async (t) => {
    const dir = makeTempDir('image-cache-prune-locked-');
    t.after(() => removeDir(dir));
    const workers = [committer(t, dir, 'a'), committer(t, dir, 'b')];
    await Promise.all(workers.map((w) => w.said('ready')));
    const locker = start(t, 'directory-locker.js', [dir]);
    await locker.said('locked');
    for (const w of workers) w.process.stdin.write('go\n');
    // Every commit lands while the lock is held elsewhere; only then is it let go.
    await Promise.all(workers.map((w) => w.said('committed')));
    locker.process.stdin.write('release\n');
    await locker.said('released');
    await Promise.all(workers.map(exitedCleanly));
    const { size, images } = await sizeOf(dir);
    assert.ok(size <= MAX_SIZE, `${size} bytes cached, over the limit of ${MAX_SIZE}`);
    assert.ok(images > 0, 'prune kept what fits');
  });
});
