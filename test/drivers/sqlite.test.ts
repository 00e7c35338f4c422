/**
 * The sqlite driver: the conformance suite, then what only sqlite does —
 * compatibility with Glance's own cache.db in both directions, WAL while
 * open, and configuration errors.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { ImageCache, silentLogger, type DriverName, type ImageCacheOptions } from '../../src/index.js';
import { TEST_ENGINE, patternedBytes, readAll, tempRoot } from '../helpers.js';
import { LRU_ORDER_QUERY } from '../../src/metadata/sqlite.js';
import { runConformanceSuite } from './conformance.js';

runConformanceSuite('sqlite', () => ({}), { cachedNodes: false, records: true });

/** Glance's table, exactly as glance/image_cache/drivers/sqlite.py creates it. */
const GLANCE_SCHEMA = `CREATE TABLE IF NOT EXISTS cached_images (
  image_id TEXT PRIMARY KEY,
  last_accessed REAL DEFAULT 0.0,
  last_modified REAL DEFAULT 0.0,
  size INTEGER DEFAULT 0,
  hits INTEGER DEFAULT 0,
  checksum TEXT
)`;

const INVALID_IMAGE_ID = { code: 'ERR_INVALID_IMAGE_ID' };
const BAD_DRIVER_CONFIGURATION = { code: 'ERR_BAD_DRIVER_CONFIGURATION', name: 'BadDriverConfiguration' };


async function createCache(dir: string, more: Partial<ImageCacheOptions> = {}): Promise<ImageCache> {
  return ImageCache.create({ imageCacheDir: dir, imageCacheDriver: 'sqlite', imageCacheMaxSize: 5 * 1024, logger: silentLogger, ...more }, TEST_ENGINE);
}


function journalMode(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return String(db.pragma('journal_mode', { simple: true }));
  } finally {
    db.close();
  }
}

