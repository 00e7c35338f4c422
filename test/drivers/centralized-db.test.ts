/**
 * The centralized_db driver against a real PostgreSQL: the conformance suite,
 * then what only this driver does — Glance's tables, several nodes on one
 * database, hit counts under concurrency, and configuration errors.
 *
 * Each run creates its own database and drops it afterwards. Every
 * conformance test gets a worker_self_reference_url of its own: nodes are
 * how the driver keeps rows apart, so one database with a node per test
 * isolates the tests the way production isolates nodes (and costs no DDL),
 * while a schema per test would only re-test table creation each time.
 *
 * Without a server the PostgreSQL tests are skipped with one line saying why,
 * except under CI (CI=true), where that is a failure.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it, type TestContext } from 'node:test';
import {
  CentralizedDbDriver,
  ImageCache,
  resolveOptions,
  silentLogger,
  type ImageCacheOptions,
  type Logger,
} from '../../src/index.js';
import { FIXTURE_DATA, collect, makeTempDir, removeDir, waitForClose } from '../helpers.js';
import { runConformanceSuite } from './conformance.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from './pg-helpers.js';

const BAD_DRIVER_CONFIGURATION = { code: 'ERR_BAD_DRIVER_CONFIGURATION', name: 'BadDriverConfiguration', driverName: 'centralized_db' };
const INVALID_IMAGE_ID = { code: 'ERR_INVALID_IMAGE_ID' };
const UUID = '6a1e2f3c-0d4b-4c5e-9f60-7a8b9c0d1e2f';

/**
 * Glance's tables exactly as SQLAlchemy renders its 2024_1_expand01 migration
 * for PostgreSQL (BigInteger autoincrement keys become BIGSERIAL, DateTime is
 * TIMESTAMP WITHOUT TIME ZONE, image_id is VARCHAR(36)).
 */
const GLANCE_DDL = `
CREATE TABLE node_reference (
  node_reference_id BIGSERIAL NOT NULL,
  node_reference_url VARCHAR(255) NOT NULL,
  PRIMARY KEY (node_reference_id),
  CONSTRAINT uq_node_reference_node_reference_url UNIQUE (node_reference_url)
);
CREATE TABLE cached_images (
  id BIGSERIAL NOT NULL,
  image_id VARCHAR(36) NOT NULL,
  last_accessed TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  last_modified TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  size BIGINT NOT NULL,
  hits INTEGER NOT NULL,
  checksum VARCHAR(32),
  node_reference_id BIGINT NOT NULL,
  PRIMARY KEY (id),
  FOREIGN KEY(node_reference_id) REFERENCES node_reference (node_reference_id),
  CONSTRAINT ix_cached_images_image_id_node_reference_id UNIQUE (image_id, node_reference_id)
);`;

const unreachable = await unreachableReason();
const skip = unreachable !== undefined && process.env.CI !== 'true'
  ? `no PostgreSQL server at ${ADMIN_URL} (${unreachable}); set IMAGE_CACHE_TEST_PG_URL to use another`
  : false;

