/** CacheFileReader: blocking reads of cache files that still let the event loop run. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { CacheFileReader } from '../../src/fs/cache-reader.js';
import { makeTempDir, patternedBytes, removeDir } from '../helpers.js';

describe('CacheFileReader', () => {
  it('a consumer that never waits still lets the event loop turn while a large file is read', async (t) => {
    const dir = makeTempDir('image-cache-reader-');
    t.after(() => removeDir(dir));
    const file = path.join(dir, 'image');
    const data = patternedBytes(24 * 1024 * 1024 + 5);
    fs.writeFileSync(file, data);
    let turns = 0;
    let reading = true;
    const tick = (): void => {
      turns++;
      if (reading) setImmediate(tick);
    };
    setImmediate(tick);
    const chunks: Buffer[] = [];
    for await (const chunk of new CacheFileReader(fs.openSync(file, 'r'), 0, data.length - 1)) chunks.push(chunk as Buffer);
    reading = false;
    assert.ok(Buffer.concat(chunks).equals(data));
    // Reads yield every 8 MiB: 24 MiB gives the loop at least two turns.
    assert.ok(turns >= 2, `the event loop turned ${turns} times during a 24 MiB read`);
  });

  it('reads exactly the inclusive range asked for', async (t) => {
    const dir = makeTempDir('image-cache-reader-');
    t.after(() => removeDir(dir));
    const file = path.join(dir, 'image');
    const data = patternedBytes(3 * 1024 * 1024);
    fs.writeFileSync(file, data);
    const chunks: Buffer[] = [];
    for await (const chunk of new CacheFileReader(fs.openSync(file, 'r'), 1000, 2_000_000)) chunks.push(chunk as Buffer);
    assert.ok(Buffer.concat(chunks).equals(data.subarray(1000, 2_000_001)));
  });
});
