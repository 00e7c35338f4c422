/** The image-cache command, run as a real process against a real cache directory. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeDir } from '../helpers.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

function cli(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, IMAGE_CACHE_DIR: '', ...env } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function tempDir(t: TestContext): string {
  const dir = makeTempDir('image-cache-cli-');
  t.after(() => removeDir(dir));
  return dir;
}

describe('image-cache command line', () => {
  it('cache-file caches a local file and list-cached --json lists it in Glance\'s wire shape', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const file = path.join(root, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(3000, 7));
    const cached = cli(['cache-file', 'img-1', file, '--image-cache-dir', cacheDir]);
    assert.equal(cached.status, 0, cached.stderr);
    assert.match(cached.stdout, /Cached image img-1 \(3000 bytes\)/);
    assert.ok(fs.readFileSync(path.join(cacheDir, 'img-1')).equals(fs.readFileSync(file)));
    const listed = cli(['list-cached', '--json', '--image-cache-dir', cacheDir]);
    assert.equal(listed.status, 0, listed.stderr);
    const images = JSON.parse(listed.stdout) as Array<Record<string, unknown>>;
    assert.equal(images.length, 1);
    assert.deepEqual(Object.keys(images[0]!).sort(), ['hits', 'image_id', 'last_accessed', 'last_modified', 'size']);
    assert.equal(images[0]!.image_id, 'img-1');
    assert.equal(images[0]!.size, 3000);
  });

  it('cache-file with a wrong checksum fails with the error code and caches nothing', (t) => {
    const root = tempDir(t);
    const file = path.join(root, 'disk.img');
    fs.writeFileSync(file, 'data');
    const result = cli(['cache-file', 'img-1', file, '--checksum', '0'.repeat(32), '--image-cache-dir', path.join(root, 'cache')]);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /ERR_CHECKSUM_MISMATCH/);
    assert.equal(fs.existsSync(path.join(root, 'cache', 'img-1')), false);
  });

  it('queue then prefetch caches queued images from a local image directory, showing progress, and keeps the missing one queued', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const store = path.join(root, 'images');
    fs.mkdirSync(store);
    fs.writeFileSync(path.join(store, 'present'), 'image bytes');
    assert.equal(cli(['queue', 'present', 'missing', '--image-cache-dir', cacheDir]).status, 0);
    const result = cli(['prefetch', '--filesystem-store-datadir', store, '--image-cache-dir', cacheDir]);
    assert.equal(result.status, 1, 'one queued image could not be prefetched');
    // Queue order is mtime, then ID: the two markers may share an mtime, so either may come first.
    assert.match(result.stderr, /\[[12]\/2\] present: cached \(11 bytes\)/);
    assert.match(result.stderr, /\[[12]\/2\] missing: not in .*; left queued/);
    assert.equal(fs.readFileSync(path.join(cacheDir, 'present'), 'utf8'), 'image bytes');
    const queued = cli(['list-queued', '--json', '--image-cache-dir', cacheDir]);
    assert.deepEqual(JSON.parse(queued.stdout), ['missing']);
  });

  it('reads image_cache_dir and image_cache_max_size from a glance-api.conf [DEFAULT] section; flags override it', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'from-conf');
    const conf = path.join(root, 'glance-api.conf');
    fs.writeFileSync(conf, `[DEFAULT]\nimage_cache_dir = ${cacheDir}\nimage_cache_max_size = 100\n[database]\nconnection = sqlite:///glance.sqlite\nimage_cache_dir = /nowhere\n`);
    for (const id of ['a', 'b']) {
      fs.writeFileSync(path.join(root, id), Buffer.alloc(80));
      assert.equal(cli(['cache-file', id, path.join(root, id), '--config-file', conf]).status, 0);
    }
    const pruned = cli(['prune', '--json', '--config-file', conf]);
    assert.equal(pruned.status, 0, pruned.stderr);
    assert.deepEqual(JSON.parse(pruned.stdout), { total_files_pruned: 1, total_bytes_pruned: 80 });
    const none = cli(['prune', '--json', '--config-file', conf, '--image-cache-max-size', '1000']);
    assert.deepEqual(JSON.parse(none.stdout), { total_files_pruned: 0, total_bytes_pruned: 0 });
  });

  it('rejects a bad image ID with its error code, touching nothing outside the cache', (t) => {
    const root = tempDir(t);
    const result = cli(['queue', '../escape', '--image-cache-dir', path.join(root, 'cache')]);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /ERR_INVALID_IMAGE_ID/);
    assert.equal(fs.existsSync(path.join(root, 'escape')), false);
  });

  it('without a cache directory, or with a bad command, flag or arguments, says so, exits non-zero and creates nothing', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const noDir = cli(['list-cached']);
    assert.equal(noDir.status, 1);
    assert.match(noDir.stderr, /image_cache_dir.*required/);
    assert.equal(cli(['no-such-command']).status, 2);
    assert.equal(cli(['list-cached', '--no-such-flag', '--image-cache-dir', cacheDir]).status, 2);
    const noTarget = cli(['delete-cached', '--image-cache-dir', cacheDir]);
    assert.equal(noTarget.status, 2);
    assert.match(noTarget.stderr, /either an IMAGE_ID or --all/);
    assert.equal(cli(['delete-queued', 'x', '--all', '--image-cache-dir', cacheDir]).status, 2);
    assert.equal(cli(['clean', '--stall-time', '-1', '--image-cache-dir', cacheDir]).status, 2);
    assert.equal(cli(['prefetch', '--image-cache-dir', cacheDir]).status, 2);
    assert.equal(cli(['cache-file', 'only-an-id', '--image-cache-dir', cacheDir]).status, 2);
    // Usage is checked before the cache is opened: no directory, no cache.db.
    assert.deepEqual(fs.readdirSync(root), []);
  });

  it('verify repairs what disagrees and says what it did; clean runs it too; queue says why an image was not queued', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const file = path.join(root, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(100, 1));
    assert.equal(cli(['cache-file', 'img-1', file, '--image-cache-dir', cacheDir]).status, 0);
    fs.writeFileSync(path.join(cacheDir, 'copied-in'), Buffer.alloc(10));
    fs.unlinkSync(path.join(cacheDir, 'img-1'));
    const verified = cli(['verify', '--json', '--image-cache-dir', cacheDir]);
    assert.equal(verified.status, 0, verified.stderr);
    assert.deepEqual(JSON.parse(verified.stdout), { recordsDropped: 1, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
    fs.writeFileSync(path.join(cacheDir, 'invalid', 'broken'), 'x');
    const cleaned = cli(['clean', '--image-cache-dir', cacheDir]);
    assert.equal(cleaned.status, 0, cleaned.stderr);
    assert.match(cleaned.stdout, /Removed 1 invalid and 0 stalled files\.\nVerified: dropped 0 records without files, adopted 0 files without records/);
    const queued = cli(['queue', 'copied-in', 'new-one', '--image-cache-dir', cacheDir]);
    assert.equal(queued.status, 0, queued.stderr);
    assert.equal(queued.stdout, 'Not queued copied-in: already cached.\nQueued new-one.\n');
  });
});