describe('centralized_db on PostgreSQL', { skip }, () => {
  const db = new TestDatabase();
  before(async () => {
    if (unreachable !== undefined) throw new Error(`PostgreSQL is required under CI but ${ADMIN_URL} is unreachable: ${unreachable}`);
    await db.create();
  });
  after(() => db.drop());

  let conformanceNode = 0;
  runConformanceSuite(
    'centralized_db',
    () => ({ databaseConnection: db.url, workerSelfReferenceUrl: `http://node-${++conformanceNode}.conformance:9292` }),
    { cachedNodes: true },
  );

  /** A temporary root removed after the test; caches opened through `open` are closed first. */
  function fixture(t: TestContext) {
    const root = makeTempDir('image-cache-centralized-');
    const caches: ImageCache[] = [];
    t.after(async () => {
      for (const cache of caches) await cache.close();
      removeDir(root);
    });
    const open = async (name: string, options: Partial<ImageCacheOptions> = {}): Promise<ImageCache> => {
      const cache = await ImageCache.create({
        imageCacheDir: path.join(root, name),
        imageCacheDriver: 'centralized_db',
        databaseConnection: db.url,
        workerSelfReferenceUrl: `http://${name}.${path.basename(root)}:9292`,
        logger: silentLogger,
        ...options,
      });
      caches.push(cache);
      assert.equal(cache.driver.name, 'centralized_db', `ImageCache.create fell back to ${cache.driver.name}`);
      return cache;
    };
    return { root, open, dir: (name: string) => path.join(root, name) };
  }

  /** configure() of a bare driver, which (unlike ImageCache.create) does not fall back to sqlite. */
  async function configureDriver(t: TestContext, options: Partial<ImageCacheOptions>): Promise<CentralizedDbDriver> {
    const root = makeTempDir('image-cache-centralized-');
    const driver = new CentralizedDbDriver(resolveOptions({ imageCacheDir: path.join(root, 'cache'), imageCacheDriver: 'centralized_db', logger: silentLogger, ...options }));
    t.after(async () => {
      await driver.close();
      removeDir(root);
    });
    await driver.configure();
    return driver;
  }

  async function put(cache: ImageCache, imageId: string, data: Buffer = FIXTURE_DATA): Promise<void> {
    assert.equal(await cache.cacheImageFile(imageId, Readable.from([data])), true, `caching ${imageId}`);
  }

  async function read(cache: ImageCache, imageId: string): Promise<Buffer> {
    const stream = await cache.openForRead(imageId);
    const data = await collect(stream);
    await waitForClose(stream);
    return data;
  }

  /** This node's rows, straight from the table. */
  async function rowsOf(nodeUrl: string): Promise<Array<{ image_id: string; hits: number }>> {
    return db.query(
      `SELECT c.image_id, c.hits FROM cached_images c JOIN node_reference n USING (node_reference_id)
       WHERE n.node_reference_url = $1 ORDER BY c.image_id COLLATE "C"`,
      [nodeUrl],
    );
  }

  const urlOf = (cache: ImageCache): string => cache.options.workerSelfReferenceUrl!;

  describe('configuration', () => {
    it('without worker_self_reference_url configure() throws BadDriverConfiguration, and ImageCache falls back to sqlite', async (t) => {
      for (const workerSelfReferenceUrl of [undefined, '']) {
        await assert.rejects(configureDriver(t, { databaseConnection: db.url, workerSelfReferenceUrl }), {
          ...BAD_DRIVER_CONFIGURATION,
          reason: /worker_self_reference_url is not set/,
        });
      }
      await assert.rejects(configureDriver(t, { databaseConnection: db.url, workerSelfReferenceUrl: `http://${'x'.repeat(300)}` }), {
        ...BAD_DRIVER_CONFIGURATION,
        reason: /worker_self_reference_url .* at most 255/,
      });
      const warnings: string[] = [];
      const logger: Logger = { ...silentLogger, warn: (_fields, message) => warnings.push(message) };
      const root = makeTempDir('image-cache-centralized-');
      t.after(() => removeDir(root));
      const cache = await ImageCache.create({ imageCacheDir: path.join(root, 'cache'), imageCacheDriver: 'centralized_db', databaseConnection: db.url, logger });
      t.after(() => cache.close());
      assert.equal(cache.driver.name, 'sqlite');
      assert.ok(warnings.some((w) => /falling back to sqlite/.test(w)), `no fallback warning in ${JSON.stringify(warnings)}`);
    });

    it('without database_connection, or with a URL that is not PostgreSQL, configure() throws BadDriverConfiguration naming the option', async (t) => {
      for (const databaseConnection of [undefined, '', '   ']) {
        await assert.rejects(configureDriver(t, { databaseConnection, workerSelfReferenceUrl: 'http://node-a:9292' }), {
          ...BAD_DRIVER_CONFIGURATION,
          reason: /database_connection is not set: it must be a PostgreSQL URL such as postgresql:\/\//,
        });
      }
      for (const databaseConnection of ['mysql+pymysql://glance:s3cret@db/glance', 'sqlite:///var/lib/glance/glance.sqlite', 'db.example.com/glance']) {
        const err = await configureDriver(t, { databaseConnection, workerSelfReferenceUrl: 'http://node-a:9292' }).then(
          () => assert.fail(`${databaseConnection} was accepted`),
          (e: unknown) => e as Error & { reason: string },
        );
        assert.equal(err.name, 'BadDriverConfiguration');
        assert.match(err.reason, /database_connection must be a PostgreSQL URL \(postgresql:\/\//);
        assert.doesNotMatch(err.message, /s3cret/, 'the password was put in the message');
      }
    });

    it('a server that cannot be reached, or a database that does not exist, is a BadDriverConfiguration (password not shown)', async (t) => {
      const started = Date.now();
      await assert.rejects(configureDriver(t, { databaseConnection: 'postgresql://postgres:s3cret@127.0.0.1:1/glance', workerSelfReferenceUrl: 'http://node-a:9292' }), (err: Error & { reason: string }) => {
        assert.equal(err.name, 'BadDriverConfiguration');
        assert.match(err.reason, /cannot connect to PostgreSQL at postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/glance: .*ECONNREFUSED/);
        assert.doesNotMatch(err.message, /s3cret/);
        return true;
      });
      assert.ok(Date.now() - started < 5000, 'configure() took too long to give up on a refused connection');
      const missing = new URL(db.url);
      missing.pathname = `/${db.name}_missing`;
      await assert.rejects(configureDriver(t, { databaseConnection: missing.toString(), workerSelfReferenceUrl: 'http://node-a:9292' }), {
        ...BAD_DRIVER_CONFIGURATION,
        reason: /does not exist/,
      });
    });

    it('accepts SQLAlchemy\'s postgresql+psycopg2:// form of the URL, as glance-api.conf has it', async (t) => {
      const driver = await configureDriver(t, { databaseConnection: db.url.replace(/^postgresql:/, 'postgresql+psycopg2:'), workerSelfReferenceUrl: 'http://sqlalchemy-url:9292' });
      assert.equal(driver.nodeReferenceUrl, 'http://sqlalchemy-url:9292');
      assert.deepEqual(await db.query("SELECT 1 AS one FROM node_reference WHERE node_reference_url = 'http://sqlalchemy-url:9292'"), [{ one: 1 }]);
    });
  });

  describe('tables', () => {
    it('creates Glance\'s tables: the columns, types, keys and constraint names of Glance\'s 2024.1 migration (image_id widened to 255)', async (t) => {
      const { open } = fixture(t);
      await open('schema-node');
      await db.query('CREATE SCHEMA glance_reference');
      t.after(() => db.query('DROP SCHEMA glance_reference CASCADE'));
      await db.query(`SET search_path = glance_reference; ${GLANCE_DDL}; RESET search_path`);

      const columns = (schema: string) => db.query<Record<string, unknown>>(
        `SELECT table_name, column_name, data_type, character_maximum_length, datetime_precision, is_nullable,
                regexp_replace(column_default, '[a-z_]+\\.', '') AS column_default
         FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position`,
        [schema],
      );
      const constraints = (schema: string) => db.query<Record<string, unknown>>(
        `SELECT c.conrelid::regclass::text AS on_table, c.conname, c.contype,
                array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i) AS columns,
                c.confrelid::regclass::text AS references
         FROM pg_constraint c JOIN pg_namespace s ON s.oid = c.connamespace
         WHERE s.nspname = $1 ORDER BY 1, 2`,
        [schema],
      );
      const strip = (rows: Array<Record<string, unknown>>) => rows.map((row) => JSON.parse(JSON.stringify(row).replace(/glance_reference\./g, '')) as Record<string, unknown>);

      const ours = await columns('public');
      const glance = await columns('glance_reference');
      const widened = (rows: Array<Record<string, unknown>>, length: number) =>
        rows.map((row) => (row.column_name === 'image_id' ? { ...row, character_maximum_length: length } : row));
      assert.deepEqual(widened(ours, 36), glance);
      assert.deepEqual(ours.find((c) => c.column_name === 'image_id'), {
        table_name: 'cached_images', column_name: 'image_id', data_type: 'character varying', character_maximum_length: 255,
        datetime_precision: null, is_nullable: 'NO', column_default: null,
      });
      assert.deepEqual(ours.map((c) => [c.table_name, c.column_name, c.data_type, c.is_nullable]), [
        ['cached_images', 'id', 'bigint', 'NO'],
        ['cached_images', 'image_id', 'character varying', 'NO'],
        ['cached_images', 'last_accessed', 'timestamp without time zone', 'NO'],
        ['cached_images', 'last_modified', 'timestamp without time zone', 'NO'],
        ['cached_images', 'size', 'bigint', 'NO'],
        ['cached_images', 'hits', 'integer', 'NO'],
        ['cached_images', 'checksum', 'character varying', 'YES'],
        ['cached_images', 'node_reference_id', 'bigint', 'NO'],
        ['node_reference', 'node_reference_id', 'bigint', 'NO'],
        ['node_reference', 'node_reference_url', 'character varying', 'NO'],
      ]);
      assert.deepEqual(await constraints('public'), strip(await constraints('glance_reference')));
      assert.deepEqual((await constraints('public')).map((c) => [c.conname, c.contype, c.columns, c.references]), [
        ['cached_images_node_reference_id_fkey', 'f', ['node_reference_id'], 'node_reference'],
        ['cached_images_pkey', 'p', ['id'], '-'],
        ['ix_cached_images_image_id_node_reference_id', 'u', ['image_id', 'node_reference_id'], '-'],
        ['node_reference_pkey', 'p', ['node_reference_id'], '-'],
        ['uq_node_reference_node_reference_url', 'u', ['node_reference_url'], '-'],
      ]);
      // Our only addition: an index for the per-node queries.
      const indexes = await db.query<{ indexname: string; indexdef: string }>("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'cached_images' AND indexname = 'cached_images_node_reference_id_idx'");
      assert.match(indexes[0]?.indexdef ?? '', /\(node_reference_id\)$/);
    });

    it('several nodes configuring at once on an empty database all succeed, and each node is registered once', async (t) => {
      await db.query('CREATE SCHEMA fresh');
      t.after(() => db.query('DROP SCHEMA fresh CASCADE'));
      const databaseConnection = db.urlWith({ options: '-c search_path=fresh' });
      const urls = ['http://a:9292', 'http://b:9292', 'http://c:9292', 'http://d:9292', 'http://a:9292', 'http://b:9292'];
      const drivers = await Promise.all(urls.map((workerSelfReferenceUrl) => configureDriver(t, { databaseConnection, workerSelfReferenceUrl })));
      assert.equal(drivers.length, urls.length);
      assert.deepEqual(
        await db.query('SELECT node_reference_url, count(*)::int AS n FROM fresh.node_reference GROUP BY 1 ORDER BY 1'),
        ['http://a:9292', 'http://b:9292', 'http://c:9292', 'http://d:9292'].map((url) => ({ node_reference_url: url, n: 1 })),
      );
      assert.deepEqual((await db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'fresh' ORDER BY 1")).map((r) => r.tablename), ['cached_images', 'node_reference']);
    });

    it('uses tables Glance created as they are: UUID images work, an ID longer than Glance\'s VARCHAR(36) is refused at commit, and reads rows Glance wrote', async (t) => {
      await db.query(`CREATE SCHEMA glance_made; SET search_path = glance_made; ${GLANCE_DDL}; RESET search_path`);
      t.after(() => db.query('DROP SCHEMA glance_made CASCADE'));
      const { open, dir } = fixture(t);
      const cache = await open('glance-node', { databaseConnection: db.urlWith({ options: '-c search_path=glance_made' }) });
      const self = urlOf(cache);
      assert.deepEqual(await db.query("SELECT character_maximum_length AS n FROM information_schema.columns WHERE table_schema = 'glance_made' AND column_name = 'image_id'"), [{ n: 36 }]);

      await put(cache, UUID);
      assert.deepEqual(await cache.getCachedNodes(UUID), [self]);

      const long = 'x'.repeat(37);
      await assert.rejects(cache.cacheImageFile(long, Readable.from([FIXTURE_DATA])), { ...INVALID_IMAGE_ID, message: /36 characters/ });
      assert.equal(await cache.isCached(long), false);
      assert.equal(fs.existsSync(path.join(dir('glance-node'), 'invalid', long)), true);

      // A row as Glance's insert_cache_details writes it (naive UTC datetimes), with its file.
      const glanceId = 'a1b2c3d4-0000-4000-8000-00000000000a';
      fs.writeFileSync(path.join(dir('glance-node'), glanceId), Buffer.alloc(100));
      await db.query(
        `INSERT INTO glance_made.cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
         SELECT $1, '2024-01-02 03:04:05.25', '2024-01-01 00:00:00.5', 100, 3, NULL, node_reference_id FROM glance_made.node_reference WHERE node_reference_url = $2`,
        [glanceId, self],
      );
      // And a file too long to be recorded there: listed, counted and prunable all the same.
      fs.writeFileSync(path.join(dir('glance-node'), long), Buffer.alloc(10));

      const images = await cache.getCachedImages();
      assert.deepEqual(images.map((i) => [i.imageId, i.hits, i.size]), [[UUID, 0, 1024], [glanceId, 3, 100], [long, 0, 10]]);
      assert.equal(images[1]!.lastAccessed, Date.UTC(2024, 0, 2, 3, 4, 5, 250) / 1000);
      assert.equal(images[1]!.lastModified, Date.UTC(2024, 0, 1, 0, 0, 0, 500) / 1000);
      assert.equal(await cache.getCacheSize(), 1134);
      assert.equal(await cache.deleteAllCachedImages(), 3);
      assert.deepEqual(await db.query('SELECT image_id FROM glance_made.cached_images'), []);
    });

    it('stores times as Glance does, naive UTC, whatever the session time zone; epoch seconds come back', async (t) => {
      const { open } = fixture(t);
      // The driver's own sessions run in a time zone far from UTC.
      const cache = await open('tz-node', { databaseConnection: db.urlWith({ options: '-c TimeZone=Asia/Kolkata' }) });
      const before = Date.now() / 1000;
      await put(cache, UUID);
      await read(cache, UUID);
      const [image] = await cache.getCachedImages();
      assert.ok(image !== undefined);
      assert.ok(Math.abs(image.lastModified - before) < 5, `lastModified ${image.lastModified} is not now (${before})`);
      const [row] = await db.query<{ modified: string; accessed: string }>(
        `SELECT to_char(last_modified, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS modified, to_char(last_accessed, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS accessed
         FROM cached_images WHERE image_id = $1 AND node_reference_id = (SELECT node_reference_id FROM node_reference WHERE node_reference_url = $2)`,
        [UUID, urlOf(cache)],
      );
      const utc = (seconds: number) => `${new Date(Math.round(seconds * 1e6) / 1e3).toISOString().slice(0, 23)}${String(Math.round(seconds * 1e6) % 1000).padStart(3, '0')}`;
      assert.equal(row?.modified, utc(image.lastModified));
      assert.equal(row?.accessed, utc(image.lastAccessed));
    });
  });

  describe('hits', () => {
    it('concurrent reads through two caches on the same node and directory lose no hit increments', async (t) => {
      const { open } = fixture(t);
      const a = await open('shared-node');
      const b = await open('shared-node');
      await put(a, UUID);
      await put(a, 'other');
      const rounds = 5;
      const perRound = 20;
      for (let round = 0; round < rounds; round++) {
        // Both caches read at once, and each flushes its batch while the other's may be in flight.
        await Promise.all([
          ...Array.from({ length: perRound }, () => read(a, UUID)),
          ...Array.from({ length: perRound }, () => read(b, UUID)),
          read(b, 'other'),
          a.getHitCount(UUID),
          b.getCachedImages(),
        ]);
      }
      await b.getCachedImages(); // b's last batch
      const expected = rounds * perRound * 2;
      assert.equal(await a.getHitCount(UUID), expected);
      assert.equal(await b.getHitCount(UUID), expected);
      assert.equal(await a.getHitCount('other'), rounds);
      assert.deepEqual(await rowsOf(urlOf(a)), [{ image_id: UUID, hits: expected }, { image_id: 'other', hits: rounds }]);
    });

    it('reads still open when the cache closes are counted up to the close, and the rest are dropped quietly', async (t) => {
      const { open } = fixture(t);
      const a = await open('closing-node');
      await put(a, UUID);
      const streams = await Promise.all([1, 2, 3].map(() => a.openForRead(UUID)));
      await collect(streams[0]!);
      await waitForClose(streams[0]!);
      await a.close();
      for (const stream of streams.slice(1)) {
        await collect(stream);
        await waitForClose(stream);
      }
      assert.deepEqual(await rowsOf(urlOf(a)), [{ image_id: UUID, hits: 1 }]);
    });
  });

  describe('several nodes on one database', () => {
    it('getCachedNodes lists every node holding the image; listings, sizes and hits are per node', async (t) => {
      const { open, dir } = fixture(t);
      // Rows stay behind when nodes close: an image ID no other test used keeps getCachedNodes to this test's nodes.
      const image = randomUUID();
      const a = await open('node-a');
      const b = await open('node-b');
      await put(a, image);
      await put(b, image, Buffer.alloc(10));
      await put(a, 'only-a');
      await put(b, 'only-b', Buffer.alloc(20));
      await read(a, image);
      await read(a, image);

      const both = [urlOf(a), urlOf(b)].sort();
      assert.deepEqual(await a.getCachedNodes(image), both);
      assert.deepEqual(await b.getCachedNodes(image), both);
      assert.deepEqual(await b.getCachedNodes('only-a'), [urlOf(a)]);
      assert.deepEqual(await a.getCachedNodes('never-cached'), []);
      await assert.rejects(a.getCachedNodes('../x'), INVALID_IMAGE_ID);

      assert.deepEqual((await a.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [[image, 2, 1024], ['only-a', 0, 1024]]);
      assert.deepEqual((await b.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [[image, 0, 10], ['only-b', 0, 20]]);
      assert.equal(await a.getCacheSize(), 2048);
      assert.equal(await b.getCacheSize(), 30);
      assert.equal(await b.getHitCount(image), 0);
      assert.equal(await b.getHitCount('only-a'), 0);
      assert.deepEqual(await b.getLeastRecentlyAccessed(), { imageId: image, size: 10 });

      // A record whose file went missing behind the node's back does not count as held.
      fs.unlinkSync(path.join(dir('node-b'), image));
      assert.deepEqual(await a.getCachedNodes(image), both, 'node-b\'s row is out of node-a\'s sight');
      assert.deepEqual(await b.getCachedNodes(image), [urlOf(a)]);
    });

    it('deleting, pruning and clearing on one node leave the other node\'s rows and files alone', async (t) => {
      const { open, dir } = fixture(t);
      // Rows stay behind when nodes close: an image ID no other test used keeps getCachedNodes to this test's nodes.
      const image = randomUUID();
      const a = await open('node-a');
      const b = await open('node-b', { imageCacheMaxSize: 0 });
      const [one, two] = [`${image}.1`, `${image}.2`];
      const ids = [image, one, two];
      for (const id of ids) {
        await put(a, id);
        await put(b, id);
      }
      await read(a, one);
      const aFiles = () => ids.filter((id) => fs.existsSync(path.join(dir('node-a'), id)));
      const aRows = [{ image_id: image, hits: 0 }, { image_id: one, hits: 1 }, { image_id: two, hits: 0 }];

      await b.deleteCachedImage(image);
      assert.deepEqual(await a.getCachedNodes(image), [urlOf(a)]);
      assert.deepEqual(await rowsOf(urlOf(a)), aRows);
      assert.deepEqual(aFiles(), ids);

      assert.deepEqual(await b.prune(), { totalFilesPruned: 2, totalBytesPruned: 2048 });
      assert.deepEqual(await rowsOf(urlOf(b)), []);
      assert.deepEqual(await rowsOf(urlOf(a)), aRows);
      assert.deepEqual(aFiles(), ids);

      await put(b, one);
      assert.equal(await a.deleteAllCachedImages(), 3);
      assert.deepEqual(await rowsOf(urlOf(a)), []);
      assert.deepEqual(aFiles(), []);
      assert.deepEqual(await rowsOf(urlOf(b)), [{ image_id: one, hits: 0 }]);
      assert.deepEqual(await b.getCachedNodes(one), [urlOf(b)]);
      assert.deepEqual(await read(b, one), FIXTURE_DATA);
    });

    it('a directory the sqlite driver used: its images are adopted and its cache.db is not one of them', async (t) => {
      const { dir, open } = fixture(t);
      const sqlite = await ImageCache.create({ imageCacheDir: dir('switched'), logger: silentLogger });
      await put(sqlite, UUID);
      await sqlite.close();
      assert.equal(fs.existsSync(path.join(dir('switched'), 'cache.db')), true);
      const cache = await open('switched');
      assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [[UUID, 0, 1024]]);
      assert.deepEqual(await rowsOf(urlOf(cache)), [{ image_id: UUID, hits: 0 }]);
      await assert.rejects(cache.isCached('cache.db'), INVALID_IMAGE_ID);
      assert.equal(await cache.deleteAllCachedImages(), 1);
      assert.equal(fs.existsSync(path.join(dir('switched'), 'cache.db')), true);
    });
  });
});
