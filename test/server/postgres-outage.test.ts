/**
 * A node on the centralized_db driver while its PostgreSQL goes away and
 * comes back (issue 9): cached and upstream bytes are still served, the
 * management calls that need the records answer 503 with the reason, and
 * once the server is back nothing is lost — the images cached meanwhile get
 * their rows and the hits served meanwhile are counted, without anyone
 * running verify.
 *
 * Each test runs a PostgreSQL of its own (test/support/postgres-server.ts),
 * which it stops and restarts for real; the node runs in this process in
 * front of the fake Glance.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import pg from 'pg';
import type { WireCacheListing } from '../../src/cache/wire.js';
import { imageBytes, startFakeGlance, type FakeGlance, type FakeImage } from '../support/fake-glance.js';
import { PostgresServer } from '../support/postgres-server.js';
import { fetchAll, fileUrl, metric, startTestNode, until, type NodeUnderTest } from './helpers.js';

const NODE_URL = 'http://cache-node-1.test:9292';

interface Outage extends NodeUnderTest {
  postgres: PostgresServer;
  fake: FakeGlance;
  /** This node's rows in cached_images, read straight from PostgreSQL. */
  rows(): Promise<Map<string, { hits: number; size: number }>>;
}

/** A PostgreSQL of the test's own, the fake Glance, and a node on centralized_db over both; all gone after the test. */
async function setUp(t: TestContext): Promise<Outage> {
  const postgres = await PostgresServer.start();
  let node: NodeUnderTest;
  let fake: FakeGlance;
  try {
    fake = await startFakeGlance();
    t.after(() => fake.close());
    // No prune or clean on timers: the clean runs verify(), and the rows must come back without it.
    node = await startTestNode(t, { upstreamUrl: fake.url, pruneInterval: 0, cleanInterval: 0 }, {
      imageCacheDriver: 'centralized_db',
      databaseConnection: postgres.url(),
      workerSelfReferenceUrl: NODE_URL,
    });
  } catch (err) {
    await postgres.destroy();
    throw err;
  }
  // Registered after the node's own after-hook, so that the node closes while its server still runs.
  t.after(() => postgres.destroy());
  // ImageCache falls back to sqlite when centralized_db cannot be configured: that would test nothing here.
  assert.equal(node.node.cache.driver.name, 'centralized_db');
  const rows = async (): Promise<Map<string, { hits: number; size: number }>> => {
    const client = new pg.Client({ connectionString: postgres.url(), connectionTimeoutMillis: 5_000 });
    await client.connect();
    try {
      const result = await client.query<{ image_id: string; hits: number; size: string }>(
        `SELECT c.image_id, c.hits, c.size FROM cached_images AS c JOIN node_reference AS n USING (node_reference_id)
         WHERE n.node_reference_url = $1`,
        [NODE_URL],
      );
      return new Map(result.rows.map((row) => [row.image_id, { hits: row.hits, size: Number(row.size) }]));
    } finally {
      await client.end();
    }
  };
  return { ...node, postgres, fake, rows };
}

const json = <T>(body: Buffer): T => JSON.parse(body.toString()) as T;

/** A download that must succeed with exactly the image's bytes. */
async function expectImage(url: string, image: FakeImage, data: Buffer): Promise<void> {
  const response = await fetchAll(fileUrl(url, image.id));
  assert.equal(response.status, 200, `GET ${image.id}: ${response.status} ${response.body.toString().slice(0, 200)}`);
  assert.ok(response.body.equals(data), `GET ${image.id}: wrong bytes`);
}

/** The image files in the node's cache directory (not its sub-directories, nor anything else there). */
function cachedFiles(dir: string, ids: ReadonlySet<string>): Map<string, number> {
  const cacheDir = path.join(dir, 'cache');
  const files = new Map<string, number>();
  for (const name of fs.readdirSync(cacheDir)) if (ids.has(name)) files.set(name, fs.statSync(path.join(cacheDir, name)).size);
  return files;
}

