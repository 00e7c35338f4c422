/**
 * Warming the fleet: `PUT /v2/cache/{id}` with `x-image-cache-scope: cluster`
 * (and `image-cache queue-image --all-nodes`) queues an image on every node
 * of one PostgreSQL database; each fetches it, and the upstream is read once.
 * `GET /v2/cache/nodes/{id}` answers Glance 2026.2's bare list of URLs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { runCli } from '../cli/helpers.js';
import { imageBytes, startFakeGlance, type FakeGlance } from '../support/fake-glance.js';
import { freePort } from '../support/processes.js';
import { fetchAll, startFakeGlanceAndNode, startTestNode, until, type NodeUnderTest } from './helpers.js';

const missing = await unreachableReason();
if (missing !== undefined && process.env.CI) throw new Error(missing);

const TOKEN = 'operator-token';
const json = (body: Buffer): any => JSON.parse(body.toString());

describe('queueing an image on every node of the cluster', { skip: missing }, () => {
  let fake: FakeGlance;
  let guarded: FakeGlance;
  before(async () => {
    // Slow enough that the nodes' fills overlap, as a fleet's do. No tokens asked: the prefetches
    // are the nodes' own fetches, which a node in front of a Glance that wants one makes with its
    // service credentials (keystone_authtoken); these nodes have none.
    fake = await startFakeGlance({ bytesPerSecond: 64 * 1024 * 1024 });
    guarded = await startFakeGlance({ validTokens: [TOKEN] });
  });
  after(async () => {
    await fake?.close();
    await guarded?.close();
  });

  /** Three nodes on a database of their own, and a fourth that registered and has gone (its node_reference row stays, as Glance's do). */
  async function startFleet(t: TestContext, upstream: FakeGlance = fake): Promise<{ nodes: NodeUnderTest[]; gone: string }> {
    const db = new TestDatabase();
    await db.create();
    const start = async (): Promise<NodeUnderTest> => {
      const port = await freePort(0);
      return startTestNode(t, { upstreamUrl: upstream.url, bindPort: port, peerFill: true }, {
        imageCacheDriver: 'centralized_db',
        databaseConnection: db.url,
        workerSelfReferenceUrl: `http://127.0.0.1:${port}`,
      });
    };
    const nodes = [await start(), await start(), await start()];
    const goneNode = await start();
    await goneNode.node.close();
    // Registered first, so run last: the nodes are closed before their database goes.
    t.after(() => db.drop());
    return { nodes, gone: goneNode.url };
  }

  it('PUT with x-image-cache-scope: cluster queues it on each node, which all cache it from one upstream read; a node gone is reported, not waited for', async (t) => {
    const { nodes, gone } = await startFleet(t);
    const data = imageBytes(12 * 1024 * 1024 + 5, 1);
    const image = await fake.addImage({ data });
    const started = Date.now();
    const response = await fetchAll(`${nodes[0]!.url}/v2/cache/${image.id}`, { method: 'PUT', headers: { 'x-auth-token': TOKEN, 'x-image-cache-scope': 'cluster' } });
    assert.equal(response.status, 202);
    assert.ok(Date.now() - started < 3_000, `the call took ${Date.now() - started} ms with a node gone`);
    const answer = json(response.body) as { image_id: string; nodes: { url: string; status?: number; error?: string }[] };
    assert.equal(answer.image_id, image.id);
    const byUrl = new Map(answer.nodes.map((node) => [node.url, node]));
    assert.deepEqual([...byUrl.keys()].sort(), [...nodes.map((node) => node.url), gone].sort());
    for (const node of nodes) assert.equal(byUrl.get(node.url)!.status, 202, `${node.url}: ${byUrl.get(node.url)!.error}`);
    assert.equal(byUrl.get(gone)!.status, undefined);
    assert.match(byUrl.get(gone)!.error!, /ECONNREFUSED|cannot|connect/i);

    for (const node of nodes) await until(() => node.node.cache.isCached(image.id), `node ${node.url} to cache the image`, 30_000);
    assert.equal(fake.fileRequests(image.id), 1, 'the upstream was read more than once');
    assert.equal(fake.bytesSent(image.id), data.length);
    const listed = await fetchAll(`${nodes[1]!.url}/v2/cache/nodes/${image.id}`, { headers: { 'x-auth-token': TOKEN } });
    assert.equal(listed.status, 200);
    assert.deepEqual(json(listed.body), nodes.map((node) => node.url).sort());
  });

  it('image-cache queue-image --all-nodes does the same, a line per image and per node that did not queue it (exit 1)', async (t) => {
    const { nodes, gone } = await startFleet(t);
    const image = await fake.addImage({ data: imageBytes(3 * 1024 * 1024, 2) });
    const run = await runCli(['queue-image', image.id, '--all-nodes', '--url', nodes[2]!.url, '--token', TOKEN]);
    assert.equal(run.status, 1, run.stderr);
    assert.match(run.stdout, new RegExp(`^Queued ${image.id} on 3 of 4 nodes\\.$`, 'm'));
    assert.match(run.stdout, new RegExp(`^  not on ${gone}: `, 'm'));
    for (const node of nodes) await until(() => node.node.cache.isCached(image.id), `node ${node.url} to cache the image`, 30_000);
    assert.equal(fake.fileRequests(image.id), 1);

    const local = await runCli(['queue-image', image.id, '--all-nodes', '--local', '--image-cache-dir', nodes[0]!.dir]);
    assert.equal(local.status, 2);
    assert.match(local.stderr, /--all-nodes queues through a running node: give --url/);
  });

  it('queues nothing anywhere for a caller the upstream refuses, or an image it does not know; lists no nodes for an unknown image (404)', async (t) => {
    const { nodes } = await startFleet(t, guarded);
    const image = await guarded.addImage({ data: imageBytes(1024 * 1024, 3) });
    const refused = await fetchAll(`${nodes[0]!.url}/v2/cache/${image.id}`, { method: 'PUT', headers: { 'x-auth-token': 'not-a-token', 'x-image-cache-scope': 'cluster' } });
    assert.equal(refused.status, 401);
    const unknown = await fetchAll(`${nodes[0]!.url}/v2/cache/00000000-0000-4000-8000-000000000000`, { method: 'PUT', headers: { 'x-auth-token': TOKEN, 'x-image-cache-scope': 'cluster' } });
    assert.equal(unknown.status, 404);
    for (const node of nodes) assert.deepEqual(await node.node.cache.getQueuedImages(), []);
    assert.equal(guarded.fileRequests(image.id), 0);

    const notListed = await fetchAll(`${nodes[0]!.url}/v2/cache/nodes/00000000-0000-4000-8000-000000000000`, { headers: { 'x-auth-token': TOKEN } });
    assert.equal(notListed.status, 404);
    const notCached = await fetchAll(`${nodes[0]!.url}/v2/cache/nodes/${image.id}`, { headers: { 'x-auth-token': TOKEN } });
    assert.equal(notCached.status, 200);
    assert.deepEqual(json(notCached.body), []);

    const badScope = await fetchAll(`${nodes[0]!.url}/v2/cache/${image.id}`, { method: 'PUT', headers: { 'x-auth-token': TOKEN, 'x-image-cache-scope': 'galaxy', accept: 'application/json' } });
    assert.equal(badScope.status, 400);
    assert.match(json(badScope.body).message, /x-image-cache-scope/);
  });
});

describe('queueing on the cluster without centralized_db', () => {
  it('is a 409: the node knows no other nodes', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(1024) });
    const response = await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT', headers: { 'x-image-cache-scope': 'cluster', accept: 'application/json' } });
    assert.equal(response.status, 409);
    assert.match(json(response.body).message, /centralized_db/);
    assert.deepEqual(await fetchAll(`${url}/v2/cache`).then((r) => json(r.body).queued_images), []);
  });
});
