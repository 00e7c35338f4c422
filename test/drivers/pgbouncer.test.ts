/**
 * The centralized_db driver through a real PgBouncer in transaction-pooling
 * mode, as many Glance deployments put one in front of PostgreSQL.
 *
 * Transaction pooling hands each transaction whatever server connection is
 * free, so a client may send no start-up options (PgBouncer refuses them),
 * must not leave session state (SET) behind for other clients, and cannot
 * rely on named prepared statements (PgBouncer 1.18 does not carry them
 * across transactions). The first tests show that this PgBouncer does
 * enforce that, so that the driver's tests after them cannot pass by accident.
 *
 * The pool has two server connections, far fewer than the driver's clients,
 * so that the driver's transactions really share them.
 *
 * Without pgbouncer (or PostgreSQL) the suite is skipped with one line saying
 * why, except under CI (CI=true), where that is a failure.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import pg from 'pg';
import { ImageCache, silentLogger, type ImageCacheOptions } from '../../src/index.js';
import { TEST_ENGINE, cachedIds, patternedBytes, put, readAll, tempRoot } from '../helpers.js';
import { findPgBouncer, startPgBouncer, type PgBouncer } from './pgbouncer-helpers.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from './pg-helpers.js';

const POOL_SIZE = 2;

const binary = findPgBouncer();
const unreachable = await unreachableReason();
const missing = binary === undefined
  ? 'pgbouncer is not installed (looked in /usr/sbin, /usr/bin, /usr/local and $PATH; .ci/run installs Debian\'s package)'
  : unreachable !== undefined
    ? `no PostgreSQL server at ${ADMIN_URL} (${unreachable}); set IMAGE_CACHE_TEST_PG_URL to use another`
    : undefined;
const skip = missing !== undefined && process.env.CI !== 'true' ? missing : false;

const NO_REPAIRS = { recordsDropped: 0, filesAdopted: 0, sizesCorrected: 0, queueMarkersDropped: 0 };

describe('centralized_db through PgBouncer (transaction pooling)', { skip }, () => {
  const db = new TestDatabase();
  let bouncer: PgBouncer | undefined;
  /**
   * The test's own connections straight to the server (not TestDatabase.query,
   * whose pool has no 'error' listener: a connection the DROP DATABASE ... WITH (FORCE)
   * of the teardown terminates before it has closed would crash the process).
   */
  let direct: pg.Pool | undefined;

  before(async () => {
    if (missing !== undefined) throw new Error(`required under CI: ${missing}`);
    await db.create();
    direct = new pg.Pool({ connectionString: db.url, max: 2 });
    direct.on('error', () => {}); // only ever a connection terminated by the teardown
    bouncer = await startPgBouncer(binary!, { poolSize: POOL_SIZE });
  });
  after(async () => {
    await bouncer?.stop();
    await direct?.end();
    await db.drop();
  });

  /** A statement in the test database, straight to the server. */
  async function sql<R extends pg.QueryResultRow = Record<string, unknown>>(text: string, values: unknown[] = []): Promise<R[]> {
    if (direct === undefined) throw new Error('the test database is not created');
    return (await direct.query<R>(text, values)).rows;
  }

  const pgb = (): PgBouncer => {
    if (bouncer === undefined) throw new Error('pgbouncer is not running');
    return bouncer;
  };

  /** A client of the test database through PgBouncer, ended after the test. */
  async function client(t: TestContext, params: Record<string, string> = {}): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: pgb().url(db.name, params), connectionTimeoutMillis: 5_000 });
    t.after(() => c.end().catch(() => {}));
    await c.connect();
    return c;
  }

  /** ImageCaches in a temporary directory, connected through PgBouncer (closed after the test). */
  function fixture(t: TestContext) {
    const { root, track } = tempRoot(t, 'image-cache-pgbouncer-');
    const open = async (name: string, options: Partial<ImageCacheOptions> = {}): Promise<ImageCache> => {
      const cache = track(await ImageCache.create({
        imageCacheDir: path.join(root, name),
        imageCacheDriver: 'centralized_db',
        databaseConnection: pgb().url(db.name),
        workerSelfReferenceUrl: `http://${name}.${path.basename(root)}:9292`,
        logger: silentLogger,
        ...options,
      }, TEST_ENGINE));
      assert.equal(cache.driver.name, 'centralized_db', `ImageCache.create fell back to ${cache.driver.name}`);
      return cache;
    };
    return { open, dir: (name: string) => path.join(root, name) };
  }

  const urlOf = (cache: ImageCache): string => cache.options.workerSelfReferenceUrl!;

  /** A node's rows, straight from the table (not through PgBouncer). */
  function rowsOf(cache: ImageCache): Promise<Array<{ image_id: string; hits: number; size: number }>> {
    return sql(
      `SELECT c.image_id, c.hits, c.size::int AS size FROM cached_images c JOIN node_reference n USING (node_reference_id)
       WHERE n.node_reference_url = $1 ORDER BY c.image_id COLLATE "C"`,
      [urlOf(cache)],
    );
  }

  /**
   * Holds every server connection of the pool at once (each in a transaction
   * of its own, so PgBouncer must hand each a different one) and reports
   * each one's session state.
   */
  async function serverConnections(t: TestContext, thenRun?: string): Promise<Array<{ pid: number; synchronous_commit: string; prepared: string[] }>> {
    const holders = await Promise.all(Array.from({ length: POOL_SIZE }, () => client(t)));
    const states = [];
    for (const holder of holders) {
      await holder.query('BEGIN');
      const { rows } = await holder.query<{ pid: number; synchronous_commit: string; prepared: string[] }>(
        "SELECT pg_backend_pid() AS pid, current_setting('synchronous_commit') AS synchronous_commit, array(SELECT name FROM pg_prepared_statements ORDER BY name) AS prepared",
      );
      states.push(rows[0]!);
      if (thenRun !== undefined) await holder.query(thenRun);
    }
    for (const holder of holders) await holder.query('COMMIT');
    assert.equal(new Set(states.map((s) => s.pid)).size, POOL_SIZE, 'each transaction held a server connection of its own');
    return states;
  }

  describe('what PgBouncer enforces', () => {
    it('refuses a client whose URL carries start-up options; the same URL straight to PostgreSQL works', async (t) => {
      const refused = new pg.Client({ connectionString: pgb().url(db.name, { options: '-c synchronous_commit=off' }), connectionTimeoutMillis: 5_000 });
      t.after(() => refused.end().catch(() => {}));
      await assert.rejects(refused.connect(), /unsupported startup parameter/);

      const direct = new pg.Client({ connectionString: db.urlWith({ options: '-c synchronous_commit=off' }), connectionTimeoutMillis: 5_000 });
      t.after(() => direct.end().catch(() => {}));
      await direct.connect();
      assert.deepEqual((await direct.query('SHOW synchronous_commit')).rows, [{ synchronous_commit: 'off' }]);

      const plain = await client(t);
      assert.deepEqual((await plain.query('SELECT current_database() AS db')).rows, [{ db: db.name }]);
    });

    it('loses a named prepared statement when the next transaction lands on another server connection', async (t) => {
      const probe = await client(t);
      await probe.query({ name: 'probe', text: 'SELECT 1 AS one' });
      // Take both server connections: one has the statement, the other does not.
      const holders = [await client(t), await client(t)];
      const has: number[] = [];
      for (const holder of holders) {
        await holder.query('BEGIN');
        has.push((await holder.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name = 'probe'")).rows[0]!.n);
      }
      assert.deepEqual([...has].sort(), [0, 1], 'exactly one server connection holds the statement');
      // Free the one without it: the probe's next transaction can only go there.
      await holders[has.indexOf(0)]!.query('COMMIT');
      await assert.rejects(probe.query({ name: 'probe', text: 'SELECT 1 AS one' }), /prepared statement "probe" does not exist/);
      // Leave the server connections as they were, for the tests after this one.
      await holders[has.indexOf(1)]!.query('DEALLOCATE probe');
      await holders[has.indexOf(1)]!.query('COMMIT');
    });

    it('lets a session SET outlive its client on a shared server connection (what the probe of server connections below detects)', async (t) => {
      const [fresh] = await sql<{ synchronous_commit: string }>("SELECT current_setting('synchronous_commit') AS synchronous_commit");
      const other = fresh!.synchronous_commit === 'off' ? 'local' : 'off';
      const setter = await client(t);
      await setter.query(`SET synchronous_commit = ${other}`);
      await setter.end();
      const states = await serverConnections(t, 'RESET synchronous_commit');
      assert.deepEqual(states.map((s) => s.synchronous_commit).sort(), [fresh!.synchronous_commit, other].sort());
      assert.deepEqual((await serverConnections(t)).map((s) => s.synchronous_commit), [fresh!.synchronous_commit, fresh!.synchronous_commit]);
    });
  });

  describe('the driver', () => {
    it('works entirely through PgBouncer on an empty database: tables, caching, reads, hits, listings, nodes, prune, delete, verify, clean', async (t) => {
      const { open, dir } = fixture(t);
      const tables = () => sql<{ tables: boolean; index: boolean }>(
        `SELECT to_regclass('public.node_reference') IS NOT NULL AND to_regclass('public.cached_images') IS NOT NULL AS tables,
                to_regclass('public.cached_images_node_reference_id_idx') IS NOT NULL AS index`,
      );
      assert.deepEqual(await tables(), [{ tables: false, index: false }], 'the database starts empty');
      const a = await open('node-a', { imageCacheMaxSize: 3 * 1024 });
      const b = await open('node-b');
      assert.deepEqual(await tables(), [{ tables: true, index: true }], 'configure() created the tables through PgBouncer');
      const clients = await pgb().admin<{ database: string; application_name: string }>('SHOW CLIENTS');
      assert.ok(
        clients.some((c) => c.database === db.name && c.application_name === 'image-cache'),
        `the driver is not among PgBouncer's clients: ${JSON.stringify(clients)}`,
      );

      const data = (n: number) => patternedBytes(1024).map((byte) => (byte + n) % 256);
      for (const n of [1, 2, 3]) await put(a, `img-${n}`, Buffer.from(data(n)));
      await put(b, 'img-1', Buffer.alloc(100, 7));
      for (let i = 0; i < 3; i++) assert.deepEqual(await readAll(a, 'img-1'), Buffer.from(data(1)));
      assert.deepEqual(await readAll(a, 'img-2'), Buffer.from(data(2)));
      assert.deepEqual(await readAll(b, 'img-1'), Buffer.alloc(100, 7));

      assert.equal(await a.getHitCount('img-1'), 3);
      assert.equal(await a.getHitCount('img-2'), 1);
      assert.equal(await a.getHitCount('img-3'), 0);
      assert.equal(await b.getHitCount('img-1'), 1);
      assert.deepEqual((await a.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['img-1', 3, 1024], ['img-2', 1, 1024], ['img-3', 0, 1024]]);
      assert.deepEqual((await b.getCachedImages()).map((i) => [i.imageId, i.hits, i.size]), [['img-1', 1, 100]]);
      assert.equal(await a.getCacheSize(), 3072);
      const both = [urlOf(a), urlOf(b)].sort();
      assert.deepEqual(await a.getCachedNodes('img-1'), both);
      assert.deepEqual(await b.getCachedNodes('img-1'), both);
      assert.deepEqual(await b.getCachedNodes('img-2'), [urlOf(a)]);
      assert.deepEqual(await b.getCachedNodes('img-9'), []);

      // Over the limit by one image: the least recently used one (img-3, never read) goes.
      await put(a, 'img-4', Buffer.from(data(4)));
      assert.deepEqual(await a.getLeastRecentlyAccessed(), { imageId: 'img-3', size: 1024 });
      assert.deepEqual(await a.prune(), { totalFilesPruned: 1, totalBytesPruned: 1024 });
      assert.deepEqual(await cachedIds(a), ['img-1', 'img-2', 'img-4']);
      assert.deepEqual(await b.getCachedNodes('img-3'), []);

      await a.deleteCachedImage('img-2');
      assert.deepEqual(await b.getCachedNodes('img-2'), []);

      // Behind the nodes' backs: b's file deleted, a file copied into a's directory, one of a's files rewritten shorter.
      fs.unlinkSync(path.join(dir('node-b'), 'img-1'));
      fs.writeFileSync(path.join(dir('node-a'), 'img-5'), Buffer.alloc(50));
      fs.writeFileSync(path.join(dir('node-a'), 'img-4'), Buffer.alloc(10));
      assert.deepEqual(await a.verify(), { ...NO_REPAIRS, filesAdopted: 1, sizesCorrected: 1 });
      assert.deepEqual(await a.getCachedNodes('img-1'), both, 'b has not verified yet');
      assert.deepEqual(await b.verify(), { ...NO_REPAIRS, recordsDropped: 1 });
      assert.deepEqual(await a.getCachedNodes('img-1'), [urlOf(a)]);

      // clean(): invalid/ emptied, then verify(), which drops the queue marker of a cached image.
      fs.writeFileSync(path.join(dir('node-a'), 'invalid', 'img-6'), Buffer.alloc(5));
      fs.writeFileSync(path.join(dir('node-a'), 'queue', 'img-1'), '');
      assert.deepEqual(await a.clean(), { invalid: 1, stalled: 0, ...NO_REPAIRS, queueMarkersDropped: 1 });
      assert.deepEqual(await a.clean(), { invalid: 0, stalled: 0, ...NO_REPAIRS });

      assert.deepEqual(await rowsOf(a), [
        { image_id: 'img-1', hits: 3, size: 1024 },
        { image_id: 'img-4', hits: 0, size: 10 },
        { image_id: 'img-5', hits: 0, size: 50 },
      ]);
      assert.deepEqual(await rowsOf(b), []);
      assert.equal(await a.deleteAllCachedImages(), 3);
      assert.deepEqual(await rowsOf(a), []);
      assert.deepEqual(await cachedIds(a), []);
    });

    it('leaves nothing behind on the shared server connections: no session settings, no prepared statements', async (t) => {
      const { open } = fixture(t);
      const cache = await open('state-node');
      const image = randomUUID();
      await put(cache, image);
      await Promise.all(Array.from({ length: 10 }, () => readAll(cache, image)));
      assert.equal(await cache.getHitCount(image), 10);
      await cache.verify();
      await cache.deleteCachedImage(image);
      // What a fresh session on the server says, for comparison (the driver turns it off inside its own write transactions only).
      const [fresh] = await sql<{ synchronous_commit: string }>("SELECT current_setting('synchronous_commit') AS synchronous_commit");
      for (const server of await serverConnections(t)) {
        assert.equal(server.synchronous_commit, fresh!.synchronous_commit, `server connection ${server.pid} kept the driver's setting`);
        assert.deepEqual(server.prepared, [], `server connection ${server.pid} holds named prepared statements`);
      }
    });

    it('concurrent operations of several caches interleave on the two server connections and keep hit counts exact', async (t) => {
      const { open } = fixture(t);
      // a and b: two processes of one node, on one directory; c: another node.
      const a = await open('shared-node');
      const b = await open('shared-node');
      const c = await open('other-node');
      const image = randomUUID();
      await put(a, image);
      await put(c, image, Buffer.alloc(10));
      const rounds = 5;
      const perRound = 20;
      const added: string[] = [];
      for (let round = 0; round < rounds; round++) {
        const fresh = `${image}.${round}`;
        added.push(fresh);
        await Promise.all([
          ...Array.from({ length: perRound }, () => readAll(a, image)),
          ...Array.from({ length: perRound }, () => readAll(b, image)),
          ...Array.from({ length: perRound / 2 }, () => readAll(c, image)),
          put(round % 2 === 0 ? a : b, fresh),
          ...Array.from({ length: 3 }, () => a.getCachedImages()),
          ...Array.from({ length: 3 }, () => b.listLeastRecentlyAccessed()),
          a.getHitCount(image),
          c.getCachedNodes(image),
          b.getCacheSize(),
        ]);
      }
      const servers = (await pgb().admin<{ database: string }>('SHOW SERVERS')).filter((s) => s.database === db.name);
      const clients = (await pgb().admin<{ database: string; application_name: string }>('SHOW CLIENTS'))
        .filter((cl) => cl.database === db.name && cl.application_name === 'image-cache');
      assert.ok(servers.length <= POOL_SIZE, `${servers.length} server connections`);
      assert.ok(clients.length > POOL_SIZE, `only ${clients.length} driver clients: they did not have to share ${POOL_SIZE} server connections`);

      const shared = rounds * perRound * 2;
      // Each process writes its reads once a second (or when it lists): the other process's are in once it has listed.
      await b.getCachedImages();
      assert.equal(await a.getHitCount(image), shared);
      assert.equal(await b.getHitCount(image), shared);
      assert.equal(await c.getHitCount(image), rounds * (perRound / 2));
      assert.deepEqual(await a.getCachedNodes(image), [urlOf(a), urlOf(c)].sort());
      assert.deepEqual(await rowsOf(a), [{ image_id: image, hits: shared, size: 1024 }, ...added.map((id) => ({ image_id: id, hits: 0, size: 1024 }))]);
      assert.deepEqual(await rowsOf(c), [{ image_id: image, hits: rounds * (perRound / 2), size: 10 }]);
      assert.deepEqual(await a.verify(), NO_REPAIRS);
    });
  });
});
