/**
 * The xattr driver: the conformance suite, then what only xattr does — the
 * attributes on the files in Glance's format (both ways, checked by Python
 * and by Glance's own xattr driver), files without attributes, and a file
 * system that refuses user attributes (a real ramfs mount, not a mock).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { getAttributeSync, setAttributeSync } from '@napi-rs/xattr';
import { ImageCache, resolveOptions, silentLogger, type ImageCacheOptions } from '../../src/index.js';
import { TEST_ENGINE, collect, makeTempDir, patternedBytes, readAll, removeDir, tempRoot, waitForClose } from '../helpers.js';
import { runConformanceSuite } from './conformance.js';

runConformanceSuite('xattr', () => ({}), { cachedNodes: false, records: false });

const INVALID_IMAGE_ID = { code: 'ERR_INVALID_IMAGE_ID' };


async function createCache(dir: string, more: Partial<ImageCacheOptions> = {}): Promise<ImageCache> {
  const cache = await ImageCache.create({ imageCacheDir: dir, imageCacheDriver: 'xattr', imageCacheMaxSize: 5 * 1024, logger: silentLogger, ...more }, TEST_ENGINE);
  if (more.imageCacheDriver === undefined) assert.equal(cache.driver.name, 'xattr', 'ImageCache.create fell back from xattr');
  return cache;
}

async function put(cache: ImageCache, imageId: string, data: Buffer): Promise<void> {
  assert.equal(await cache.cacheImageFile(imageId, (async function* () { yield data; })()), true, `caching ${imageId}`);
}


function attribute(file: string, name: string): string | undefined {
  return getAttributeSync(file, name)?.toString('utf8');
}

/** An active file written the way Glance's xattr driver leaves it: user.hits as str(int), no user.last_accessed. */
function writeGlanceFile(file: string, data: Buffer, hits: number | undefined, atime: number, mtime: number): void {
  fs.writeFileSync(file, data);
  if (hits !== undefined) setAttributeSync(file, 'user.hits', Buffer.from(String(hits), 'utf8'));
  fs.utimesSync(file, atime, mtime);
}

