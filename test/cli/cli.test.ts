/** The image-cache command, run as a real process against a real cache directory. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { hexDigest, listTree, makeTempDir, removeDir } from '../helpers.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** Runs the command to its end; settings this machine's environment may hold are blanked unless `env` gives them. */
function cli(args: string[], { env = {}, cwd }: { env?: Record<string, string>; cwd?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd, env: { ...process.env, IMAGE_CACHE_DIR: '', IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: '', ...env } });
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

  it('import copies a file into the local image store, without an image cache, and prints the new image\'s ID', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    const file = path.join(root, 'disk.img');
    const data = Buffer.alloc(5000, 3);
    fs.writeFileSync(file, data);
    const imported = cli(['import', file, '--filesystem-store-datadir', store]);
    assert.equal(imported.status, 0, imported.stderr);
    const id = imported.stdout.trim();
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(imported.stdout, `${id}\n`);
    assert.ok(fs.readFileSync(path.join(store, id)).equals(data));
    const document = JSON.parse(fs.readFileSync(path.join(store, '+metadata', `${id}.json`), 'utf8')) as Record<string, unknown>;
    assert.equal(document.size, 5000);
    assert.equal(document.name, 'disk.img');
    assert.deepEqual(listTree(root), ['disk.img', 'images/', 'images/+metadata/', `images/+metadata/${id}.json`, 'images/+tmp/', `images/${id}`].sort());
  });

  it('import --id --name --json prints the whole image document; importing that ID again fails with ERR_IMAGE_EXISTS', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    const file = path.join(root, 'disk.img');
    const data = Buffer.from('image bytes');
    fs.writeFileSync(file, data);
    const imported = cli(['import', file, '--id', 'cirros-1', '--name', 'CirrOS', '--json', '--filesystem-store-datadir', store]);
    assert.equal(imported.status, 0, imported.stderr);
    const document = JSON.parse(imported.stdout) as Record<string, unknown>;
    assert.deepEqual(document, JSON.parse(fs.readFileSync(path.join(store, '+metadata', 'cirros-1.json'), 'utf8')));
    assert.equal(document.id, 'cirros-1');
    assert.equal(document.name, 'CirrOS');
    assert.equal(document.status, 'active');
    assert.equal(document.checksum, hexDigest('md5', data));
    assert.equal(document.os_hash_value, hexDigest('sha512', data));
    const again = cli(['import', file, '--id', 'cirros-1', '--filesystem-store-datadir', store]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /ERR_IMAGE_EXISTS/);
    assert.equal(again.stdout, '');
  });

  it('import finds the store in the flag, then IMAGE_CACHE_FILESYSTEM_STORE_DATADIR, then the config file ([glance_store] over [DEFAULT]), then ./var/images', (t) => {
    const root = tempDir(t);
    const file = path.join(root, 'disk.img');
    fs.writeFileSync(file, 'bytes');
    const conf = path.join(root, 'glance-api.conf');
    fs.writeFileSync(conf, `[DEFAULT]\nfilesystem_store_datadir = ${path.join(root, 'default-section')}\n[glance_store]\nfilesystem_store_datadir = ${path.join(root, 'glance-store-section')}\n`);
    const defaultOnly = path.join(root, 'default-only.conf');
    fs.writeFileSync(defaultOnly, `[DEFAULT]\nfilesystem_store_datadir = ${path.join(root, 'default-section')}\n`);
    const env = { IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: path.join(root, 'from-env') };
    const cases: Array<[string[], Record<string, string>, string]> = [
      [['--filesystem-store-datadir', path.join(root, 'from-flag'), '--config-file', conf], env, 'from-flag'],
      [['--config-file', conf], env, 'from-env'],
      [['--config-file', conf], {}, 'glance-store-section'],
      [['--config-file', defaultOnly], {}, 'default-section'],
      [[], {}, path.join('var', 'images')],
    ];
    for (const [flags, caseEnv, where] of cases) {
      const imported = cli(['import', file, '--id', 'img', ...flags], { env: caseEnv, cwd: root });
      assert.equal(imported.status, 0, imported.stderr);
      assert.equal(fs.readFileSync(path.join(root, where, 'img'), 'utf8'), 'bytes', where);
    }
  });

  it('import without FILE, with a FILE it cannot read or with a bad --id exits 2 and creates nothing', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    fs.mkdirSync(path.join(root, 'a-directory'));
    fs.writeFileSync(path.join(root, 'disk.img'), 'bytes');
    const before = listTree(root);
    const usageErrors: Array<[string[], RegExp]> = [
      [[], /wrong number of arguments/],
      [[path.join(root, 'missing.img')], /cannot read .*missing\.img/],
      [[path.join(root, 'a-directory')], /not a regular file/],
      [[path.join(root, 'disk.img'), '--id', '../escape'], /not a valid image ID/],
      [[path.join(root, 'disk.img'), '--id', 'a/b'], /not a valid image ID/],
      [[path.join(root, 'disk.img'), 'extra'], /wrong number of arguments/],
    ];
    for (const [args, message] of usageErrors) {
      // Both the named store and the default one (./var/images) would show up in the tree.
      for (const storeFlags of [['--filesystem-store-datadir', store], []]) {
        const result = cli(['import', ...args, ...storeFlags], { cwd: root });
        assert.equal(result.status, 2, `${args.join(' ')}: ${result.stderr}`);
        assert.match(result.stderr, message);
        assert.match(result.stderr, /usage: image-cache import FILE/);
      }
    }
    assert.deepEqual(listTree(root), before);
  });

  it('lists import in the usage text', () => {
    const help = cli(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.stderr, /import FILE \[--id ID\] \[--name NAME\] \[--filesystem-store-datadir DIR\] \[--json\]/);
    assert.match(help.stderr, /IMAGE_CACHE_FILESYSTEM_STORE_DATADIR/);
  });
});
