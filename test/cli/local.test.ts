/**
 * The cache management and maintenance commands with --local: real child
 * processes on a real cache directory, their text and their --json.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { CLI, ISO_TIME, ok, runCli, seedCache, tempDir, writeStore } from './helpers.js';

describe('image-cache --local', () => {
  it('queue-image, then prefetch from the local image store, with one line per image off a terminal; the missing image stays queued (exit 1)', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const store = path.join(root, 'images');
    writeStore(store, { present: 'image bytes', big: Buffer.alloc(3 * 1024 * 1024, 1) });
    const queued = await runCli(['queue-image', 'present', 'missing', 'big', '--local', '--image-cache-dir', cacheDir]);
    assert.equal(queued.status, 0, queued.stderr);
    assert.equal(queued.stdout, 'Queued present.\nQueued missing.\nQueued big.\n');
    const again = await runCli(['queue-image', 'present', '--local', '--json', '--image-cache-dir', cacheDir]);
    assert.deepEqual(JSON.parse(again.stdout), { queued_images: [], not_queued_images: { present: 'being cached or queued already' } });

    const result = await runCli(['prefetch', '--local', '--filesystem-store-datadir', store, '--image-cache-dir', cacheDir]);
    assert.equal(result.status, 1, 'one queued image could not be prefetched');
    assert.equal(result.stdout, 'Prefetched 2 of 3 queued images.\n');
    // Queue order is mtime, then ID: the markers may share an mtime, so any order.
    assert.match(result.stderr, /^\[[123]\/3\] present: cached \(11 B\)$/m);
    assert.match(result.stderr, /^\[[123]\/3\] big: cached \(3\.0 MiB\)$/m);
    assert.match(result.stderr, /^\[[123]\/3\] missing: not in .*images; left queued$/m);
    assert.doesNotMatch(result.stderr, /\x1b/, 'no terminal control codes off a terminal');
    assert.equal(fs.readFileSync(path.join(cacheDir, 'present'), 'utf8'), 'image bytes');
    assert.deepEqual(JSON.parse(await ok(['list-queued', '--local', '--json', '--image-cache-dir', cacheDir])), { queued_images: ['missing'] });

    const json = await runCli(['prefetch', '--local', '--json', '--filesystem-store-datadir', store, '--image-cache-dir', cacheDir]);
    assert.equal(json.status, 1);
    assert.deepEqual(JSON.parse(json.stdout), { cached_images: [], not_cached_images: { missing: `not in ${store}; left queued` } });
  });

  it('list-cached: a table with ISO-8601 UTC times and binary sizes, and --json in Glance\'s wire shape with raw numbers', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    await seedCache(cacheDir, path.join(root, 'images'), { 'img-1': Buffer.alloc(1536), 'img-2': Buffer.alloc(5 * 1024 * 1024) });
    const text = await ok(['list-cached', '--local', '--image-cache-dir', cacheDir]);
    const lines = text.trimEnd().split('\n');
    assert.match(lines[0]!, /^ID\s+Last Accessed \(UTC\)\s+Last Modified \(UTC\)\s+Size\s+Hits$/);
    assert.match(lines[1]!, /^-+( +-+){4}$/);
    const rows = lines.slice(2, 4).sort();
    assert.match(rows[0]!, new RegExp(`^img-1\\s+${ISO_TIME.source}\\s+${ISO_TIME.source}\\s+1\\.5 KiB\\s+0$`));
    assert.match(rows[1]!, new RegExp(`^img-2\\s+${ISO_TIME.source}\\s+${ISO_TIME.source}\\s+5\\.0 MiB\\s+0$`));
    assert.equal(lines[4], '2 images, 5.0 MiB');

    const listing = JSON.parse(await ok(['list-cached', '--local', '--json', '--image-cache-dir', cacheDir])) as { cached_images: Array<Record<string, unknown>> };
    assert.deepEqual(Object.keys(listing), ['cached_images']);
    const images = listing.cached_images.sort((a, b) => String(a.image_id).localeCompare(String(b.image_id)));
    assert.deepEqual(images.map((image) => Object.keys(image).sort()), Array(2).fill(['hits', 'image_id', 'last_accessed', 'last_modified', 'size']));
    assert.deepEqual(images.map((image) => [image.image_id, image.size, image.hits]), [['img-1', 1536, 0], ['img-2', 5 * 1024 * 1024, 0]]);
    assert.ok(typeof images[0]!.last_modified === 'number' && Math.abs((images[0]!.last_modified as number) - Date.now() / 1000) < 600, 'epoch seconds');

    const empty = tempDir(t);
    assert.equal(await ok(['list-cached', '--local', '--image-cache-dir', empty]), 'No cached images.\n');
    assert.equal(await ok(['list-queued', '--local', '--image-cache-dir', empty]), 'No queued images.\n');
    assert.deepEqual(JSON.parse(await ok(['list-cached', '--local', '--json', '--image-cache-dir', empty])), { cached_images: [] });
  });

  it('list-queued lists the queue as a table; delete-queued-image and delete-cached-image remove only what they name, and say when there is nothing to do', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const local = ['--local', '--image-cache-dir', cacheDir];
    await seedCache(cacheDir, path.join(root, 'images'), { cached: 'bytes' });
    await ok(['queue-image', 'waiting', ...local]);
    assert.equal(await ok(['list-queued', ...local]), 'ID\n-------\nwaiting\n1 image\n');

    assert.equal(await ok(['delete-queued-image', 'cached', ...local]), 'Nothing deleted: it is cached, not queued (delete-cached-image removes it).\n');
    assert.equal(await ok(['delete-cached-image', 'waiting', ...local]), 'Nothing deleted: it is queued, not cached (delete-queued-image removes it).\n');
    assert.deepEqual(JSON.parse(await ok(['delete-cached-image', 'nobody', '--json', ...local])), { image_id: 'nobody', deleted: false, reason: 'it is not cached' });
    assert.ok(fs.existsSync(path.join(cacheDir, 'cached')));

    assert.equal(await ok(['delete-queued-image', 'waiting', ...local]), 'Deleted queued image waiting.\n');
    assert.deepEqual(JSON.parse(await ok(['delete-cached-image', 'cached', '--json', ...local])), { image_id: 'cached', deleted: true });
    assert.equal(fs.existsSync(path.join(cacheDir, 'cached')), false);
    assert.deepEqual(JSON.parse(await ok(['list-cached', '--json', ...local])), { cached_images: [] });
    assert.deepEqual(JSON.parse(await ok(['list-queued', '--json', ...local])), { queued_images: [] });
  });

  it('delete-all-cached-images and delete-all-queued-images empty the cache and the queue, one progress line per image off a terminal', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const local = ['--local', '--image-cache-dir', cacheDir];
    await seedCache(cacheDir, path.join(root, 'images'), { a: 'a', b: 'bb', c: 'ccc' });
    await ok(['queue-image', 'q1', 'q2', ...local]);
    const cached = await runCli(['delete-all-cached-images', ...local]);
    assert.equal(cached.status, 0, cached.stderr);
    assert.equal(cached.stdout, 'Deleted 3 cached images.\n');
    assert.deepEqual(cached.stderr.trimEnd().split('\n').map((line) => line.replace(/ .*/, '')), ['[1/3]', '[2/3]', '[3/3]']);
    assert.deepEqual(JSON.parse(await ok(['list-cached', '--json', ...local])), { cached_images: [] });
    assert.deepEqual(JSON.parse(await ok(['list-queued', '--json', ...local])), { queued_images: ['q1', 'q2'] }, 'the queue is another list');
    assert.deepEqual(JSON.parse(await ok(['delete-all-queued-images', '--json', ...local])), { deleted: 2 });
    assert.deepEqual(JSON.parse(await ok(['list-queued', '--json', ...local])), { queued_images: [] });
    assert.deepEqual(JSON.parse(await ok(['delete-all-cached-images', '--json', ...local])), { deleted: 0 });
  });

  it('prune reads image_cache_dir and image_cache_max_size from the config file, then IMAGE_CACHE_* variables, then flags', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'from-conf');
    const conf = path.join(root, 'glance-api.conf');
    fs.writeFileSync(conf, `[DEFAULT]\nimage_cache_dir = ${cacheDir}\nimage_cache_max_size = 100\n[database]\nconnection = sqlite:///glance.sqlite\nimage_cache_dir = /nowhere\n`);
    await seedCache(cacheDir, path.join(root, 'images'), { a: Buffer.alloc(80), b: Buffer.alloc(80) });
    const none = await ok(['prune', '--json', '--config-file', conf], { env: { IMAGE_CACHE_MAX_SIZE: '1000' } });
    assert.deepEqual(JSON.parse(none), { total_files_pruned: 0, total_bytes_pruned: 0 }, 'the environment over the file');
    const flagWins = await ok(['prune', '--json', '--config-file', conf, '--image-cache-max-size', '100'], { env: { IMAGE_CACHE_MAX_SIZE: '1000' } });
    assert.deepEqual(JSON.parse(flagWins), { total_files_pruned: 1, total_bytes_pruned: 80 }, 'the flag over the environment');
    assert.equal(await ok(['prune', '--config-file', conf, '--image-cache-max-size', '0']), 'Pruned 1 image (80 B).\n');
  });

  it('verify repairs what disagrees and says what it did; clean runs it too', async (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    await seedCache(cacheDir, path.join(root, 'images'), { 'img-1': Buffer.alloc(100, 1) });
    fs.writeFileSync(path.join(cacheDir, 'copied-in'), Buffer.alloc(10));
    fs.unlinkSync(path.join(cacheDir, 'img-1'));
    const verified = await ok(['verify', '--json', '--image-cache-dir', cacheDir]);
    assert.deepEqual(JSON.parse(verified), { recordsDropped: 1, filesAdopted: 1, sizesCorrected: 0, queueMarkersDropped: 0 });
    fs.writeFileSync(path.join(cacheDir, 'invalid', 'broken'), 'x');
    const cleaned = await ok(['clean', '--image-cache-dir', cacheDir]);
    assert.match(cleaned, /^Removed 1 invalid and 0 stalled files\.\nVerified: dropped 0 records without files, adopted 0 files without records/);
    const queued = await ok(['queue-image', 'copied-in', 'new-one', '--local', '--image-cache-dir', cacheDir]);
    assert.equal(queued, 'Not queued copied-in: already cached.\nQueued new-one.\n');
    assert.deepEqual(JSON.parse(await ok(['clean', '--json', '--stall-time', '0', '--image-cache-dir', cacheDir])), { invalid: 0, stalled: 0, recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 });
  });

  it('on a terminal, prefetch draws one progress bar in place and prints problems above it', (t) => {
    // script(1) (util-linux, on every Debian machine) is the terminal the command runs on.
    assert.equal(spawnSync('script', ['--version'], { encoding: 'utf8' }).status, 0, 'script(1) from util-linux is needed');
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const store = path.join(root, 'images');
    writeStore(store, { one: '1', two: '22' });
    const env = { ...process.env, IMAGE_CACHE_DIR: cacheDir, IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: store, OS_AUTH_TOKEN: '' };
    assert.equal(spawnSync(process.execPath, [CLI, 'queue-image', 'one', 'two', 'gone', '--local'], { env }).status, 0);
    // script(1) gives the command a pseudo-terminal: stdout and stderr are a TTY, both captured in its output.
    const run = spawnSync('script', ['-qec', `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} prefetch --local`, '/dev/null'], { env, encoding: 'utf8' });
    assert.equal(run.status, 1, run.stdout);
    assert.match(run.stdout, /\r\x1b\[Kprefetch \[#+-*\] 2\/3/);
    assert.match(run.stdout, /\r\x1b\[Kgone: not in .*; left queued\r?\n/);
    assert.match(run.stdout, /\r\x1b\[Kprefetch \[#+\] 3\/3/);
    assert.doesNotMatch(run.stdout, /\[\d\/3\] /, 'no plain progress lines on a terminal');
    assert.match(run.stdout, /Prefetched 2 of 3 queued images\./);
  });
});
