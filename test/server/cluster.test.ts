/**
 * Peer fill with real processes: nodes (`image-cache serve`, each a process
 * of its own) on one PostgreSQL database in front of the fake Glance, some
 * behind a fault proxy that stands where they say they are, so that the
 * others meet a peer that resets, stalls, lies about its bytes or dies
 * mid-stream as they would a real one. Whatever a peer does, every body a
 * client gets whole is the image, and a fill that lost its peer goes on from
 * the upstream with `Range: bytes=N-` from the bytes it has.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';
import { TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { imageBytes, startFakeGlance, type FakeGlance, type FakeGlanceOptions } from '../support/fake-glance.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startNodeProcess, type NodeProcess, type NodeSettings } from '../support/node-process.js';
import { freePort } from '../support/processes.js';
import { download, fetchAll, fileUrl, send, until } from './helpers.js';

const missing = await unreachableReason();
if (missing !== undefined && process.env.CI) throw new Error(missing);

const MIB = 1024 * 1024;
const TOKEN = 'caller-token';
const PEER_HEADER = 'x-image-cache-peer';
const REFUSAL_HEADER = 'x-image-cache-peer-refusal';

interface NodeSpec {
  /** Behind a fault proxy: the URL the node registers (worker_self_reference_url) is the proxy's. */
  proxied?: boolean;
  settings?: NodeSettings;
}

interface ClusterNode {
  process: NodeProcess;
  /** The node itself, for the test's own requests. */
  url: string;
  /** What the other nodes know it by. */
  selfUrl: string;
  proxy?: FaultProxy;
}

interface Cluster {
  fake: FakeGlance;
  db: TestDatabase;
  nodes: ClusterNode[];
}

/** A fake Glance, a database of its own and one node per spec on it; all gone after the test. */
async function startCluster(t: TestContext, fakeOptions: FakeGlanceOptions, specs: NodeSpec[]): Promise<Cluster> {
  const fake = await startFakeGlance(fakeOptions);
  const db = new TestDatabase();
  await db.create();
  const root = makeTempDir('image-cache-cluster-');
  const nodes: ClusterNode[] = [];
  t.after(async () => {
    await Promise.all(nodes.map((node) => node.process.stop()));
    await Promise.all(nodes.map((node) => node.proxy?.close()));
    await db.drop();
    await fake.close();
    removeDir(root);
  });
  for (const [index, spec] of specs.entries()) {
    const proxy = spec.proxied ? await startFaultProxy() : undefined;
    const port = proxy === undefined ? await freePort(0) : 0;
    const selfUrl = proxy?.url ?? `http://127.0.0.1:${port}`;
    const process = await startNodeProcess(path.join(root, `node-${index}`), {
      bind_port: port,
      upstream_url: fake.url,
      image_cache_driver: 'centralized_db',
      database_connection: db.url,
      worker_self_reference_url: selfUrl,
      peer_fill: true,
      ...spec.settings,
    }, { IMAGE_CACHE_LOG_LEVEL: 'info' });
    proxy?.setTarget(Number(new URL(process.url).port));
    nodes.push({ process, url: process.url, selfUrl, proxy });
  }
  return { fake, db, nodes };
}

const get = (node: ClusterNode, id: string, headers: Record<string, string> = { 'x-auth-token': TOKEN }) => download(fileUrl(node.url, id), headers);

/** The whole image, or the assertion says what came instead. */
function assertImage(result: Awaited<ReturnType<typeof download>>, data: Buffer, who: string): void {
  assert.ok(result.ok, `${who}: ${result.ok ? '' : result.error.message}`);
  assert.equal(result.response.status, 200, `${who}: ${result.response.body.toString().slice(0, 200)}`);
  assert.equal(result.response.body.length, data.length, `${who}: a body of ${result.response.body.length} bytes`);
  assert.ok(result.response.body.equals(data), `${who}: a body differs from the image`);
}

