/**
 * Claims across processes, with real processes: a claim is a flock(2) lock,
 * so it lives exactly as long as its writer's process — a frozen writer keeps
 * it however long it is frozen, and a killed one loses it at once.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { finished } from 'node:stream/promises';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { LOCK_PROBE_PREFIX, lockingProblem } from '../../src/fs/flock.js';
import { ageFile, cacheFixture, discardWriter, makeTempDir, readAll, removeDir } from '../helpers.js';

const HOLDER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'claim-holder.js');
const IMAGE_BEING_CACHED = { code: 'ERR_IMAGE_BEING_CACHED' };
const YEAR_S = 365 * 86_400;

/** A writer process holding a claim on `imageId`, once it has said so on stdout. */
async function startHolder(t: TestContext, dir: string, imageId: string): Promise<{ child: ChildProcessWithoutNullStreams; lines: AsyncIterator<string> }> {
  const child = spawn(process.execPath, [HOLDER, dir, imageId], { stdio: 'pipe' });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const stderr: Buffer[] = [];
  child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  assert.equal(first.value, 'claimed', `the holder did not claim: ${Buffer.concat(stderr).toString()}`);
  return { child, lines };
}

describe('claims across processes', () => {
  it('a writer frozen mid-write (SIGSTOP, as a hung disk would) keeps its claim however old its file looks; resumed, it commits its own bytes', async (t) => {
    const { cache, dir, at } = await cacheFixture(t);
    const { child, lines } = await startHolder(t, dir, 'img');
    child.kill('SIGSTOP');
    t.after(() => child.kill('SIGCONT'));
    ageFile(at('incomplete', 'img'), YEAR_S);
    assert.equal(await cache.isBeingCached('img'), true);
    assert.equal(await cache.isCacheable('img'), false);
    await assert.rejects(cache.openForWrite('img'), IMAGE_BEING_CACHED);
    const cleaned = await cache.clean(0);
    assert.equal(cleaned.stalled, 0, 'clean removed a live writer\'s file');
    child.kill('SIGCONT');
    child.stdin.write('end\n');
    assert.equal((await lines.next()).value, 'committed');
    await once(child, 'exit');
    assert.equal((await readAll(cache, 'img')).toString(), `written by ${child.pid} and the rest`);
  });

  it('a writer killed mid-write (SIGKILL) loses its claim at once: the next writer takes over with no wait, and the dead writer\'s bytes go to invalid/', async (t) => {
    const { cache, dir, at } = await cacheFixture(t);
    const { child } = await startHolder(t, dir, 'img');
    assert.equal(await cache.isBeingCached('img'), true);
    child.kill('SIGKILL');
    await once(child, 'exit');
    // The process is gone, so the kernel has released its lock: no lease to wait out.
    assert.equal(await cache.isBeingCached('img'), false);
    assert.equal(await cache.isCacheable('img'), true);
    const writer = await cache.openForWrite('img');
    t.after(() => discardWriter(writer));
    assert.equal(writer.tookOver, true);
    assert.equal(fs.readFileSync(at('invalid', 'img'), 'utf8'), `written by ${child.pid}`);
    writer.end(Buffer.from('the second writer\'s image'));
    await finished(writer);
    assert.equal((await readAll(cache, 'img')).toString(), 'the second writer\'s image');
  });

  it('clean(0) removes a dead writer\'s file at once, but never one a live process holds', async (t) => {
    const { cache, dir, at } = await cacheFixture(t);
    const live = await startHolder(t, dir, 'live');
    const dead = await startHolder(t, dir, 'dead');
    dead.child.kill('SIGKILL');
    await once(dead.child, 'exit');
    const cleaned = await cache.clean(0);
    assert.equal(cleaned.stalled, 1);
    assert.equal(fs.existsSync(at('incomplete', 'dead')), false);
    assert.equal(fs.existsSync(at('incomplete', 'live')), true);
    live.child.stdin.write('end\n');
    assert.equal((await live.lines.next()).value, 'committed');
  });

  it('clean() removes a lock probe left by a process that died while configuring, and never touches a fresh one (its process may be probing)', async (t) => {
    const { cache, at } = await cacheFixture(t);
    fs.writeFileSync(at('incomplete', `${LOCK_PROBE_PREFIX}999999-dead`), '');
    ageFile(at('incomplete', `${LOCK_PROBE_PREFIX}999999-dead`), 120);
    fs.writeFileSync(at('incomplete', `${LOCK_PROBE_PREFIX}999999-live`), '');
    const cleaned = await cache.clean(0);
    assert.equal(cleaned.stalled, 1);
    assert.deepEqual(fs.readdirSync(at('incomplete')), [`${LOCK_PROBE_PREFIX}999999-live`]);
  });

  it('configure() checks the file system grants the locks; one that refuses them, or grants two at once, is named', (t) => {
    const dir = makeTempDir('image-cache-locks-');
    t.after(() => removeDir(dir));
    assert.equal(lockingProblem(dir), undefined);
    const enolck = (): boolean => {
      throw Object.assign(new Error('ENOLCK: no locks available, flock'), { code: 'ENOLCK' });
    };
    assert.match(lockingProblem(dir, enolck) ?? '', /flock\(\) failed: ENOLCK/);
    assert.match(lockingProblem(dir, () => true) ?? '', /two exclusive locks/);
    assert.deepEqual(fs.readdirSync(dir), [], 'the probe file was removed');
  });
});