describe('a centralized_db node while its PostgreSQL is down', () => {
  it('rides out an outage: data served throughout, management 503 while down, records and hits complete once it is back', async (t) => {
    const { url, dir, node, postgres, fake, rows } = await setUp(t);
    const data = {
      cached: imageBytes(300_000, 1),
      uncached: imageBytes(200_000, 2),
      queued: imageBytes(100_000, 3),
      deleted: imageBytes(50_000, 4),
    };
    const cached = await fake.addImage({ data: data.cached });
    const uncached = await fake.addImage({ data: data.uncached });
    const queued = await fake.addImage({ data: data.queued });
    const deleted = await fake.addImage({ data: data.deleted });

    // Before the outage: two images cached and recorded, one of them read once more from the cache.
    await expectImage(url, cached, data.cached);
    await expectImage(url, deleted, data.deleted);
    await until(async () => (await node.cache.isCached(cached.id)) && (await node.cache.isCached(deleted.id)), 'the first two images to be cached');
    await expectImage(url, cached, data.cached);
    await until(async () => (await rows()).get(cached.id)?.hits === 1 && (await rows()).has(deleted.id), 'the records and the hit of before the outage');

    await postgres.stop('fast');

    await t.test('PostgreSQL stopped: hits and misses are served, queueing works, listing and deleting answer 503 with the reason, /healthcheck answers 200', async () => {
      await expectImage(url, cached, data.cached);
      await expectImage(url, cached, data.cached);
      assert.equal(fake.fileRequests(cached.id), 1, 'the cached image was served from the cache');

      await expectImage(url, uncached, data.uncached);
      assert.equal(fake.fileRequests(uncached.id), 1, 'the upstream was asked once');
      await until(() => node.cache.isCached(uncached.id), 'the image fetched during the outage to be cached');
      await expectImage(url, uncached, data.uncached);
      assert.equal(fake.fileRequests(uncached.id), 1, 'the second download was a hit');

      const listing = await fetchAll(`${url}/v2/cache`, { headers: { accept: 'application/json' } });
      assert.equal(listing.status, 503);
      assert.match(json<{ message: string }>(listing.body).message, /^Service unavailable: the centralized_db driver's metadata store is unavailable: /);
      assert.equal(listing.headers['retry-after'], '5');

      const nodes = await fetchAll(`${url}/v2/cache/nodes/${cached.id}`);
      assert.equal(nodes.status, 503);

      // Queueing needs only a marker file and the upstream: it is accepted, and the image is fetched and cached.
      const queue = await fetchAll(`${url}/v2/cache/${queued.id}`, { method: 'PUT' });
      assert.equal(queue.status, 202);
      await until(() => node.cache.isCached(queued.id), 'the image queued during the outage to be cached');

      // A delete removes the file (the image is no longer served from here) but cannot remove its
      // record: 503 says it did not complete, and the row goes once the server is back.
      const deletion = await fetchAll(`${url}/v2/cache/${deleted.id}`, { method: 'DELETE', headers: { accept: 'application/json' } });
      assert.equal(deletion.status, 503);
      assert.match(json<{ message: string }>(deletion.body).message, /metadata store is unavailable/);
      assert.equal(await node.cache.isCached(deleted.id), false);

      // 200: the node still serves every image, cached or not, so a load balancer must keep sending
      // it traffic; taking all nodes out because their shared database is down would stop the data
      // path that does not need it. The 503s above tell operators what is wrong.
      const health = await fetchAll(`${url}/healthcheck`);
      assert.equal(health.status, 200);
      // The metrics too: the cache size (from the records) keeps its last value.
      assert.equal(await metric(url, 'image_cache_hit_responses_total'), 4);
    });

    await postgres.startAgain();

    await t.test('PostgreSQL started again: management answers 200, the images cached meanwhile have their rows, the deleted one has none, and every hit is counted, without verify', async () => {
      let listing: WireCacheListing | undefined;
      await until(async () => {
        const response = await fetchAll(`${url}/v2/cache`);
        if (response.status === 200) listing = json<WireCacheListing>(response.body);
        return response.status === 200;
      }, 'GET /v2/cache to answer 200 again', 30_000);
      assert.deepEqual(listing!.cached_images.map((image) => image.image_id).sort(), [cached.id, uncached.id, queued.id].sort());

      const expected = new Map([
        [cached.id, { hits: 3, size: cached.size }],
        [uncached.id, { hits: 1, size: uncached.size }],
        [queued.id, { hits: 0, size: queued.size }],
      ]);
      // The listing wrote the hits kept meanwhile before it read; the repair of the rows runs on its own timer.
      await until(async () => JSON.stringify([...(await rows())].sort()) === JSON.stringify([...expected].sort()), 'the rows to match the files and the hits served', 30_000)
        .catch(async (err: Error) => {
          assert.deepEqual(new Map([...(await rows())].sort()), new Map([...expected].sort()), err.message);
        });
      const nodes = await fetchAll(`${url}/v2/cache/nodes/${uncached.id}`);
      assert.equal(nodes.status, 200);
      assert.deepEqual(json(nodes.body), [NODE_URL]);
      const deletion = await fetchAll(`${url}/v2/cache/${cached.id}`, { method: 'DELETE' });
      assert.equal(deletion.status, 204);
      assert.equal((await rows()).has(cached.id), false);
    });
  });

  it('PostgreSQL restarted under load: no 5xx and every body right, then every cached file has its row and every hit is counted', async (t) => {
    const { url, dir, postgres, fake, rows } = await setUp(t);
    const images: Array<{ image: FakeImage; data: Buffer }> = [];
    for (let i = 0; i < 10; i++) {
      const data = imageBytes(64 * 1024 * (1 + (i % 5)) + i, 100 + i);
      images.push({ image: await fake.addImage({ data }), data });
    }
    // The clients download the images open so far: each restart opens more, so that misses
    // (fills, and their commits) run into it, while the images opened before are hits.
    let open = 4;
    let stop = false;
    let served = 0;
    const failures: string[] = [];
    const client = async (seed: number): Promise<void> => {
      for (let n = seed; !stop; n++) {
        const { image, data } = images[(n * 7 + seed) % open]!;
        try {
          const response = await fetchAll(fileUrl(url, image.id));
          if (response.status !== 200) failures.push(`${image.id}: ${response.status} ${response.body.toString().slice(0, 200)}`);
          else if (!response.body.equals(data)) failures.push(`${image.id}: wrong bytes`);
          served++;
        } catch (err) {
          failures.push(`${image.id}: ${(err as Error).message}`);
        }
      }
    };
    const clients = [1, 2, 3, 4].map((seed) => client(seed));
    const servedBeyond = async (n: number): Promise<void> => {
      const target = served + n;
      await until(() => served >= target || failures.length > 0, `${n} more downloads`, 30_000);
    };
    try {
      await servedBeyond(20);
      open = 7;
      await postgres.restart('fast');
      await servedBeyond(20);
      open = 10;
      await postgres.restart('fast');
      await servedBeyond(20);
    } finally {
      stop = true;
      await Promise.all(clients);
    }
    assert.deepEqual(failures, []);
    // Each image once more, so that every one has been asked for; its fill's commit may end a moment after its response.
    for (const { image, data } of images) await expectImage(url, image, data);
    const ids = new Set(images.map(({ image }) => image.id));
    await until(() => cachedFiles(dir, ids).size === images.length, 'every image to be cached');

    // Every file in the cache directory has its row, of its size; every hit served is counted.
    const files = cachedFiles(dir, ids);
    // The hit counter is read each time too: a hit's response ends a moment before it is counted.
    const expected = async (): Promise<string> => JSON.stringify({ rows: [...files].sort(), hits: await metric(url, 'image_cache_hit_responses_total') });
    const recorded = async (): Promise<string> => {
      const found = await rows();
      let hits = 0;
      for (const row of found.values()) hits += row.hits;
      return JSON.stringify({ rows: [...found].map(([id, row]) => [id, row.size]).sort(), hits });
    };
    await until(async () => (await recorded()) === (await expected()), 'a row for every cached file and every hit counted', 30_000)
      .catch(async (err: Error) => assert.equal(await recorded(), await expected(), err.message));
  });
});
