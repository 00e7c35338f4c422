import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import readline from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ImageCache, silentLogger } from '../../src/index.js';
import { IMAGE_COUNT, imageBytes, imageId } from './fixtures/shared-images.js';

const run = promisify(execFile);
const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'cache-worker.js');

describe('several processes sharing one cache directory', () => {
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('cache, read, queue, prune and clean at once without interleaved files, lost records or busy errors', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-mp-'));
    dirs.push(dir);
    const workers = 4;
    const results = await Promise.all(
      Array.from({ length: workers }, (_, i) => run(process.execPath, [WORKER, dir, String(i), '3'], { timeout: 60_000 })),
    );
    const counts = results.map((r) => JSON.parse(r.stdout.trim()) as Record<string, number>);
    const total = (key: string): number => counts.reduce((sum, c) => sum + c[key]!, 0);
    assert.ok(total('cached') > 0, 'some image was cached');
    assert.ok(total('read') > 0, 'some image was read back');
    // 4 workers x 3 rounds x 12 distinct queue ids each, none cached: every one queued.
    assert.equal(total('queued'), workers * 3 * IMAGE_COUNT);

    // Every active file holds exactly its own image's bytes: no writer interleaved with another.
    const cache = await ImageCache.create({ imageCacheDir: dir, logger: silentLogger });
    try {
      const listed = await cache.getCachedImages();
      for (let i = 0; i < IMAGE_COUNT; i++) {
        const file = path.join(dir, imageId(i));
        if (fs.existsSync(file)) assert.ok(fs.readFileSync(file).equals(imageBytes(i)), `${imageId(i)} holds its own bytes`);
      }
      // Records and files agree: every listed image has its file and the recorded size.
      const onDisk = fs.readdirSync(dir).filter((name) => name.startsWith('img-'));
      assert.deepEqual(listed.map((image) => image.imageId).sort(), onDisk.sort());
      for (const image of listed) assert.equal(image.size, imageBytes(0).length);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'incomplete')), [], 'no writer left an incomplete file');
      assert.equal((await cache.getQueuedImages()).length, workers * 3 * IMAGE_COUNT);
      assert.ok((await cache.getCacheSize()) <= (IMAGE_COUNT * imageBytes(0).length) / 2 + imageBytes(0).length * workers,
        'pruning kept the cache near its limit');
    } finally {
      await cache.close();
    }
  });

  it('two processes racing to cache one image: one writes it, the other is told it is being (or has been) cached', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-race-'));
    dirs.push(dir);
    // Each process opens its cache, says "ready", and claims only when told "go", so both claims start together.
    const script = `
      import readline from 'node:readline';
      import { ImageCache, silentLogger } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
      const cache = await ImageCache.create({ imageCacheDir: process.argv[1], logger: silentLogger });
      const fill = Buffer.alloc(1 << 20, process.argv[2]);
      console.log('ready');
      for await (const line of readline.createInterface({ input: process.stdin })) if (line === 'go') break;
      try {
        const writer = await cache.openForWrite('same');
        for (let i = 0; i < 8; i++) await new Promise((resolve, reject) => writer.write(fill, (err) => (err ? reject(err) : resolve())));
        await new Promise((resolve, reject) => writer.end((err) => (err ? reject(err) : resolve())));
        console.log('wrote');
      } catch (err) {
        console.log(err.code);
      } finally {
        await cache.close();
      }`;
    const children = ['a', 'b'].map((fill) => spawn(process.execPath, ['--input-type=module', '-e', script, dir, fill], { stdio: ['pipe', 'pipe', 'inherit'] }));
    const outputs = children.map((child) => readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]());
    for (const output of outputs) assert.equal((await output.next()).value, 'ready');
    for (const child of children) child.stdin.write('go\n');
    const outcomes = (await Promise.all(outputs.map(async (output) => (await output.next()).value as string))).sort();
    for (const child of children) child.stdin.end();
    await Promise.all(children.map((child) => (child.exitCode === null ? once(child, 'exit') : undefined)));
    assert.equal(outcomes.filter((o) => o === 'wrote').length, 1, `outcomes: ${outcomes.join(', ')}`);
    assert.ok(['ERR_IMAGE_BEING_CACHED', 'ERR_IMAGE_ALREADY_CACHED'].includes(outcomes.find((o) => o !== 'wrote')!), `outcomes: ${outcomes.join(', ')}`);
    const bytes = fs.readFileSync(path.join(dir, 'same'));
    assert.equal(bytes.length, 8 << 20);
    assert.ok(bytes.every((byte) => byte === bytes[0]), 'the file holds one writer\'s bytes only');
  });
});