async function metricOf(node: ClusterNode, sample: string): Promise<number> {
  return (await node.process.metrics()).get(sample) ?? 0;
}

async function cachedIds(node: ClusterNode): Promise<string[]> {
  const listing = JSON.parse((await fetchAll(`${node.url}/v2/cache`)).body.toString()) as { cached_images: { image_id: string }[] };
  return listing.cached_images.map((image) => image.image_id);
}

/** The Range headers of the upstream's file requests for the image, in order (undefined: the whole image). */
function upstreamRanges(fake: FakeGlance, id: string): (string | undefined)[] {
  return fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/images/${id}/file`).map((r) => r.headers.range as string | undefined);
}

/** The upstream's file requests went: the whole image once, then its rest from a byte past the first. */
function assertWentOnFromUpstream(fake: FakeGlance, id: string): void {
  const ranges = upstreamRanges(fake, id);
  assert.equal(ranges.length, 2, `upstream requests: ${JSON.stringify(ranges)}`);
  assert.equal(ranges[0], undefined);
  assert.match(ranges[1] ?? '', /^bytes=[1-9]\d*-$/, 'the fill went on with Range: bytes=N- from the bytes it had');
}

describe('nodes on one PostgreSQL filling from each other (separate processes)', { skip: missing, concurrency: false }, () => {
  it('read a new image asked of three nodes at once, four clients each, from the upstream once', async (t) => {
    const { fake, nodes } = await startCluster(t, { bytesPerSecond: 32 * MIB }, [{}, {}, {}]);
    const data = imageBytes(24 * MIB + 3, 1);
    const image = await fake.addImage({ data });
    const results = await Promise.all(nodes.flatMap((node, n) => [0, 1, 2, 3].map(async (c) => ({ who: `node ${n} client ${c}`, result: await get(node, image.id) }))));
    for (const { who, result } of results) assertImage(result, data, who);
    assert.equal(fake.fileRequests(image.id), 1, 'the upstream was read more than once');
    assert.equal(fake.bytesSent(image.id), data.length);
    let fromPeers = 0;
    for (const node of nodes) fromPeers += await metricOf(node, 'image_cache_fill_bytes_total{source="peer"}');
    assert.equal(fromPeers, 2 * data.length, 'two nodes took the image from a peer');
    // Each request's log line names where its bytes came from: the upstream for one node's, a peer (one of these) for the others'.
    const sources = nodes.flatMap((node) => node.process.logLines()).filter((line) => line.peer === undefined).map((line) => line.bytesFrom).filter((from): from is string => typeof from === 'string');
    assert.equal(sources.length, 12, `log lines with bytesFrom: ${JSON.stringify(sources)}`);
    const fromPeer = sources.filter((from) => from.startsWith('peer '));
    assert.equal(fromPeer.length, 8, JSON.stringify(sources));
    for (const from of fromPeer) assert.ok(nodes.some((node) => from === `peer ${node.selfUrl}`), from);
  });

  it('a peer that resets mid-stream: the fill goes on from the upstream (bytes=N-) and its client gets the image', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, {}, [{ proxied: true }, {}]);
    const data = imageBytes(16 * MIB + 7, 2);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    holder!.proxy!.setFault({ kind: 'reset', afterBytes: 3 * MIB });
    const faulted = holder!.proxy!.faulted();
    assertImage(await get(asker!, image.id), data, 'the asker');
    await faulted;
    assertWentOnFromUpstream(fake, image.id);
    assert.equal(await metricOf(asker!, 'image_cache_peer_fallbacks_total{reason="reset"}'), 1);
    assert.deepEqual(await cachedIds(asker!), [image.id]);
  });

  it('a peer that stalls: after upstream_timeout the fill goes on from the upstream and its client gets the image', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, {}, [{ proxied: true }, { settings: { upstream_timeout: 2 } }]);
    const data = imageBytes(16 * MIB + 9, 3);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    holder!.proxy!.setFault({ kind: 'stall', afterBytes: 2 * MIB });
    const started = Date.now();
    assertImage(await get(asker!, image.id), data, 'the asker');
    const took = Date.now() - started;
    assert.ok(took >= 1_900 && took < 15_000, `took ${took} ms with upstream_timeout = 2`);
    assertWentOnFromUpstream(fake, image.id);
    assert.equal(await metricOf(asker!, 'image_cache_peer_fallbacks_total{reason="stall"}'), 1);
  });

  it('a peer that lies about a byte: the image\'s hash catches it, nothing is cached, the response is cut, the next one is the image', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, {}, [{ proxied: true }, {}]);
    const data = imageBytes(8 * MIB + 1, 4);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    holder!.proxy!.setFault({ kind: 'flip', afterBytes: 5 * MIB });
    const flipped = holder!.proxy!.faulted();
    const lied = await get(asker!, image.id);
    await flipped;
    // Glance's metadata has one hash for the whole image: the last byte is held until it is checked, so the client sees a cut response.
    assert.equal(lied.ok, false, 'a response with a wrong byte ended as if whole');
    assert.deepEqual(await cachedIds(asker!), []);
    holder!.proxy!.setFault(undefined);
    assertImage(await get(asker!, image.id), data, 'the asker, asked again');
    assert.deepEqual(await cachedIds(asker!), [image.id]);
    // The lying peer is not asked again for a while: the second fill read the upstream.
    assert.equal(fake.fileRequests(image.id), 2);
    assert.equal(holder!.proxy!.connections, 1);
  });

  it('a peer SIGKILLed mid-stream, holding the claim: its followers go on from the upstream and a node asking later skips it', async (t) => {
    const { fake, nodes: [seed, follower, late] } = await startCluster(t, { bytesPerSecond: 16 * MIB }, [{}, {}, {}]);
    const data = imageBytes(32 * MIB + 5, 5);
    const image = await fake.addImage({ data });
    const seedClient = get(seed!, image.id);
    await until(() => fake.bytesSent(image.id) > 2 * MIB, 'the seed to fetch from the upstream');
    const followerClient = get(follower!, image.id);
    await until(async () => (await metricOf(follower!, 'image_cache_fill_bytes_total{source="peer"}')) > 2 * MIB, 'the follower to read from the seed', 20_000);
    await seed!.process.kill();
    const lateClient = get(late!, image.id);
    assertImage(await followerClient, data, 'the follower');
    assertImage(await lateClient, data, 'the node that asked after the kill');
    assert.equal((await seedClient).ok, false, 'the killed node\'s own client cannot have had the whole image');
    assertWentOnFromUpstream(fake, image.id);
    assert.equal(await metricOf(follower!, 'image_cache_peer_fallbacks_total{reason="reset"}'), 1);
  });

  it('a stale row (the file removed by hand on the holder) costs one round trip, not a timeout', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, {}, [{}, {}]);
    const data = imageBytes(4 * MIB + 3, 6);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    fs.rmSync(path.join(holder!.process.cacheDir, image.id));
    const started = Date.now();
    assertImage(await get(asker!, image.id), data, 'the asker');
    const took = Date.now() - started;
    assert.ok(took < 2_000, `took ${took} ms`);
    assert.equal(await metricOf(asker!, 'image_cache_peer_fallbacks_total{reason="not_cached"}'), 1);
    assert.equal(fake.fileRequests(image.id), 2);
  });

  it('a peer request for an image the node does not have is turned away at once, and fetches nothing', async (t) => {
    const { fake, nodes: [node] } = await startCluster(t, {}, [{}]);
    const image = await fake.addImage({ data: imageBytes(MIB, 7) });
    const started = Date.now();
    const answer = await fetchAll(fileUrl(node!.url, image.id), { headers: { [PEER_HEADER]: 'http://127.0.0.1:1', 'x-auth-token': TOKEN } });
    assert.equal(answer.status, 404);
    assert.equal(answer.headers[REFUSAL_HEADER], 'not-cached');
    assert.ok(Date.now() - started < 1_000);
    assert.equal(fake.fileRequests(image.id), 0, 'a peer request made the node fetch');
    assert.deepEqual(await cachedIds(node!), []);
  });

  it('a caller the upstream refuses gets no bytes through a peer', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, { validTokens: [TOKEN] }, [{ proxied: true }, {}]);
    const data = imageBytes(2 * MIB, 8);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    const connections = holder!.proxy!.connections;
    const refused = await fetchAll(fileUrl(asker!.url, image.id), { headers: { 'x-auth-token': 'stolen' } });
    assert.equal(refused.status, 401);
    assert.equal(holder!.proxy!.connections, connections, 'the node asked a peer for a caller the upstream refused');
    // Asked directly as a peer, the holder checks the token with the upstream too.
    const direct = await fetchAll(fileUrl(holder!.url, image.id), { headers: { [PEER_HEADER]: asker!.selfUrl, 'x-auth-token': 'stolen' } });
    assert.equal(direct.status, 401);
    assert.ok(!direct.body.includes(data.subarray(0, 64)));
    assert.deepEqual(await cachedIds(asker!), []);
  });

  it('the nodes\' database connections dropped while one holds the claim: every client gets the image, the upstream is read at most twice', async (t) => {
    const { fake, db, nodes } = await startCluster(t, { bytesPerSecond: 16 * MIB }, [{}, {}, {}]);
    const data = imageBytes(24 * MIB + 1, 9);
    const image = await fake.addImage({ data });
    const first = get(nodes[0]!, image.id);
    await until(() => fake.bytesSent(image.id) > 2 * MIB, 'the first node to fetch from the upstream');
    const dropped = await db.query<{ dropped: boolean }>(
      "SELECT pg_terminate_backend(pid) AS dropped FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'image-cache'",
    );
    assert.ok(dropped.length > 0 && dropped.every((row) => row.dropped), 'no node connection was dropped');
    const others = nodes.slice(1).map((node) => get(node, image.id));
    assertImage(await first, data, 'the claim\'s holder');
    for (const [n, other] of others.entries()) assertImage(await other, data, `node ${n + 1}`);
    assert.ok(fake.fileRequests(image.id) <= 2, `the upstream was read ${fake.fileRequests(image.id)} times`);
    // The nodes work on after their connections came back.
    const next = await fake.addImage({ data: imageBytes(MIB, 10) });
    assertImage(await get(nodes[1]!, next.id), imageBytes(MIB, 10), 'a later image');
  });

  it('past peer_max_streams a node turns peers away at once (busy), and the asker takes the upstream', async (t) => {
    const { fake, nodes: [holder, asker] } = await startCluster(t, {}, [{ settings: { peer_max_streams: 1 } }, {}]);
    const data = imageBytes(64 * MIB, 11);
    const image = await fake.addImage({ data });
    assertImage(await get(holder!, image.id), data, 'the holder');
    // A peer stream that reads nothing: it stays open, and counts.
    const held = await send(fileUrl(holder!.url, image.id), { headers: { [PEER_HEADER]: 'http://127.0.0.1:1', 'x-auth-token': TOKEN } });
    assert.equal(held.statusCode, 200);
    held.pause();
    try {
      const busy = await fetchAll(fileUrl(holder!.url, image.id), { headers: { [PEER_HEADER]: 'http://127.0.0.1:1', 'x-auth-token': TOKEN } });
      assert.equal(busy.status, 503);
      assert.equal(busy.headers[REFUSAL_HEADER], 'busy');
      assertImage(await get(asker!, image.id), data, 'the asker');
      assert.ok((await metricOf(asker!, 'image_cache_peer_fallbacks_total{reason="busy"}')) >= 1);
      assert.equal(fake.fileRequests(image.id), 2);
    } finally {
      held.destroy();
    }
  });
});
