/**
 * `image-cache serve` with image_cache_driver = centralized_db that cannot be
 * configured stops at start-up with the reason (issue 14, item 5), where the
 * library falls back to a private sqlite cache as Glance does: a node that
 * served from a cache of its own would be invisible to the other nodes. Real
 * `serve` processes, against the real PostgreSQL where one is needed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { CLEAN_ENV, CLI, fetchAll, startServe } from './helpers.js';

/** Runs `image-cache serve --config-file FILE` to its end (it must end by itself); its status and stderr. */
async function serveUntilExit(t: TestContext, config: string, cwd: string): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config-file', config], { cwd, env: CLEAN_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout.resume();
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stderr };
}

function setUp(t: TestContext, lines: string[]): { dir: string; cacheDir: string; config: string } {
  const dir = makeTempDir('image-cache-serve-cdb-');
  t.after(() => removeDir(dir));
  const cacheDir = path.join(dir, 'cache');
  const config = path.join(dir, 'glance-api.conf');
  fs.writeFileSync(config, ['[DEFAULT]', 'bind_port = 0', 'image_cache_driver = centralized_db', `image_cache_dir = ${cacheDir}`, ...lines].join('\n'));
  return { dir, cacheDir, config };
}

/** No private sqlite cache was opened in the directory. */
function assertNoSqliteCache(cacheDir: string): void {
  assert.equal(fs.existsSync(path.join(cacheDir, 'cache.db')), false, 'serve fell back to a private sqlite cache');
}

describe('image-cache serve with a centralized_db it cannot configure', () => {
  const db = new TestDatabase();
  before(async () => {
    // A real PostgreSQL is one of the test peers: without it this fails, it does not skip.
    const unreachable = await unreachableReason();
    if (unreachable !== undefined) throw new Error(`these tests need PostgreSQL at ${ADMIN_URL}: ${unreachable}`);
    await db.create();
  });
  after(() => db.drop());

  it('stops at start-up without worker_self_reference_url, naming the option, instead of serving on sqlite', async (t) => {
    const { dir, cacheDir, config } = setUp(t, ['[database]', `connection = ${db.url}`]);
    const { code, stderr } = await serveUntilExit(t, config, dir);
    assert.notEqual(code, 0, 'serve exited with success');
    assert.match(stderr, /worker_self_reference_url is not set/);
    assertNoSqliteCache(cacheDir);
  });

  it('with workers = 2, stops at start-up too (each worker says why), instead of restarting the workers forever', async (t) => {
    const { dir, cacheDir, config } = setUp(t, ['workers = 2', '[database]', `connection = ${db.url}`]);
    const { code, stderr } = await serveUntilExit(t, config, dir);
    assert.notEqual(code, 0, 'serve exited with success');
    assert.match(stderr, /worker_self_reference_url is not set/);
    assert.match(stderr, /a worker failed to start/);
    assertNoSqliteCache(cacheDir);
  });

  it('stops at start-up when [database] connection cannot be reached, naming the option', async (t) => {
    const { dir, cacheDir, config } = setUp(t, ['worker_self_reference_url = http://node-a:9292', '[database]', 'connection = postgresql://postgres:s3cret@127.0.0.1:1/glance']);
    const { code, stderr } = await serveUntilExit(t, config, dir);
    assert.notEqual(code, 0, 'serve exited with success');
    assert.match(stderr, /cannot connect to PostgreSQL at postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/glance/);
    assert.match(stderr, /database_connection \(\[database\] connection/);
    assert.equal(stderr.includes('s3cret'), false, 'the password is not printed');
    assertNoSqliteCache(cacheDir);
  });

  it('stops at start-up when [database] connection is not a PostgreSQL URL, naming the option', async (t) => {
    const { dir, cacheDir, config } = setUp(t, ['worker_self_reference_url = http://node-a:9292', '[database]', 'connection = mysql+pymysql://glance:secret@db/glance']);
    const { code, stderr } = await serveUntilExit(t, config, dir);
    assert.notEqual(code, 0, 'serve exited with success');
    assert.match(stderr, /database_connection must be a PostgreSQL URL/);
    assertNoSqliteCache(cacheDir);
  });

  it('serves when it can be configured (the same files, with the node\'s URL and a reachable database)', async (t) => {
    const { dir, cacheDir, config } = setUp(t, ['worker_self_reference_url = http://node-a:9292', '[database]', `connection = ${db.url}`]);
    const { url } = await startServe(t, ['--config-file', config], dir);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
    assertNoSqliteCache(cacheDir);
  });
});
