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
import pg from 'pg';
import {
  ImageCache,
  resolveOptions,
  silentLogger,
  type ImageCacheOptions,
  type CentralizedDbIndex,
  type Logger,
} from '../../src/index.js';
import { FIXTURE_DATA, TEST_ENGINE, cachedIds, collect, makeTempDir, patternedBytes, removeDir, waitForClose, waitUntil } from '../helpers.js';
import { runConformanceSuite } from './conformance.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from './pg-helpers.js';

const BAD_DRIVER_CONFIGURATION = { code: 'ERR_BAD_DRIVER_CONFIGURATION', name: 'BadDriverConfiguration', driverName: 'centralized_db' };
const INVALID_IMAGE_ID = { code: 'ERR_INVALID_IMAGE_ID' };
const UUID = '6a1e2f3c-0d4b-4c5e-9f60-7a8b9c0d1e2f';
const NO_REPAIRS = { recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 };

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
    { cachedNodes: true, records: true },
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
      }, TEST_ENGINE);
      caches.push(cache);
      assert.equal(cache.driver.name, 'centralized_db', `ImageCache.create fell back to ${cache.driver.name}`);
      return cache;
    };
    return { root, open, dir: (name: string) => path.join(root, name) };
  }

  /** The driver's index, opened by an ImageCache that (unlike by default) does not fall back to sqlite. */
  async function configureDriver(t: TestContext, options: Partial<ImageCacheOptions>): Promise<CentralizedDbIndex> {
    const root = makeTempDir('image-cache-centralized-');
    let cache: ImageCache | undefined;
    t.after(async () => {
      await cache?.close();
      removeDir(root);
    });
    cache = await ImageCache.create(resolveOptions({ imageCacheDir: path.join(root, 'cache'), imageCacheDriver: 'centralized_db', logger: silentLogger, ...options }), { fallbackToSqlite: false });
    return cache.driver as CentralizedDbIndex;
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

  /** `promise`, or a failure naming `what` once `ms` have passed: a test that would hang fails instead. */
  async function withinDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([promise, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Runs `text` on the test's own connection until it returns a row, and
   * returns that row; fails after `timeoutMs`, or as soon as `failed()` names
   * a reason to stop waiting.
   */
  async function pollRow<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[], failed: () => string | undefined = () => undefined, timeoutMs = 10_000): Promise<R> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reason = failed();
      if (reason !== undefined) throw new Error(`while waiting for ${what}: ${reason}`);
      const [row] = await db.query<R>(text, values);
      if (row !== undefined) return row;
      if (Date.now() > deadline) throw new Error(`${what}: not seen within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** A connection of the test's own to the test database, ended after the test (which rolls back what it left open). */
  async function session(t: TestContext): Promise<{ client: pg.Client; pid: number }> {
    const client = new pg.Client({ connectionString: db.url, connectionTimeoutMillis: 5_000 });
    t.after(() => client.end().catch(() => {}));
    await client.connect();
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    return { client, pid: rows[0]!.pid };
  }

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
         FROM information_schema.columns WHERE table_schema = $1 AND table_name IN ('cached_images', 'node_reference')
         ORDER BY table_name, ordinal_position`,
        [schema],
      );
      const constraints = (schema: string) => db.query<Record<string, unknown>>(
        `SELECT c.conrelid::regclass::text AS on_table, c.conname, c.contype,
                array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i) AS columns,
                c.confrelid::regclass::text AS references
         FROM pg_constraint c JOIN pg_namespace s ON s.oid = c.connamespace
         WHERE s.nspname = $1 AND c.conrelid::regclass::text ~ '(^|\\.)(cached_images|node_reference)$' ORDER BY 1, 2`,
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
      // And the fill directory's tables (cluster/fill-directory.ts), beside Glance's.
      assert.deepEqual((await columns('public').then(() => db.query<{ t: string; c: string }>(
        `SELECT table_name AS t, column_name AS c FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name LIKE 'image_cache_fill%' ORDER BY table_name, ordinal_position`,
      ))).map((r) => `${r.t}.${r.c}`), [
        'image_cache_fill_claims.image_id', 'image_cache_fill_claims.node_reference_id', 'image_cache_fill_claims.expires_at',
        'image_cache_fills.image_id', 'image_cache_fills.node_reference_id', 'image_cache_fills.seq', 'image_cache_fills.expires_at',
      ]);
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
      assert.deepEqual((await db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'fresh' ORDER BY 1")).map((r) => r.tablename), ['cached_images', 'image_cache_fill_claims', 'image_cache_fills', 'node_reference']);
    });

    it('uses tables Glance created as they are: UUID images work, an ID longer than Glance\'s VARCHAR(36) is refused by openForWrite before anything is written, and reads rows Glance wrote', async (t) => {
      await db.query(`CREATE SCHEMA glance_made; SET search_path = glance_made; ${GLANCE_DDL}; RESET search_path`);
      t.after(() => db.query('DROP SCHEMA glance_made CASCADE'));
      const { open, dir } = fixture(t);
      const cache = await open('glance-node', { databaseConnection: db.urlWith({ options: '-c search_path=glance_made' }) });
      const self = urlOf(cache);
      assert.deepEqual(await db.query("SELECT character_maximum_length AS n FROM information_schema.columns WHERE table_schema = 'glance_made' AND table_name = 'cached_images' AND column_name = 'image_id'"), [{ n: 36 }]);

      await put(cache, UUID);
      assert.deepEqual(await cache.getCachedNodes(UUID), [self]);

      const long = 'x'.repeat(37);
      await assert.rejects(cache.openForWrite(long), { ...INVALID_IMAGE_ID, message: /36 characters/ });
      const source = Readable.from([FIXTURE_DATA]);
      await assert.rejects(cache.cacheImageFile(long, source), { ...INVALID_IMAGE_ID, message: /36 characters/ });
      assert.equal(source.readableDidRead, false, 'the download was started for an image that cannot be recorded');
      assert.equal(await cache.isCached(long), false);
      assert.deepEqual(fs.readdirSync(path.join(dir('glance-node'), 'incomplete')), [], 'nothing was written to incomplete/');
      assert.deepEqual(fs.readdirSync(path.join(dir('glance-node'), 'invalid')), [], 'nothing was left in invalid/');

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

    it('reads of an image file that has no row (copied in behind the cache\'s back) count: the row is made with the hits and the file\'s size', async (t) => {
      const { open, dir } = fixture(t);
      const cache = await open('copied-node');
      const data = patternedBytes(300);
      const file = path.join(dir('copied-node'), UUID);
      fs.writeFileSync(file, data);
      const mtime = fs.statSync(file).mtimeMs / 1000;
      assert.deepEqual(await rowsOf(urlOf(cache)), []);

      assert.deepEqual(await read(cache, UUID), data);
      assert.deepEqual(await read(cache, UUID), data);
      assert.equal(await cache.getHitCount(UUID), 2);
      const rows = await db.query<{ image_id: string; hits: number; size: string; modified: number }>(
        `SELECT c.image_id, c.hits, c.size, EXTRACT(EPOCH FROM c.last_modified)::float8 AS modified
         FROM cached_images c JOIN node_reference n USING (node_reference_id) WHERE n.node_reference_url = $1`,
        [urlOf(cache)],
      );
      assert.deepEqual(rows.map((r) => [r.image_id, r.hits, Number(r.size)]), [[UUID, 2, 300]]);
      assert.ok(Math.abs(rows[0]!.modified - mtime) < 1e-5, `last_modified ${rows[0]!.modified} is not the file's mtime ${mtime}`);
      assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [[UUID, 2, 300]]);
      assert.deepEqual(await cache.verify(), NO_REPAIRS, 'the reads recorded the file already');

      // A file read and then deleted before its hit is written gets no row: the hit has nothing to count for.
      const gone = 'copied-then-deleted';
      fs.writeFileSync(path.join(dir('copied-node'), gone), data);
      const stream = await cache.openForRead(gone);
      fs.unlinkSync(path.join(dir('copied-node'), gone));
      assert.deepEqual(await collect(stream), data);
      await waitForClose(stream);
      assert.deepEqual(await cachedIds(cache), [UUID]);
      assert.deepEqual(await rowsOf(urlOf(cache)), [{ image_id: UUID, hits: 2 }]);
    });

    it('a commit\'s record keeps the hits of reads of its own copy that landed first (the file is published before the record), and resets an earlier copy\'s leftover row', async (t) => {
      const { open } = fixture(t);
      const cache = await open('record-race');
      const nodeId = (await db.query<{ node_reference_id: string }>('SELECT node_reference_id FROM node_reference WHERE node_reference_url = $1', [urlOf(cache)]))[0]!.node_reference_id;
      // A row as the reads' insert makes it (or a delete whose record removal failed leaves it), accessed `offset` seconds from now.
      const rowAccessed = (imageId: string, hits: number, offset: number) => db.query(
        `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
         VALUES ($1, to_timestamp($2::float8) AT TIME ZONE 'UTC', to_timestamp($2::float8) AT TIME ZONE 'UTC', 1, $3, NULL, $4)`,
        [imageId, Date.now() / 1000 + offset, hits, nodeId],
      );
      for (const [imageId, hits, offset] of [['own-reads', 3, 60], ['earlier-copy', 5, -3600]] as const) {
        const writer = await cache.openForWrite(imageId);
        // Rows that are there by the time the commit's record lands: reads after the commit began, or long before it.
        await rowAccessed(imageId, hits, offset);
        writer.end(FIXTURE_DATA);
        await waitForClose(writer);
      }
      assert.deepEqual(await rowsOf(urlOf(cache)), [{ image_id: 'earlier-copy', hits: 0 }, { image_id: 'own-reads', hits: 3 }]);
      assert.deepEqual((await cache.getCachedImages()).map((i) => [i.imageId, i.size]), [['earlier-copy', 1024], ['own-reads', 1024]]);
    });

    it('a query returns under a steady stream of reads: flushing waits only for the reads recorded before it', async (t) => {
      const { open } = fixture(t);
      const cache = await open('busy-node');
      await put(cache, UUID);
      let stop = false;
      let completed = 0;
      // Readers that never pause: every turn of the event loop closes more reads, so a batch
      // is always waiting behind the one being written. They only yield the turn between reads:
      // a read of a cached file is synchronous from open to close, so a loop without that would
      // hold the event loop itself, and nothing (no timer, no database reply) could run at all.
      const reader = async (): Promise<void> => {
        while (!stop) {
          await read(cache, UUID);
          completed++;
          await new Promise((resolve) => setImmediate(resolve));
        }
      };
      const readers = Array.from({ length: 8 }, reader);
      try {
        await waitUntil(() => completed >= 100, 10_000);

        // Each query is asked straight after a read of the test's own has closed, so that it
        // always has unwritten reads to flush (a flush that waited for the batch to be empty
        // would never return here; one asked at a moment when the batch happens to be empty would).
        await read(cache, UUID);
        const before = ++completed;
        const images = await withinDeadline(cache.getCachedImages(), 10_000, 'getCachedImages() under a steady stream of reads');
        const after = completed;
        assert.ok(after > before, 'no read completed while the listing ran: the stream of reads was not steady, and the test proves nothing');
        const hits = images.find((i) => i.imageId === UUID)?.hits ?? -1;
        assert.ok(hits >= before && hits <= after, `listed ${hits} hits; ${before} reads had closed when it was asked, ${after} when it returned`);

        await read(cache, UUID);
        const asked = ++completed;
        const counted = await withinDeadline(cache.getHitCount(UUID), 10_000, 'getHitCount() under a steady stream of reads');
        assert.ok(counted >= asked && counted <= completed, `getHitCount() said ${counted}; ${asked} reads had closed when it was asked, ${completed} when it returned`);
      } finally {
        stop = true;
        await Promise.all(readers);
      }
      // And once the reads stop, nothing was lost.
      assert.equal(await cache.getHitCount(UUID), completed);
      assert.deepEqual(await rowsOf(urlOf(cache)), [{ image_id: UUID, hits: completed }]);
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
      await a.getCachedImages(); // reads gather for a second before they are written; a listing writes them first
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

    it('verify() drops the row of a file deleted behind the node\'s back, so that other nodes stop listing the node for it; listings alone write nothing', async (t) => {
      const { open, dir } = fixture(t);
      // Rows stay behind when nodes close: an image ID no other test used keeps getCachedNodes to this test's nodes.
      const image = randomUUID();
      const kept = `${image}.kept`;
      const a = await open('node-a');
      const b = await open('node-b');
      await put(a, image);
      await put(b, image);
      await put(b, kept);
      const both = [urlOf(a), urlOf(b)].sort();
      assert.deepEqual(await a.getCachedNodes(image), both);

      fs.unlinkSync(path.join(dir('node-b'), image));
      // Node b's own view hides the image at once...
      assert.deepEqual(await cachedIds(b), [kept]);
      assert.equal(await b.getCacheSize(), 1024);
      assert.deepEqual(await b.listLeastRecentlyAccessed(), [{ imageId: kept, size: 1024 }]);
      assert.deepEqual(await b.getCachedNodes(image), [urlOf(a)]);
      assert.equal(await b.getHitCount(image), 0);
      // ...but writes nothing: the phantom row is still in the table, and node a still sees b holding the image.
      assert.deepEqual(await rowsOf(urlOf(b)), [{ image_id: image, hits: 0 }, { image_id: kept, hits: 0 }]);
      assert.deepEqual(await a.getCachedNodes(image), both);

      assert.deepEqual(await b.verify(), { ...NO_REPAIRS, recordsDropped: 1 });
      assert.deepEqual(await rowsOf(urlOf(b)), [{ image_id: kept, hits: 0 }]);
      assert.deepEqual(await a.getCachedNodes(image), [urlOf(a)], 'node a still lists node b for an image b no longer holds');
      assert.deepEqual(await rowsOf(urlOf(a)), [{ image_id: image, hits: 0 }], 'node b\'s verify() touched node a\'s row');
      assert.deepEqual(await b.verify(), NO_REPAIRS);

      // A file rewritten behind the node's back: its listed size is the row's until verify() corrects it.
      const rowSize = async (): Promise<number | undefined> => (await db.query<{ size: string }>(
        'SELECT c.size FROM cached_images c JOIN node_reference n USING (node_reference_id) WHERE n.node_reference_url = $1 AND c.image_id = $2',
        [urlOf(b), kept],
      )).map((row) => Number(row.size))[0];
      fs.writeFileSync(path.join(dir('node-b'), kept), Buffer.alloc(10));
      assert.deepEqual((await b.getCachedImages()).map((i) => [i.imageId, i.size]), [[kept, 1024]]);
      assert.equal(await rowSize(), 1024);
      assert.deepEqual(await b.verify(), { ...NO_REPAIRS, sizesCorrected: 1 });
      assert.equal(await rowSize(), 10);
      assert.deepEqual((await b.getCachedImages()).map((i) => [i.imageId, i.size]), [[kept, 10]]);

      // clean() runs verify() after cleaning, and reports both.
      fs.unlinkSync(path.join(dir('node-b'), kept));
      assert.deepEqual(await b.getCachedNodes(kept), []);
      assert.deepEqual(await a.getCachedNodes(kept), [urlOf(b)], 'node b\'s row, out of node a\'s sight');
      assert.deepEqual(await b.clean(), { invalid: 0, stalled: 0, ...NO_REPAIRS, recordsDropped: 1 });
      assert.deepEqual(await a.getCachedNodes(kept), []);
      assert.deepEqual(await rowsOf(urlOf(b)), []);
    });

    it('a directory the sqlite driver used: its images are listed at once, recorded by verify(), and its cache.db is not one of them', async (t) => {
      const { dir, open } = fixture(t);
      const sqlite = await ImageCache.create({ imageCacheDir: dir('switched'), logger: silentLogger });
      await put(sqlite, UUID);
      await sqlite.close();
      assert.equal(fs.existsSync(path.join(dir('switched'), 'cache.db')), true);
      const cache = await open('switched');
      const listed = await cache.getCachedImages();
      assert.deepEqual(listed.map((i) => [i.imageId, i.hits, i.size]), [[UUID, 0, 1024]]);
      assert.deepEqual(await rowsOf(urlOf(cache)), [], 'listing wrote a row');
      assert.deepEqual(await cache.verify(), { ...NO_REPAIRS, filesAdopted: 1 });
      assert.deepEqual(await rowsOf(urlOf(cache)), [{ image_id: UUID, hits: 0 }]);
      assert.deepEqual(await cache.getCachedImages(), listed, 'adopting the file changed what the listing shows');
      assert.deepEqual(await cache.verify(), NO_REPAIRS);
      await assert.rejects(cache.isCached('cache.db'), INVALID_IMAGE_ID);
      assert.equal(await cache.deleteAllCachedImages(), 1);
      assert.equal(fs.existsSync(path.join(dir('switched'), 'cache.db')), true);
    });
  });

  describe('retries', () => {
    /**
     * PostgreSQL checks a waiting session for a deadlock once, deadlock_timeout
     * after it starts to wait, so the session that closes a cycle is the one
     * that finds it (a session already waiting has done its check). To make the
     * driver's session the victim, the driver must be the last to wait: a gate
     * holds row A, the driver's DELETE waits for it, the test's transaction
     * (which holds B) queues behind the driver for A, and only then the gate
     * opens: the driver takes A and waits for B while the test waits for the
     * driver. (Locking A straight after the driver blocks on B makes the
     * test's own session the one that detects the deadlock, after its own
     * timeout, and the driver never sees an error.)
     */
    it('a real deadlock between the driver\'s delete and another transaction (40P01) is retried, and the delete then succeeds', async (t) => {
      const schema = 'deadlock_retry';
      await db.query(`CREATE SCHEMA ${schema}`);
      // Ended (rolled back) after the test before the cache is closed, so that nothing waits on them.
      const tx = await session(t);
      const gate = await session(t);
      t.after(() => db.query(`DROP SCHEMA ${schema} CASCADE`));
      const { open } = fixture(t);
      // The superuser may lower deadlock_timeout for the driver's own sessions only.
      const cache = await open('deadlock-node', { databaseConnection: db.urlWith({ options: `-c deadlock_timeout=100ms -c search_path=${schema}` }) });
      const table = `${schema}.cached_images`;
      // Sorted, the driver deletes A before B; in a fresh table A is also first in every scan order.
      const [a, b] = ['deadlock-a', 'deadlock-b'];
      await put(cache, a);
      await put(cache, b);
      const deadlocks = async () => Number((await db.query<{ n: string }>('SELECT deadlocks AS n FROM pg_stat_database WHERE datname = current_database()'))[0]!.n);
      const deadlocksBefore = await deadlocks();

      // The test's transaction must never be the victim.
      await tx.client.query("SET deadlock_timeout = '10s'");
      await tx.client.query('BEGIN');
      assert.equal((await tx.client.query(`UPDATE ${table} SET hits = hits + 1 WHERE image_id = $1`, [b])).rowCount, 1);
      await gate.client.query('BEGIN');
      assert.equal((await gate.client.query(`SELECT 1 FROM ${table} WHERE image_id = $1 FOR UPDATE`, [a])).rowCount, 1);

      let outcome: string | undefined;
      const deleting = cache.deleteCachedImages([b, a]).then(
        (n) => ((outcome = `resolved (${n})`), n),
        (err: unknown) => {
          outcome = `failed: ${String(err)}`;
          throw err;
        },
      );
      deleting.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled
      const settledEarly = () => (outcome === undefined ? undefined : `the driver's delete ${outcome} while it should have been waiting`);
      const waitingOn = (holder: number) => pollRow<{ pid: number }>(
        `the driver's delete to wait on session ${holder}`,
        `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'image-cache' AND $1 = ANY(pg_blocking_pids(pid))`,
        [holder],
        settledEarly,
      );

      const driver = await waitingOn(gate.pid);
      const updatingA = tx.client.query(`UPDATE ${table} SET hits = hits + 1 WHERE image_id = $1`, [a]);
      updatingA.catch(() => {}); // awaited below
      await pollRow('the test transaction to queue behind the driver for row A', 'SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND $2 = ANY(pg_blocking_pids($1))', [tx.pid, driver.pid], settledEarly);
      await gate.client.query('ROLLBACK');

      // The cycle: the driver's session finds it, its statement is rolled back, and the test's UPDATE goes through.
      const updated = await withinDeadline(updatingA, 10_000, 'the test transaction\'s UPDATE of row A (if it failed with 40P01, the test\'s own session was the victim)');
      assert.equal(updated.rowCount, 1);
      // The driver retried: its DELETE now waits for the test's transaction instead of having failed.
      await waitingOn(tx.pid);
      await tx.client.query('COMMIT');
      assert.equal(await withinDeadline(deleting, 10_000, 'the driver\'s delete after the test transaction committed'), 2);
      assert.deepEqual(await db.query(`SELECT image_id FROM ${table}`), []);
      assert.deepEqual(await cachedIds(cache), []);
      // PostgreSQL counted the deadlock (a session reports its statistics within about a second of going idle).
      await pollRow('pg_stat_database to count the deadlock', 'SELECT 1 WHERE (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()) > $1', [deadlocksBefore]);
    });

    it('a commit\'s record that PostgreSQL refuses once is written by the retry only when the refusal is retryable; otherwise verify() records the file', async (t) => {
      const schema = 'record_refusal';
      await db.query(`CREATE SCHEMA ${schema}`);
      t.after(() => db.query(`DROP SCHEMA ${schema} CASCADE`));
      const errors: Array<{ message: string; code: unknown }> = [];
      const logger: Logger = { ...silentLogger, error: (fields, message) => errors.push({ message, code: (fields.err as { code?: unknown } | undefined)?.code }) };
      const { open } = fixture(t);
      const cache = await open('refusing-node', { databaseConnection: db.urlWith({ options: `-c search_path=${schema}` }), logger });
      // The server refuses the first insert of each listed image with the listed SQLSTATE; a
      // sequence counts the attempts (nextval() is not rolled back with the refused statement).
      await db.query(`
        CREATE TABLE ${schema}.refusals (image_id text PRIMARY KEY, sqlstate text NOT NULL, attempts regclass NOT NULL);
        CREATE SEQUENCE ${schema}.retryable_attempts;
        CREATE SEQUENCE ${schema}.fatal_attempts;
        INSERT INTO ${schema}.refusals VALUES ('retryable', '40001', '${schema}.retryable_attempts'), ('fatal', '23514', '${schema}.fatal_attempts');
        CREATE FUNCTION ${schema}.refuse_first_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE refusal record;
        BEGIN
          SELECT * INTO refusal FROM ${schema}.refusals WHERE image_id = NEW.image_id;
          IF FOUND AND nextval(refusal.attempts) = 1 THEN
            RAISE EXCEPTION 'refused by the test' USING ERRCODE = refusal.sqlstate;
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_first_insert BEFORE INSERT ON ${schema}.cached_images FOR EACH ROW EXECUTE FUNCTION ${schema}.refuse_first_insert();
      `);
      const attempts = async (sequence: string) =>
        Number((await db.query<{ n: string }>(`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM ${schema}.${sequence}`))[0]!.n);
      const rows = () => db.query(`SELECT image_id, hits, size::int AS size FROM ${schema}.cached_images ORDER BY image_id COLLATE "C"`);

      // 40001 (serialization_failure): refused, retried, recorded.
      await put(cache, 'retryable');
      assert.equal(await attempts('retryable_attempts'), 2, 'refused once, then inserted by the retry');
      assert.deepEqual(await rows(), [{ image_id: 'retryable', hits: 0, size: 1024 }]);
      assert.deepEqual(errors, []);

      // 23514 (check_violation): not retried. The image is cached all the same (published before it is recorded) and listed from its file.
      await put(cache, 'fatal');
      assert.equal(await attempts('fatal_attempts'), 1, 'a refusal that is not retryable was retried');
      assert.deepEqual(await rows(), [{ image_id: 'retryable', hits: 0, size: 1024 }]);
      assert.deepEqual(errors, [{ message: 'could not record a cached image; verify() will record it from its file', code: '23514' }]);
      assert.deepEqual(await cachedIds(cache), ['fatal', 'retryable']);
      assert.deepEqual(await read(cache, 'fatal'), FIXTURE_DATA);
      assert.deepEqual(await cache.verify(), NO_REPAIRS, 'the read recorded the file already');
      assert.deepEqual(await rows(), [{ image_id: 'fatal', hits: 1, size: 1024 }, { image_id: 'retryable', hits: 0, size: 1024 }]);
    });
  });
});
