/**
 * A serving process killed in the middle of a fill (SIGKILL, as the OOM
 * killer or a crash would): nothing partial is ever served or listed, the
 * restarted node fills the image again, and with workers = 2 the followers in
 * the other worker are cut off (never a short 200) while the primary starts a
 * new worker.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { download, fetchAll, until } from './helpers.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

async function serve(t: TestContext, config: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config-file', config], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, IMAGE_CACHE_LOG_LEVEL: 'silent' } });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /serving on (http:\/\/\S+)/.exec(out);
      if (match) resolve(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`serve exited with ${code}`)));
  });
  return { url, child };
}

/** The processes with an open descriptor for writing on `file` (the fill's writer). */
function writersOf(file: string): number[] {
  const pids: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) !== file) continue;
        const flags = Number.parseInt(/flags:\s*(\d+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!, 8);
        if ((flags & 3) !== 0) pids.push(Number(pid));
      } catch {
        // closed while we looked
      }
    }
  }
  return [...new Set(pids)];
}

function setUpDir(t: TestContext): string {
  const dir = makeTempDir('image-cache-crash-');
  t.after(() => removeDir(dir));
  return dir;
}

describe('crash safety', () => {
  it('a node killed mid-fill serves and lists nothing partial after a restart, and fills the image again', async (t) => {
    const dir = setUpDir(t);
    const fake = await startFakeGlance({ bytesPerSecond: 16 * 1024 * 1024 });
    t.after(() => fake.close());
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const cacheDir = path.join(dir, 'cache');
    const config = path.join(dir, 'node.conf');
    fs.writeFileSync(config, `[DEFAULT]\nbind_port = 0\nimage_cache_dir = ${cacheDir}\nupstream_url = ${fake.url}\n`);

    const first = await serve(t, config);
    const cut = download(`${first.url}/v2/images/${image.id}/file`);
    const incomplete = path.join(cacheDir, 'incomplete', image.id);
    await until(() => (fs.statSync(incomplete, { throwIfNoEntry: false })?.size ?? 0) > 1024 * 1024, 'the fill to be under way');
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    assert.equal((await cut).ok, false, 'the client saw the connection cut, not a short 200');
    assert.equal(fs.existsSync(path.join(cacheDir, image.id)), false);

    const second = await serve(t, config);
    const listed = JSON.parse((await fetchAll(`${second.url}/v2/cache`)).body.toString());
    assert.deepEqual(listed.cached_images, [], 'nothing partial listed');
    const again = await fetchAll(`${second.url}/v2/images/${image.id}/file`);
    assert.ok(again.body.equals(data));
    assert.equal(fake.fileRequests(image.id), 2);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'incomplete')).filter((name) => !name.startsWith('.')), []);
    assert.ok(fs.readdirSync(path.join(cacheDir, 'invalid')).length <= 1, 'the dead fill\'s leftover went to invalid/');
  });

  it('with workers = 2, killing the worker that owns a fill cuts off every follower, and the next request fills again', async (t) => {
    const dir = setUpDir(t);
    const fake = await startFakeGlance({ bytesPerSecond: 16 * 1024 * 1024 });
    t.after(() => fake.close());
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const cacheDir = path.join(dir, 'cache');
    const config = path.join(dir, 'node.conf');
    fs.writeFileSync(config, `[DEFAULT]\nbind_port = 0\nworkers = 2\nimage_cache_dir = ${cacheDir}\nupstream_url = ${fake.url}\n`);
    const { url } = await serve(t, config);

    const downloads = Array.from({ length: 6 }, () => download(`${url}/v2/images/${image.id}/file`));
    const incomplete = path.join(cacheDir, 'incomplete', image.id);
    await until(() => (fs.statSync(incomplete, { throwIfNoEntry: false })?.size ?? 0) > 1024 * 1024, 'the fill to be under way');
    const [owner] = writersOf(fs.realpathSync(incomplete));
    assert.ok(owner !== undefined, 'a worker writes the fill');
    process.kill(owner, 'SIGKILL');
    for (const result of await Promise.all(downloads)) {
      // A follower either got the whole image (it cannot have: the fill died) or saw its connection cut.
      if (result.ok) assert.ok(result.response.body.equals(data));
      else assert.ok(result.error instanceof Error);
    }
    assert.ok((await Promise.all(downloads)).every((result) => !result.ok), 'no follower got a body from a dead fill');
    const again = await fetchAll(`${url}/v2/images/${image.id}/file`);
    assert.equal(again.status, 200);
    assert.ok(again.body.equals(data));
  });
});