describe('sqlite driver', () => {
  it('adopts a cache directory written by Glance: lists its images with their hits and times, reads and prunes them', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'glance-cache');
    for (const sub of ['', 'incomplete', 'invalid', 'queue']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
    const images: Record<string, { data: Buffer; hits: number; lastAccessed: number; lastModified: number }> = {
      'a1b2c3d4-0000-4000-8000-00000000000a': { data: patternedBytes(1024), hits: 3, lastAccessed: 1_700_000_300.25, lastModified: 1_700_000_000.5 },
      'a1b2c3d4-0000-4000-8000-00000000000b': { data: Buffer.alloc(1024, 'b'), hits: 1, lastAccessed: 1_700_000_100.75, lastModified: 1_700_000_001.125 },
      'a1b2c3d4-0000-4000-8000-00000000000c': { data: Buffer.alloc(1024, 'c'), hits: 0, lastAccessed: 1_700_000_200.5, lastModified: 1_700_000_002.0625 },
    };
    const [idA, idB, idC] = Object.keys(images) as [string, string, string];
    // Written the way Glance does: default rollback journal, Glance's table, float times.
    const glanceDb = new Database(path.join(dir, 'cache.db'));
    assert.equal(glanceDb.pragma('journal_mode', { simple: true }), 'delete');
    glanceDb.exec(GLANCE_SCHEMA);
    const insert = glanceDb.prepare('INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, ?, ?, ?, ?)');
    for (const [id, image] of Object.entries(images)) {
      fs.writeFileSync(path.join(dir, id), image.data);
      insert.run(id, image.lastAccessed, image.lastModified, image.data.length, image.hits);
    }
    glanceDb.close();
    fs.writeFileSync(path.join(dir, 'queue', 'queued-image'), '');

    // Max size 2 KiB: pruning must evict exactly one image, the least recently accessed (B),
    // not the first by id (A) nor the one with the fewest hits (C).
    const cache = track(await createCache(dir, { imageCacheMaxSize: 2048 }));
    assert.deepEqual(await cache.getCachedImages(), Object.entries(images).map(([imageId, image]) => ({
      imageId,
      hits: image.hits,
      lastModified: image.lastModified,
      lastAccessed: image.lastAccessed,
      size: 1024,
    })));
    assert.equal(await cache.getCacheSize(), 3 * 1024);
    assert.deepEqual(await cache.getQueuedImages(), ['queued-image']);
    assert.deepEqual(await cache.getLeastRecentlyAccessed(), { imageId: idB, size: 1024 });

    assert.deepEqual(await cache.prune(), { totalFilesPruned: 1, totalBytesPruned: 1024 });
    assert.equal(await cache.isCached(idB), false);
    assert.equal(fs.existsSync(path.join(dir, idB)), false);

    assert.deepEqual(await readAll(cache, idA), images[idA]!.data);
    assert.deepEqual(await readAll(cache, idC), images[idC]!.data);
    assert.equal(await cache.getHitCount(idA), 4);
    assert.equal(await cache.getHitCount(idC), 1);
    const after = await cache.getCachedImages();
    assert.deepEqual(after.map((i) => i.imageId), [idA, idC]);
    for (const image of after) assert.ok(image.lastAccessed > 1_700_000_300.25, 'reading did not move last access forward');
  });

  it('leaves a directory Glance can read: Glance\'s query and directory listing see our images, and no WAL files remain after close', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    assert.equal(await cache.cacheImageFile('img-1', (async function* () { yield patternedBytes(1000); })()), true);
    assert.equal(await cache.cacheImageFile('img-2', (async function* () { yield Buffer.alloc(300, 'x'); })()), true);
    await readAll(cache, 'img-1');
    await readAll(cache, 'img-1');
    const ours = await cache.getCachedImages();
    assert.equal(ours.length, 2);
    await cache.close();

    const script = `
import json, os, sqlite3, sys
base = sys.argv[1]
conn = sqlite3.connect(os.path.join(base, 'cache.db'))
conn.row_factory = sqlite3.Row
rows = [dict(r) for r in conn.execute("SELECT image_id, hits, last_accessed, last_modified, size FROM cached_images ORDER BY image_id")]
mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
conn.close()
files = sorted(f for f in os.listdir(base) if os.path.isfile(os.path.join(base, f)))
print(json.dumps({"rows": rows, "files": files, "journal_mode": mode}))
`;
    const output = execFileSync('python3', ['-c', script, dir], { encoding: 'utf8' });
    const glance = JSON.parse(output) as {
      rows: Array<{ image_id: string; hits: number; last_accessed: number; last_modified: number; size: number }>;
      files: string[];
      journal_mode: string;
    };
    assert.deepEqual(glance.rows, ours.map((i) => ({
      image_id: i.imageId,
      hits: i.hits,
      last_accessed: i.lastAccessed,
      last_modified: i.lastModified,
      size: i.size,
    })));
    assert.deepEqual(glance.rows.map((r) => [r.image_id, r.hits, r.size]), [['img-1', 2, 1000], ['img-2', 0, 300]]);
    // Glance counts every regular file in the directory other than its database as an image.
    assert.deepEqual(glance.files.filter((f) => f !== 'cache.db'), ['img-1', 'img-2']);
    assert.equal(glance.journal_mode, 'delete');
  });

  it('Glance\'s own sqlite driver (Debian python3-glance) reads a directory we wrote, and we read what it then writes', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    await cache.cacheImageFile('img-1', Readable.from([Buffer.alloc(1000, 1)]));
    await cache.cacheImageFile('img-2', Readable.from([Buffer.alloc(300, 2)]));
    await readAll(cache, 'img-1');
    await readAll(cache, 'img-1');
    await cache.close();

    const script = `
import io, json, sys
from oslo_config import cfg
import glance.image_cache as image_cache
from glance.image_cache.drivers import sqlite  # registers image_cache_sqlite_db
cfg.CONF(args=[], project="glance", default_config_files=[])
cfg.CONF.set_override("image_cache_dir", sys.argv[1])
cfg.CONF.set_override("image_cache_driver", "sqlite")
cache = image_cache.ImageCache()
before = [[r["image_id"], r["hits"], r["size"]] for r in cache.get_cached_images()]
size = cache.get_cache_size()
with cache.open_for_read("img-2") as f:
    read = len(b"".join(f))
cache.cache_image_file("from-glance", io.BytesIO(b"g" * 100))
print(json.dumps({"before": before, "size": size, "read": read}))
`;
    let output: string;
    try {
      output = execFileSync('/usr/bin/python3', ['-c', script, dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? '');
      assert.fail(`running Glance's sqlite driver failed (Debian's python3-glance must be installed; .ci/run installs it): ${stderr.trim().split('\n').pop()}`);
    }
    const glance = JSON.parse(output) as { before: Array<[string, number, number]>; size: number; read: number };
    assert.deepEqual(glance.before, [['img-1', 2, 1000], ['img-2', 0, 300]]);
    assert.equal(glance.size, 1300, 'Glance sums every file in the directory but cache.db: no WAL files may be left');
    assert.equal(glance.read, 300);

    const again = track(await createCache(dir));
    const images = await again.getCachedImages();
    assert.deepEqual(images.map((i) => [i.imageId, i.hits, i.size]), [['from-glance', 0, 100], ['img-1', 2, 1000], ['img-2', 1, 300]]);
    assert.deepEqual(await readAll(again, 'from-glance'), Buffer.alloc(100, 'g'));
    // Glance's lock file (image_cache_db_init) is not an image.
    assert.equal(fs.existsSync(path.join(dir, 'image_cache_db_init')), true);
    assert.equal(await again.getCacheSize(), 1400);
  });

  it('keeps the database in WAL mode while open, back in rollback-journal (delete) mode after close, with Glance\'s columns', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const dbPath = path.join(dir, 'cache.db');
    const cache = track(await createCache(dir));
    await cache.cacheImageFile('1', (async function* () { yield Buffer.from('data'); })());
    assert.equal(journalMode(dbPath), 'wal');

    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    try {
      const columns = db.prepare<[], { name: string; type: string }>("SELECT name, type FROM pragma_table_info('cached_images') ORDER BY cid").all();
      assert.deepEqual(columns.map((c) => [c.name, c.type]), [
        ['image_id', 'TEXT'], ['last_accessed', 'REAL'], ['last_modified', 'REAL'], ['size', 'INTEGER'], ['hits', 'INTEGER'], ['checksum', 'TEXT'],
      ]);
    } finally {
      db.close();
    }

    await cache.close();
    assert.equal(journalMode(dbPath), 'delete');
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
    assert.equal(fs.existsSync(`${dbPath}-shm`), false);
  });

  it('keeps one index of its own, and it serves a query: prune\'s walk in last-access order reads the index alone (the old index that served nothing is dropped)', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    fs.mkdirSync(dir, { recursive: true });
    // A cache.db from the earlier version, with its index on last_accessed alone.
    const old = new Database(path.join(dir, 'cache.db'));
    old.exec(GLANCE_SCHEMA);
    old.exec('CREATE INDEX cached_images_last_accessed_idx ON cached_images (last_accessed)');
    old.close();
    const cache = track(await createCache(dir));
    for (const id of ['b', 'a', 'c']) await cache.cacheImageFile(id, (async function* () { yield Buffer.from(id); })());
    await readAll(cache, 'b');
    const db = new Database(path.join(dir, 'cache.db'), { readonly: true, fileMustExist: true });
    try {
      const indexes = db.prepare<[], { name: string; origin: string }>("SELECT name, origin FROM pragma_index_list('cached_images')").all();
      assert.deepEqual(indexes.filter((i) => i.origin === 'c').map((i) => i.name), ['cached_images_lru_order']);
      const plan = db.prepare<[], { detail: string }>(`EXPLAIN QUERY PLAN ${LRU_ORDER_QUERY}`).all().map((row) => row.detail);
      assert.deepEqual(plan, ['SCAN cached_images USING COVERING INDEX cached_images_lru_order']);
    } finally {
      db.close();
    }
    assert.deepEqual((await cache.listLeastRecentlyAccessed()).map((e) => e.imageId), ['a', 'c', 'b']);
  });

  it('with two caches open on one directory, the database stays usable until the last one closes, which leaves no WAL files', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const dbPath = path.join(dir, 'cache.db');
    const first = track(await createCache(dir));
    const second = track(await createCache(dir));
    assert.equal(await first.cacheImageFile('1', (async function* () { yield Buffer.from('one'); })()), true);
    await first.close();
    assert.equal(await second.cacheImageFile('2', (async function* () { yield Buffer.from('two'); })()), true);
    assert.deepEqual((await second.getCachedImages()).map((i) => i.imageId), ['1', '2']);
    assert.deepEqual(await readAll(second, '1'), Buffer.from('one'));
    assert.equal(await second.getHitCount('1'), 1);
    await second.close();
    assert.equal(journalMode(dbPath), 'delete');
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
    assert.equal(fs.existsSync(`${dbPath}-shm`), false);
  });

  it('rejects the database\'s own file names as image IDs, and never lists or deletes them as images', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir));
    for (const id of ['cache.db', 'cache.db-wal', 'cache.db-shm', 'cache.db-journal']) {
      await assert.rejects(cache.isCached(id), INVALID_IMAGE_ID, id);
      await assert.rejects(cache.openForWrite(id), INVALID_IMAGE_ID, id);
      await assert.rejects(cache.openForRead(id), INVALID_IMAGE_ID, id);
      await assert.rejects(cache.deleteCachedImage(id), INVALID_IMAGE_ID, id);
      await assert.rejects(cache.cacheImageFile(id, (async function* () { yield Buffer.from('x'); })()), INVALID_IMAGE_ID, id);
      assert.throws(() => cache.getImageFilepath(id), INVALID_IMAGE_ID, id);
    }
    assert.deepEqual(await cache.getCachedImages(), []);
    assert.equal(await cache.getCacheSize(), 0);
    assert.equal(await cache.deleteAllCachedImages(), 0);
    assert.equal(fs.existsSync(path.join(dir, 'cache.db')), true);
    // The database still works after all that.
    assert.equal(await cache.cacheImageFile('1', (async function* () { yield Buffer.from('x'); })()), true);
    assert.deepEqual((await cache.getCachedImages()).map((i) => i.imageId), ['1']);
  });

  it('with image_cache_sqlite_db set, that file name (not cache.db) is reserved', async (t) => {
    const { root, track } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    const cache = track(await createCache(dir, { imageCacheSqliteDb: 'meta.sqlite' }));
    assert.equal(fs.existsSync(path.join(dir, 'meta.sqlite')), true);
    await assert.rejects(cache.isCached('meta.sqlite'), INVALID_IMAGE_ID);
    await assert.rejects(cache.isCached('meta.sqlite-wal'), INVALID_IMAGE_ID);
    assert.equal(await cache.isCached('cache.db'), false);
  });

  it('an unknown driver name is rejected with InvalidOption', async (t) => {
    const { root } = tempRoot(t, 'image-cache-sqlite-');
    await assert.rejects(
      ImageCache.create({ imageCacheDir: path.join(root, 'cache'), imageCacheDriver: 'memcached' as DriverName, logger: silentLogger }),
      { code: 'ERR_INVALID_OPTION', name: 'InvalidOption' },
    );
    assert.deepEqual(fs.readdirSync(root), []);
  });

  it('an unset image_cache_dir is a BadDriverConfiguration', async () => {
    await assert.rejects(ImageCache.create({ imageCacheDir: '', logger: silentLogger }), BAD_DRIVER_CONFIGURATION);
    await assert.rejects(
      ImageCache.create({ imageCacheDir: undefined as unknown as string, imageCacheDriver: 'sqlite', logger: silentLogger }),
      BAD_DRIVER_CONFIGURATION,
    );
  });

  it('an image_cache_dir that cannot be created or written is a BadDriverConfiguration', async (t) => {
    const { root } = tempRoot(t, 'image-cache-sqlite-');
    const file = path.join(root, 'a-regular-file');
    fs.writeFileSync(file, 'not a directory');
    // Beneath a regular file (ENOTDIR, whatever the user's privileges) and a regular file itself.
    await assert.rejects(createCache(path.join(file, 'cache')), BAD_DRIVER_CONFIGURATION);
    await assert.rejects(createCache(file), BAD_DRIVER_CONFIGURATION);
    assert.deepEqual(fs.readFileSync(file, 'utf8'), 'not a directory');
  });

  it('a cache.db that is not a SQLite database is a BadDriverConfiguration, and is left untouched', async (t) => {
    const { root } = tempRoot(t, 'image-cache-sqlite-');
    const dir = path.join(root, 'cache');
    fs.mkdirSync(dir);
    const garbage = Buffer.from('this is certainly not a SQLite database file, just some garbage bytes '.repeat(20));
    fs.writeFileSync(path.join(dir, 'cache.db'), garbage);
    await assert.rejects(createCache(dir), BAD_DRIVER_CONFIGURATION);
    assert.deepEqual(fs.readFileSync(path.join(dir, 'cache.db')), garbage);
  });
});
