/**
 * Maintenance without cron: a prune after a commit that overfills the cache,
 * and never two prunes or cleans at once on one directory, whoever runs them
 * (the lock is an flock on the cache directory, which another process's
 * descriptor would hold just as the one taken here does).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describe, it } from 'node:test';
import { Maintenance } from '../../src/cache/maintenance.js';
import { tryLockExclusive } from '../../src/fs/flock.js';
import { silentLogger } from '../../src/log.js';
import { cacheFixture, cachedIds, put } from '../helpers.js';

const options = { pruneIntervalSeconds: 0, cleanIntervalSeconds: 0, log: silentLogger };

describe('Maintenance', () => {
  it('prunes after a commit that takes the cache past its limit, and only then', async (t) => {
    const { cache } = await cacheFixture(t, { imageCacheMaxSize: 2048 });
    const maintenance = new Maintenance(cache, options);
    t.after(() => maintenance.close());
    await put(cache, 'a', Buffer.alloc(1024, 1));
    await put(cache, 'b', Buffer.alloc(1024, 2));
    maintenance.afterCommit();
    await maintenance.close();
    assert.deepEqual(await cachedIds(cache), ['a', 'b'], 'at the limit: nothing pruned');
    const next = new Maintenance(cache, options);
    await put(cache, 'c', Buffer.alloc(1024, 3));
    next.afterCommit();
    await next.close();
    assert.ok((await cache.getCacheSize()) <= 2048);
    assert.equal((await cachedIds(cache)).length, 2);
  });

  it('waits for the directory lock another holder has before it prunes; a timer\'s turn is skipped instead', async (t) => {
    const { cache, dir } = await cacheFixture(t, { imageCacheMaxSize: 1024 });
    const maintenance = new Maintenance(cache, options);
    t.after(() => maintenance.close());
    for (const id of ['a', 'b', 'c']) await put(cache, id, Buffer.alloc(1024));
    const other = fs.openSync(dir, 'r');
    assert.ok(tryLockExclusive(other), 'the other holder has the lock');
    let pruned = false;
    const pruning = maintenance.prune().then((result) => {
      pruned = true;
      return result;
    });
    // While the other holder keeps the lock, nothing is pruned, however long the prune has been waiting.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(pruned, false);
    assert.equal((await cachedIds(cache)).length, 3);
    fs.closeSync(other);
    assert.deepEqual(await pruning, { totalFilesPruned: 2, totalBytesPruned: 2048 });
  });
});