describe('xattr driver', () => {
  it('keeps hits in user.hits as str(int) and the last access in user.last_accessed, on the active file', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    const before = Date.now() / 1000;
    await put(cache, 'img-1', patternedBytes(1000));
    const file = path.join(dir, 'img-1');
    assert.equal(attribute(file, 'user.hits'), '0');
    const committedAt = Number(attribute(file, 'user.last_accessed'));
    assert.ok(committedAt >= before - 1 && committedAt <= Date.now() / 1000 + 1, `user.last_accessed ${committedAt} is not epoch seconds of now`);

    await readAll(cache, 'img-1');
    await readAll(cache, 'img-1');
    const [image] = await cache.getCachedImages();
    assert.equal(attribute(file, 'user.hits'), '2');
    const readAt = Number(attribute(file, 'user.last_accessed'));
    assert.ok(readAt > committedAt, 'reading did not move user.last_accessed forward');
    const st = fs.statSync(file);
    assert.deepEqual(image, { imageId: 'img-1', hits: 2, lastAccessed: readAt, lastModified: st.mtimeMs / 1000, size: 1000 });

    // No database and nothing else: Glance's xattr driver takes every regular file in the directory for an image.
    assert.deepEqual(fs.readdirSync(dir).sort(), ['img-1', 'incomplete', 'invalid', 'queue']);
  });

  it('lists a file Glance wrote (user.hits only) with its hits and atime as last access, orders and prunes it by atime, and counts its reads on', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir, { imageCacheMaxSize: 2048 }));
    await put(cache, 'ours', Buffer.alloc(1024, 'o'));
    const glanceOld = 'a1b2c3d4-0000-4000-8000-00000000000a';
    const glanceNew = 'a1b2c3d4-0000-4000-8000-00000000000b';
    const bare = 'a1b2c3d4-0000-4000-8000-00000000000c';
    const now = Math.floor(Date.now() / 1000);
    writeGlanceFile(path.join(dir, glanceOld), Buffer.alloc(1024, 'a'), 7, 1_700_000_000.5, 1_699_000_000.25);
    writeGlanceFile(path.join(dir, glanceNew), Buffer.alloc(1024, 'b'), 3, now + 3600, 1_699_000_001.5);
    // A file with no attributes at all (Glance could not set them, an operator copied it in) still counts.
    writeGlanceFile(path.join(dir, bare), Buffer.alloc(512, 'c'), undefined, 1_700_000_100.25, 1_699_000_002);

    assert.deepEqual((await cache.getCachedImages()).filter((i) => i.imageId !== 'ours'), [
      { imageId: glanceOld, hits: 7, lastAccessed: 1_700_000_000.5, lastModified: 1_699_000_000.25, size: 1024 },
      { imageId: glanceNew, hits: 3, lastAccessed: now + 3600, lastModified: 1_699_000_001.5, size: 1024 },
      { imageId: bare, hits: 0, lastAccessed: 1_700_000_100.25, lastModified: 1_699_000_002, size: 512 },
    ]);
    assert.equal(await cache.getHitCount(glanceOld), 7);
    assert.equal(await cache.getHitCount(bare), 0);
    assert.equal(await cache.getCacheSize(), 3584);
    // Ours was accessed now; glanceNew's atime is an hour ahead.
    assert.deepEqual((await cache.listLeastRecentlyAccessed()).map((e) => e.imageId), [glanceOld, bare, 'ours', glanceNew]);

    // 3.5 KiB down to 2 KiB: the two with the oldest atimes go, whatever their hits.
    assert.deepEqual(await cache.prune(), { totalFilesPruned: 2, totalBytesPruned: 1536 });
    assert.deepEqual((await cache.getCachedImages()).map((i) => i.imageId), [glanceNew, 'ours']);

    // Reading a Glance file counts on from Glance's count and gives it our attribute.
    await readAll(cache, glanceNew);
    assert.equal(await cache.getHitCount(glanceNew), 4);
    assert.equal(attribute(path.join(dir, glanceNew), 'user.hits'), '4');
    const lastAccessed = Number(attribute(path.join(dir, glanceNew), 'user.last_accessed'));
    assert.ok(lastAccessed > now - 60 && lastAccessed < now + 60, `user.last_accessed ${lastAccessed} is not now`);
    assert.deepEqual((await cache.listLeastRecentlyAccessed()).map((e) => e.imageId), ['ours', glanceNew]);
  });

  it('counts every one of many concurrent reads of one image', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    const data = patternedBytes(2048);
    await put(cache, '1', data);
    const streams = await Promise.all(Array.from({ length: 25 }, () => cache.openForRead('1')));
    const bodies = await Promise.all(streams.map((s) => collect(s)));
    await Promise.all(streams.map((s) => waitForClose(s)));
    for (const body of bodies) assert.deepEqual(body, data);
    assert.equal(await cache.getHitCount('1'), 25);
    assert.equal(attribute(path.join(dir, '1'), 'user.hits'), '25');
    // A second round, interleaved with queries that flush in between.
    for (let i = 0; i < 5; i++) {
      const stream = await cache.openForRead('1');
      const listed = cache.getCachedImages();
      await collect(stream);
      await waitForClose(stream);
      await listed;
    }
    assert.equal((await cache.getCachedImages())[0]!.hits, 30);
  });

  it('leaves attributes Python (and so Glance) reads with os.getxattr, and reads the counts Python writes', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    await put(cache, 'img-1', Buffer.from('one'));
    await put(cache, 'img-2', Buffer.from('two'));
    await readAll(cache, 'img-1');
    await readAll(cache, 'img-1');
    const ours = await cache.getCachedImages();
    const script = `
import json, os, sys
base = sys.argv[1]
out = {}
for name in sorted(os.listdir(base)):
    p = os.path.join(base, name)
    if os.path.isfile(p):
        out[name] = {"hits": int(os.getxattr(p, "user.hits")), "last_accessed": float(os.getxattr(p, "user.last_accessed"))}
# What Glance's inc_xattr does: read, add, write back str(int).
p = os.path.join(base, "img-2")
os.setxattr(p, "user.hits", str(int(os.getxattr(p, "user.hits")) + 5).encode("utf-8"))
print(json.dumps(out))
`;
    const python = JSON.parse(execFileSync('python3', ['-c', script, dir], { encoding: 'utf8' })) as Record<string, { hits: number; last_accessed: number }>;
    assert.deepEqual(python, Object.fromEntries(ours.map((i) => [i.imageId, { hits: i.hits, last_accessed: i.lastAccessed }])));
    assert.deepEqual(Object.values(python).map((i) => i.hits), [2, 0]);
    assert.equal(await cache.getHitCount('img-2'), 5);
    await readAll(cache, 'img-2');
    assert.equal(await cache.getHitCount('img-2'), 6);
  });

  it('interoperates with Glance\'s own xattr driver: it lists our images and counts, its reads and writes are seen by us', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    await put(cache, 'img-1', patternedBytes(1000));
    await put(cache, 'img-2', Buffer.alloc(300, 'x'));
    await readAll(cache, 'img-1');
    await readAll(cache, 'img-1');
    await cache.getCachedImages(); // flush
    // Debian's python3-glance, which this machine (and CI, the same kind of machine) has installed.
    const script = `
import json, sys
from oslo_config import cfg
from glance.image_cache.drivers import xattr
cfg.CONF(args=[], project="glance", default_config_files=[])
cfg.CONF.set_override("image_cache_dir", sys.argv[1])
driver = xattr.Driver()
driver.configure()
before = sorted((e["image_id"], e["hits"], e["size"]) for e in driver.get_cached_images())
with driver.open_for_read("img-1") as f:
    data = f.read()
with driver.open_for_write("from-glance") as f:
    f.write(b"g" * 100)
print(json.dumps({"before": before, "read": len(data), "hits": driver.get_hit_count("img-1")}))
`;
    let output: string;
    try {
      output = execFileSync('/usr/bin/python3', ['-c', script, dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? '');
      assert.fail(`running Glance's xattr driver failed (Debian's python3-glance must be installed): ${stderr.trim().split('\n').pop()}`);
    }
    const glance = JSON.parse(output) as { before: Array<[string, number, number]>; read: number; hits: number };
    assert.deepEqual(glance.before, [['img-1', 2, 1000], ['img-2', 0, 300]]);
    assert.equal(glance.read, 1000);
    assert.equal(glance.hits, 3);
    // Glance's configure() probe and its commit left nothing but the new image.
    assert.deepEqual(fs.readdirSync(dir).sort(), ['from-glance', 'img-1', 'img-2', 'incomplete', 'invalid', 'queue']);
    const images = await cache.getCachedImages();
    assert.deepEqual(images.map((i) => [i.imageId, i.hits, i.size]), [['from-glance', 0, 100], ['img-1', 3, 1000], ['img-2', 0, 300]]);
    const glanceFile = fs.statSync(path.join(dir, 'from-glance'));
    assert.equal(images[0]!.lastAccessed, glanceFile.atimeMs / 1000, 'a Glance file\'s last access is its atime');
    assert.deepEqual(await readAll(cache, 'from-glance'), Buffer.alloc(100, 'g'));
    assert.equal(await cache.getHitCount('from-glance'), 1);
  });

  it('does not take the sqlite driver\'s database, left in the directory, for an image', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-xattr-');
    const dir = path.join(root, 'cache');
    const sqlite = await createCache(dir, { imageCacheDriver: 'sqlite' });
    await put(sqlite, 'img-1', Buffer.from('one'));
    await sqlite.close();
    assert.equal(fs.existsSync(path.join(dir, 'cache.db')), true);

    const cache = track(await createCache(dir, { imageCacheMaxSize: 0 }));
    // Cached under sqlite: no attributes, so 0 hits and its atime as last access.
    assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['img-1', 0, 3]]);
    assert.equal(await cache.getCacheSize(), 3);
    await assert.rejects(cache.isCached('cache.db'), INVALID_IMAGE_ID);
    assert.deepEqual(await cache.prune(), { totalFilesPruned: 1, totalBytesPruned: 3 });
    assert.equal(await cache.deleteAllCachedImages(), 0);
    assert.equal(fs.existsSync(path.join(dir, 'cache.db')), true);
  });

  it('on a file system that refuses user attributes (ramfs), configure() throws BadDriverConfiguration naming the directory and user_xattr, and ImageCache falls back to sqlite', async (t) => {
    // One hook, so that the order is certain: caches closed, then unmounted, then removed.
    const root = makeTempDir('image-cache-xattr-');
    const mountPoint = path.join(root, 'ramfs');
    const caches: ImageCache[] = [];
    let mounted = false;
    t.after(async () => {
      for (const cache of caches) await cache.close();
      if (mounted) {
        // A plain umount: it fails (and so does the test) if a failed configure() kept the directory open.
        execFileSync('umount', [mountPoint], { stdio: ['ignore', 'pipe', 'pipe'] });
      }
      removeDir(root);
    });
    fs.mkdirSync(mountPoint);
    try {
      // ramfs keeps no extended attributes at all: setxattr fails with EOPNOTSUPP.
      // (tmpfs accepts user attributes since Linux 6.6, so it would not do.)
      execFileSync('mount', ['-t', 'ramfs', '-o', 'mode=0755', 'image-cache-test', mountPoint], { stdio: ['ignore', 'pipe', 'pipe'] });
      mounted = true;
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? (err as Error).message);
      assert.fail(`this test mounts a ramfs, which needs root (as on CI): ${stderr.trim()}`);
    }
    const dir = path.join(mountPoint, 'cache');

    // Configuring the driver alone: without the fallback to sqlite that ImageCache.create makes by default.
    const configureDriver = () => ImageCache.create(resolveOptions({ imageCacheDir: dir, imageCacheDriver: 'xattr', logger: silentLogger }), { fallbackToSqlite: false });
    await assert.rejects(configureDriver(), (err: unknown) => {
      const e = err as { code?: unknown; name?: unknown; driverName?: unknown; reason?: unknown; message?: unknown };
      assert.equal(e.code, 'ERR_BAD_DRIVER_CONFIGURATION');
      assert.equal(e.name, 'BadDriverConfiguration');
      assert.equal(e.driverName, 'xattr');
      assert.match(String(e.reason), /user_xattr/);
      assert.ok(String(e.reason).includes(dir), `the reason does not name ${dir}: ${String(e.reason)}`);
      assert.ok(String(e.message).includes('user_xattr'));
      return true;
    });
    // The probe file is gone.
    assert.deepEqual(fs.readdirSync(dir).sort(), ['incomplete', 'invalid', 'queue']);

    const cache = await ImageCache.create({ imageCacheDir: dir, imageCacheDriver: 'xattr', logger: silentLogger });
    caches.push(cache);
    assert.equal(cache.driver.name, 'sqlite');
    await put(cache, '1', Buffer.from('on ramfs'));
    assert.deepEqual(await readAll(cache, '1'), Buffer.from('on ramfs'));
    assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits]), [['1', 1]]);
  });
});
