/**
 * Glance's notifications, for real: Debian's glance-api publishing
 * (messagingv2) to the machine's RabbitMQ, on an exchange of this run's own,
 * and nodes listening on queues of their own. An image deleted at Glance
 * directly leaves every node; an activated public image is prefetched by
 * every node under `public`; a broker outage loses no delete; a delete
 * during a fill leaves nothing cached; malformed messages are acknowledged
 * and counted while the good ones act.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { NodeNotificationSettings } from '../../src/notifications/notifications.js';
import { imageBytes } from '../support/fake-glance.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { glanceAvailable, startGlance, uploadImage, type GlancePeer } from '../support/glance-peer.js';
import { rabbitUnreachable, RABBIT_HOST, RABBIT_PORT, RABBIT_URL, TestBroker } from '../support/rabbitmq.js';
import { download, fetchAll, fileUrl, metric, startTestNode, until, type NodeUnderTest } from './helpers.js';

const missing = glanceAvailable() ? await rabbitUnreachable() : 'Debian\'s glance-api is not installed (apt-get install glance-api; .ci/run does)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

const MIB = 1024 * 1024;
const RUN = `${process.pid}-${randomBytes(3).toString('hex')}`;
const EXCHANGE = `glance-test-${RUN}`;
const DELIVERY_MS = 5_000;

describe('Glance\'s notifications through RabbitMQ', { skip: missing, concurrency: false }, () => {
  let glance: GlancePeer;
  let broker: TestBroker;
  const queues: string[] = [];
  before(async () => {
    broker = new TestBroker();
    glance = await startGlance({ cache: 'off', notifications: { transportUrl: RABBIT_URL, exchange: EXCHANGE } });
  });
  after(async () => {
    await glance?.stop();
    for (const queue of queues) await broker.deleteQueue(queue).catch(() => {});
    await broker?.deleteExchange(EXCHANGE).catch(() => {});
    await broker?.close();
  });

  /** A node in front of the Glance, listening on a queue of its own; resolves once it consumes and has checked its cache. */
  async function listeningNode(t: TestContext, name: string, settings: Partial<NodeNotificationSettings> = {}, upstreamUrl = glance.url): Promise<NodeUnderTest> {
    const queue = `image-cache-test.${RUN}.${name}`;
    queues.push(queue);
    const notifications: NodeNotificationSettings = {
      transportUrl: RABBIT_URL,
      topics: ['notifications'],
      exchange: EXCHANGE,
      exchangeDurable: false,
      exchangeAutoDelete: false,
      queue,
      queueExpirySeconds: 600,
      queueMaxLength: 10_000,
      evictOnDeactivate: false,
      prefetchOnActivate: { kind: 'none' },
      prefetchMaxSize: 0,
      ...settings,
    };
    const node = await startTestNode(t, { upstreamUrl, notifications });
    await until(() => node.node.notifications!.connected, `${name} to listen`);
    await node.node.notifications!.settled();
    return node;
  }

  async function deleteAtGlance(id: string): Promise<number> {
    const answer = await fetchAll(`${glance.url}/v2/images/${id}`, { method: 'DELETE', headers: { 'x-auth-token': 'x' } });
    assert.equal(answer.status, 204);
    return Date.now();
  }

  async function cacheOn(node: NodeUnderTest, id: string, data: Buffer): Promise<void> {
    const result = await download(fileUrl(node.url, id), { 'x-auth-token': 'x' });
    assert.ok(result.ok && result.response.body.equals(data), 'the download through the node is the image');
    assert.equal(await node.node.cache.isCached(id), true);
  }

  it('an image deleted at Glance directly leaves both nodes within a second or two; a second delivery is harmless', async (t) => {
    const nodes = [await listeningNode(t, 'delete-a'), await listeningNode(t, 'delete-b')];
    const data = imageBytes(2 * MIB + 5, 21);
    const id = await uploadImage(glance.url, data, 'to-delete');
    for (const node of nodes) await cacheOn(node, id, data);
    const deleted = await deleteAtGlance(id);
    for (const node of nodes) await until(async () => !(await node.node.cache.isCached(id)), 'the copy to go', DELIVERY_MS);
    const took = Date.now() - deleted;
    assert.ok(took < 3_000, `the copies went ${took} ms after Glance's answer`);
    for (const node of nodes) {
      assert.equal(await metric(node.url, 'image_cache_notifications_total{event="image.delete",outcome="removed"}'), 1);
      assert.equal(await metric(node.url, 'image_cache_evictions_total{reason="notification"}'), 1);
      assert.equal(await metric(node.url, 'image_cache_notifications_connected'), 1);
    }
    // The same event again (a redelivery): nothing left to do.
    await broker.publish(EXCHANGE, 'notifications.info', JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify({ event_type: 'image.delete', payload: { id }, message_id: 'again' }) }));
    for (const node of nodes) await until(async () => (await metric(node.url, 'image_cache_notifications_total{event="image.delete",outcome="nothing"}')) === 1, 'the second delivery');
  });

  it('a public image activated is cached on both nodes under `public`; a private one is not', async (t) => {
    const nodes = [await listeningNode(t, 'public-a', { prefetchOnActivate: { kind: 'public' } }), await listeningNode(t, 'public-b', { prefetchOnActivate: { kind: 'public' } })];
    const privateData = imageBytes(MIB, 22);
    const privateId = await uploadImage(glance.url, privateData, 'private', undefined, { visibility: 'private' });
    const publicData = imageBytes(3 * MIB + 1, 23);
    const uploaded = Date.now();
    const publicId = await uploadImage(glance.url, publicData, 'public', undefined, { visibility: 'public' });
    for (const node of nodes) await until(() => node.node.cache.isCached(publicId), 'the public image to be prefetched', 20_000);
    assert.ok(Date.now() - uploaded < 20_000);
    for (const node of nodes) {
      // Events come in order: the private image's activation was handled before the public one's.
      assert.equal(await node.node.cache.isCached(privateId), false);
      assert.equal(await node.node.cache.isQueued(privateId), false);
      assert.equal(await metric(node.url, 'image_cache_notifications_total{event="image.activate",outcome="queued"}'), 1);
      const served = await download(fileUrl(node.url, publicId), { 'x-auth-token': 'x' });
      assert.ok(served.ok && served.response.body.equals(publicData));
    }
  });

  it('a broker outage loses no delete: one queued for the node while it was cut off, one the broker never kept', async (t) => {
    const proxy: FaultProxy = await startFaultProxy();
    proxy.setTarget(RABBIT_PORT);
    t.after(() => proxy.close());
    const node = await listeningNode(t, 'outage', { transportUrl: `rabbit://guest:guest@127.0.0.1:${proxy.port}/` });
    assert.equal(RABBIT_HOST, '127.0.0.1', 'the proxy stands on loopback in front of the broker');
    const kept = imageBytes(MIB + 1, 24);
    const lost = imageBytes(MIB + 2, 25);
    const keptId = await uploadImage(glance.url, kept, 'kept');
    const lostId = await uploadImage(glance.url, lost, 'lost');
    await cacheOn(node, keptId, kept);
    await cacheOn(node, lostId, lost);

    const queue = queues.at(-1)!;
    const outage = async (): Promise<void> => {
      proxy.cut();
      await until(() => !node.node.notifications!.connected, 'the node to notice the outage');
      assert.equal((await fetchAll(`${node.url}/healthcheck`)).status, 200);
    };
    const reconnect = async (): Promise<void> => {
      proxy.restore();
      await until(() => node.node.notifications!.connected, 'the node to reconnect', 60_000);
      await node.node.notifications!.settled();
    };

    // The delete waits in the node's queue while it is cut off, and acts when it is back.
    await outage();
    await deleteAtGlance(keptId);
    await until(async () => (await broker.waiting(queue)) === 1, 'the delete to wait in the node\'s queue');
    assert.equal(await node.node.cache.isCached(keptId), true);
    let restored = Date.now();
    await reconnect();
    await until(async () => !(await node.node.cache.isCached(keptId)), 'the queued delete to act', DELIVERY_MS);
    assert.ok(Date.now() - restored < 60_000);
    await until(async () => (await broker.waiting(queue)) === 0, 'the queue to be drained');

    // The node's queue gone while it is cut off (expired, say): the delete reaches nobody, and the
    // check of the cached images after the reconnection catches it up.
    await outage();
    await broker.deleteQueue(queue);
    await deleteAtGlance(lostId);
    assert.equal(await node.node.cache.isCached(lostId), true);
    restored = Date.now();
    await reconnect();
    assert.equal(await node.node.cache.isCached(lostId), false, 'the check after the reconnection removed the image');
    assert.ok(Date.now() - restored < 60_000);
    assert.equal(await metric(node.url, 'image_cache_evictions_total{reason="upstream_deleted"}') >= 1, true);
  });

  it('a delete during a fill: the fill ends and nothing stays cached', async (t) => {
    const proxy = await startFaultProxy();
    proxy.setTarget(Number(new URL(glance.url).port));
    proxy.setRate(8 * MIB);
    t.after(() => proxy.close());
    const node = await listeningNode(t, 'during-fill', {}, proxy.url);
    const data = imageBytes(16 * MIB + 3, 26);
    const id = await uploadImage(glance.url, data, 'filling');
    const downloading = download(fileUrl(node.url, id), { 'x-auth-token': 'x' });
    await until(() => node.node.cache.isBeingCached(id), 'the fill to start');
    await deleteAtGlance(id);
    await until(async () => (await metric(node.url, 'image_cache_notifications_total{event="image.delete",outcome="removed"}')) === 1, 'the delete to be handled');
    assert.equal(await node.node.cache.isBeingCached(id), true, 'the fill was still in flight when the delete came');
    await downloading;
    await until(async () => !(await node.node.cache.isBeingCached(id)) && !(await node.node.cache.isCached(id)), 'the fill to end, leaving nothing', 10_000);
    assert.equal(await node.node.cache.isQueued(id), false);
  });

  it('malformed messages among good ones are acknowledged and counted; the good ones act', async (t) => {
    const node = await listeningNode(t, 'malformed');
    const data = imageBytes(MIB + 9, 27);
    const id = await uploadImage(glance.url, data, 'after-garbage');
    await cacheOn(node, id, data);
    const garbage = [
      'not json at all',
      JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': '{"event_type": "image.delete", "payload": ' }),
      JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify({ payload: { id } }) }),
      JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify({ event_type: 'image.delete', payload: { name: 'no id' } }) }),
    ];
    for (const body of garbage) await broker.publish(EXCHANGE, 'notifications.info', body);
    await broker.publish(EXCHANGE, 'notifications.info', JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify({ event_type: 'compute.instance.create.end', payload: {} }) }));
    await deleteAtGlance(id);
    await until(async () => !(await node.node.cache.isCached(id)), 'the good delete to act', DELIVERY_MS);
    const malformed = (await metric(node.url, 'image_cache_notifications_total{event="unknown",outcome="malformed"}'))
      + (await metric(node.url, 'image_cache_notifications_total{event="image.delete",outcome="malformed"}'));
    assert.equal(malformed, 4);
    assert.equal(await metric(node.url, 'image_cache_notifications_total{event="other",outcome="ignored"}'), 1);
    assert.equal(await broker.waiting(queues.at(-1)!), 0, 'every message was acknowledged');
    assert.equal(node.node.notifications!.connected, true);
  });
});
