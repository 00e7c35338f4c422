/**
 * The cluster in front of the real thing: three nodes on one PostgreSQL
 * database (centralized_db, peer_fill on by default) in front of Debian's
 * glance-api. A new image asked of all of them at once is read from Glance
 * once (Glance's own access log counts it), and the Range a fill sends when
 * it goes on from the upstream after a peer failed is one Glance answers
 * as the fill expects.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it, type TestContext } from 'node:test';
import { GlanceSource } from '../../src/sources/glance.js';
import { Upstream } from '../../src/sources/upstream.js';
import { TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { imageBytes } from '../support/fake-glance.js';
import { glanceAvailable, startGlance, uploadImage, type GlancePeer } from '../support/glance-peer.js';
import { freePort } from '../support/processes.js';
import { download, fileUrl, startTestNode, type NodeUnderTest } from './helpers.js';

const missingGlance = glanceAvailable() ? undefined : 'Debian\'s glance-api is not installed (apt-get install glance-api; .ci/run does)';
const missingPostgres = await unreachableReason();
const missing = missingGlance ?? missingPostgres;
if (missing !== undefined && process.env.CI) throw new Error(missing);

function glanceDownloads(glance: GlancePeer, imageId: string): string[] {
  const log = fs.existsSync(glance.log) ? fs.readFileSync(glance.log, 'utf8') : '';
  return log.split('\n').filter((line) => line.includes(`GET /v2/images/${imageId}/file`));
}

describe('nodes on one PostgreSQL in front of a real Glance', { skip: missing }, () => {
  let glance: GlancePeer;
  const db = new TestDatabase();
  before(async () => {
    await db.create();
    glance = await startGlance({ cache: 'off' });
  });
  after(async () => {
    await glance?.stop();
    await db.drop();
  });

  async function startClusterNode(t: TestContext): Promise<NodeUnderTest> {
    const port = await freePort(0);
    return startTestNode(t, { upstreamUrl: glance.url, bindPort: port, peerFill: true }, {
      imageCacheDriver: 'centralized_db',
      databaseConnection: db.url,
      workerSelfReferenceUrl: `http://127.0.0.1:${port}`,
    });
  }

  it('reads a new image from Glance once for three nodes asked at once, and every node then holds it', async (t) => {
    const nodes = [await startClusterNode(t), await startClusterNode(t), await startClusterNode(t)];
    const data = imageBytes(24 * 1024 * 1024 + 3);
    const id = await uploadImage(glance.url, data, 'cluster');
    const results = await Promise.all(nodes.flatMap((node) => [0, 1].map(() => download(fileUrl(node.url, id), { 'x-auth-token': 'x' }))));
    for (const result of results) {
      assert.ok(result.ok, result.ok ? '' : String(result.error));
      assert.equal(result.response.status, 200);
      assert.ok(result.response.body.equals(data), 'a body differs from the image');
    }
    assert.equal(glanceDownloads(glance, id).length, 1, 'Glance served the image more than once');
    for (const node of nodes) assert.equal(await node.node.cache.isCached(id), true);
    assert.deepEqual(await nodes[0]!.node.cache.getCachedNodes(id), nodes.map((node) => node.url).sort());
  });

  it('answers the Range a fill sends to go on from the upstream (bytes=N-) with exactly those bytes', async () => {
    const data = imageBytes(3 * 1024 * 1024 + 11);
    const id = await uploadImage(glance.url, data, 'rest');
    const source = new GlanceSource(new Upstream(glance.url, { timeoutMs: 10_000 }));
    try {
      const position = 1024 * 1024 + 7;
      const response = await source.open(id, 'x', { start: position });
      assert.equal(response.status, 206);
      assert.equal(response.headers['content-range'], `bytes ${position}-${data.length - 1}/${data.length}`);
      const chunks: Buffer[] = [];
      for await (const chunk of response.body) chunks.push(chunk as Buffer);
      assert.ok(Buffer.concat(chunks).equals(data.subarray(position)));
    } finally {
      await source.close();
    }
  });
});
