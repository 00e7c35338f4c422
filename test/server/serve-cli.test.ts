/**
 * `image-cache serve` as a real process: its configuration (file,
 * environment, flags), the embedded default, shutdown, and workers = 2
 * sharing one cache directory with one upstream fetch per image.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { describe, it, type TestContext } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { CLEAN_ENV, CLI, download, fetchAll, metric, startServe, until } from './helpers.js';

function tempDir(t: TestContext): string {
  const dir = makeTempDir('image-cache-serve-');
  t.after(() => removeDir(dir));
  return dir;
}

function writeConfig(dir: string, lines: string[]): string {
  const file = path.join(dir, 'glance-api.conf');
  fs.writeFileSync(file, lines.join('\n'));
  return file;
}

describe('image-cache serve', () => {
  it('serves the embedded default: the local image directory and the sqlite cache under ./var (miss, then hit)', async (t) => {
    const cwd = tempDir(t);
    const data = imageBytes(1024 * 1024);
    fs.writeFileSync(path.join(cwd, 'disk.img'), data);
    const imported = spawnSync(process.execPath, [CLI, 'import', 'disk.img', '--name', 'disk'], { cwd, env: CLEAN_ENV, encoding: 'utf8' });
    assert.equal(imported.status, 0, imported.stderr);
    const id = imported.stdout.trim();
    const { url, child } = await startServe(t, ['--bind-port', '0'], cwd);
    for (let i = 0; i < 2; i++) {
      const response = await fetchAll(`${url}/v2/images/${id}/file`);
      assert.equal(response.status, 200);
      assert.ok(response.body.equals(data));
    }
    assert.equal(await metric(url, 'image_cache_hit_responses_total'), 1);
    assert.ok(fs.existsSync(path.join(cwd, 'var', 'cache', id)));
    assert.ok(fs.existsSync(path.join(cwd, 'var', 'cache', 'cache.db')), 'the sqlite driver');
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, 'a clean stop on SIGTERM');
  });

  it('reads glance-api.conf\'s [DEFAULT], ignores Glance\'s options it does not use, and lets flags win', async (t) => {
    const dir = tempDir(t);
    const config = writeConfig(dir, [
      '[DEFAULT]', 'debug = false', 'bind_host = 127.0.0.1', 'bind_port = 1', `image_cache_dir = ${path.join(dir, 'from-file')}`, 'show_image_direct_url = True',
      '[keystone_authtoken]', 'auth_url = http://keystone.invalid/v3', '[paste_deploy]', 'flavor = keystone+cachemanagement',
    ]);
    const { url } = await startServe(t, ['--config-file', config, '--bind-port', '0'], dir);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
    assert.ok(fs.existsSync(path.join(dir, 'from-file', 'cache.db')));
  });

  for (const [line, option] of [['bind_port = ninety', 'bind_port'], ['workers = -2', 'workers'], ['upstream_url = ftp://glance', 'upstream_url'], ['image_cache_driver = redis', 'image_cache_driver'], ['image_cache_max_size = lots', 'image_cache_max_size'], ['auth_strategy = maybe', 'auth_strategy']]) {
    it(`stops at start-up on an invalid ${option}, naming the option and the file, before creating anything`, (t) => {
      const dir = tempDir(t);
      const config = writeConfig(dir, ['[DEFAULT]', `image_cache_dir = ${path.join(dir, 'cache')}`, line!]);
      const result = spawnSync(process.execPath, [CLI, 'serve', '--config-file', config], { cwd: dir, env: CLEAN_ENV, encoding: 'utf8' });
      assert.equal(result.status, 2);
      assert.ok(result.stderr.includes(option!), result.stderr);
      assert.ok(result.stderr.includes(config), result.stderr);
      assert.equal(fs.existsSync(path.join(dir, 'cache')), false);
    });
  }

  it('names the environment variable or the flag that holds an invalid value', (t) => {
    const dir = tempDir(t);
    const fromEnv = spawnSync(process.execPath, [CLI, 'serve'], { cwd: dir, env: { ...CLEAN_ENV, IMAGE_CACHE_BIND_PORT: '99999' }, encoding: 'utf8' });
    assert.equal(fromEnv.status, 2);
    assert.match(fromEnv.stderr, /bind_port \(environment variable IMAGE_CACHE_BIND_PORT\)/);
    const fromFlag = spawnSync(process.execPath, [CLI, 'serve', '--upstream-timeout', '0'], { cwd: dir, env: CLEAN_ENV, encoding: 'utf8' });
    assert.equal(fromFlag.status, 2);
    assert.match(fromFlag.stderr, /upstream_timeout \(flag --upstream-timeout\)/);
  });

  it('with workers = 2, concurrent first downloads across both processes fetch the image once', async (t) => {
    const dir = tempDir(t);
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const data = imageBytes(16 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const config = writeConfig(dir, ['[DEFAULT]', 'bind_port = 0', 'workers = 2', `image_cache_dir = ${path.join(dir, 'cache')}`, `upstream_url = ${fake.url}`]);
    const { url } = await startServe(t, ['--config-file', config], dir);
    const held = fake.hold(image.id);
    // Separate connections: the primary hands them to the workers in turn.
    const downloads = Array.from({ length: 10 }, () => download(`${url}/v2/images/${image.id}/file`, { connection: 'close' }));
    await held.waiting;
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 9, 'nine followers across the workers');
    held.release();
    for (const result of await Promise.all(downloads)) {
      assert.ok(result.ok, result.ok ? '' : result.error.message);
      assert.ok(result.response.body.equals(data));
    }
    assert.equal(fake.fileRequests(image.id), 1);
    assert.equal(await metric(url, 'image_cache_upstream_fetches_total{outcome="committed"}'), 1);
    assert.equal(await metric(url, 'image_cache_miss_responses_total'), 10);
  });
});
