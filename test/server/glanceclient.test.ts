/**
 * Debian's python3-glanceclient against the node: `glance cache-list`,
 * `cache-queue`, `cache-delete` and `cache-clear` (Image API v2.14+), as an
 * operator runs them against Glance.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { fetchAll, startTestNode, until } from './helpers.js';

const run = promisify(execFile);

function glanceClientAvailable(): boolean {
  try {
    execFileSync('glance', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const missing = glanceClientAvailable() ? undefined : 'Debian\'s python3-glanceclient is not installed (.ci/run installs it)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

describe('python-glanceclient against the node', { skip: missing }, () => {
  it('lists, queues, deletes and clears the cache with glance cache-*', async (t: TestContext) => {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const { url, node } = await startTestNode(t, { upstreamUrl: fake.url });
    // glanceclient caches the server's schema under ~: a home of its own for the test.
    const home = makeTempDir('glanceclient-home-');
    t.after(() => removeDir(home));
    const glance = async (...args: string[]): Promise<string> =>
      (await run('glance', ['--os-image-api-version', '2', '--os-image-url', url, '--os-auth-token', 'x', ...args], { env: { ...process.env, HOME: home } })).stdout;

    const cached = await fake.addImage({ data: imageBytes(4096, 1) });
    const queued = await fake.addImage({ data: imageBytes(4096, 2) });
    await fetchAll(`${url}/v2/images/${cached.id}/file`);

    const listed = await glance('cache-list');
    assert.match(listed, new RegExp(`${cached.id}\\s*\\|\\s*cached`));

    await glance('cache-queue', queued.id);
    await until(() => node.cache.isCached(queued.id), 'the queued image to be fetched');
    assert.match(await glance('cache-list'), new RegExp(queued.id));

    await glance('cache-delete', cached.id);
    assert.equal(await node.cache.isCached(cached.id), false);

    await node.cache.queueImage('still-queued');
    await glance('cache-clear', '--target', 'both');
    assert.deepEqual(await node.cache.getCachedImages(), []);
    assert.deepEqual(await node.cache.getQueuedImages(), []);
  });
});
