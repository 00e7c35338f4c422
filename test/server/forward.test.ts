/**
 * Everything else under /v2 and /versions goes to the upstream as it came;
 * DELETE of an image drops its cached copy; /healthcheck and /metrics; and
 * the node without an upstream, serving its local image directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { importImage } from '../../src/sources/local-directory.js';
import { imageBytes } from '../support/fake-glance.js';
import { fetchAll, send, startFakeGlanceAndNode, startTestNode, until } from './helpers.js';


describe('forwarding to the upstream', () => {
  it('forwards the Image API with method, path, query, headers and body, and passes the answer back', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const created = await fetchAll(`${url}/v2/images`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-auth-token': 'tok', 'x-custom': 'kept' },
      body: JSON.stringify({ name: 'through-the-node', disk_format: 'raw', container_format: 'bare' }),
    });
    assert.equal(created.status, 201);
    const document = JSON.parse(created.body.toString());
    assert.equal(document.name, 'through-the-node');
    const seen = fake.requests.at(-1)!;
    assert.equal(seen.method, 'POST');
    assert.equal(seen.headers['x-custom'], 'kept');
    assert.equal(seen.headers['x-auth-token'], 'tok');

    const listed = await fetchAll(`${url}/v2/images?limit=5&sort=name:asc`);
    assert.equal(listed.status, 200);
    assert.equal(fake.requests.at(-1)!.path, '/v2/images?limit=5&sort=name:asc');
    assert.equal((await fetchAll(`${url}/versions`)).status, 200);
    assert.equal((await fetchAll(`${url}/v2/nothing/here`)).status, 404, 'the upstream\'s 404, passed through');
  });

  it('streams an upload through without holding it, then serves the uploaded image (miss, then hit)', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const created = JSON.parse((await fetchAll(`${url}/v2/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"up"}' })).body.toString());
    const data = imageBytes(32 * 1024 * 1024);
    const half = data.length / 2;
    // A chunked body: its second half is sent only once the upstream has received the
    // first. A node that held the upload before forwarding it would never get there.
    const body = Readable.from((async function* () {
      yield data.subarray(0, half);
      await until(() => fake.uploadBytes(created.id) === half, 'the upstream to receive the first half');
      yield data.subarray(half);
    })());
    const uploaded = await send(`${url}/v2/images/${created.id}/file`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body });
    uploaded.resume();
    assert.equal(uploaded.statusCode, 204);
    assert.equal(fake.uploadBytes(created.id), data.length);

    const first = await fetchAll(`${url}/v2/images/${created.id}/file`);
    assert.ok(first.body.equals(data));
    assert.equal(await node.cache.isCached(created.id), true);
    const second = await fetchAll(`${url}/v2/images/${created.id}/file`);
    assert.ok(second.body.equals(data));
    assert.equal(fake.fileRequests(created.id), 1);
  });

  it('drops the cached copy once the upstream has deleted the image, and only then', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    await fetchAll(`${url}/v2/images/${image.id}/file`);
    fake.setFault(image.id, { kind: 'status', code: 403, on: 'metadata' });
    // The fake's faults apply to GETs: a refused DELETE is the upstream's 404 for an unknown image.
    assert.equal((await fetchAll(`${url}/v2/images/00000000-dead-4000-8000-000000000000`, { method: 'DELETE' })).status, 404);
    assert.equal(await node.cache.isCached(image.id), true);
    fake.setFault(image.id, undefined);
    assert.equal((await fetchAll(`${url}/v2/images/${image.id}`, { method: 'DELETE' })).status, 204);
    assert.equal(await node.cache.isCached(image.id), false);
  });
});

describe('health and metrics', () => {
  it('/healthcheck answers 200 OK, and 503 with the reason when the cache directory is unusable', async (t) => {
    const { url, dir } = await startFakeGlanceAndNode(t);
    const ok = await fetchAll(`${url}/healthcheck`);
    assert.equal(ok.status, 200);
    assert.equal(ok.body.toString(), 'OK');
    fs.rmSync(path.join(dir, 'cache'), { recursive: true });
    const broken = await fetchAll(`${url}/healthcheck`);
    assert.equal(broken.status, 503);
    assert.match(broken.body.toString(), /cache directory unusable/);
  });

  it('/metrics is Prometheus text with the cache\'s metrics and the process\'s', async (t) => {
    const { url } = await startFakeGlanceAndNode(t);
    const response = await fetchAll(`${url}/metrics`);
    assert.equal(response.status, 200);
    assert.match(String(response.headers['content-type']), /^text\/plain/);
    const text = response.body.toString();
    for (const name of ['image_cache_hit_responses_total', 'image_cache_miss_bytes_total', 'image_cache_upstream_bytes_total', 'image_cache_fills_in_flight', 'image_cache_coalesced_total', 'image_cache_evictions_total', 'image_cache_size_bytes', 'image_cache_max_size_bytes', 'process_resident_memory_bytes']) {
      assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
  });

  it('answers 404 outside the Image API', async (t) => {
    const { url } = await startFakeGlanceAndNode(t);
    assert.equal((await fetchAll(`${url}/etc/passwd`)).status, 404);
  });
});

describe('the node without an upstream (the local image directory)', () => {
  it('serves imported images (miss, then hit), their metadata and version discovery; the rest is 404', async (t) => {
    const { url, dir, node } = await startTestNode(t, {});
    const file = path.join(dir, 'disk.img');
    const data = imageBytes(2 * 1024 * 1024);
    fs.writeFileSync(file, data);
    const document = await importImage(path.join(dir, 'images'), file, { name: 'disk' });

    const metadata = await fetchAll(`${url}/v2/images/${document.id}`);
    assert.equal(metadata.status, 200);
    assert.equal(JSON.parse(metadata.body.toString()).os_hash_value, document.os_hash_value);
    for (let i = 0; i < 2; i++) {
      const response = await fetchAll(`${url}/v2/images/${document.id}/file`);
      assert.equal(response.status, 200);
      assert.ok(response.body.equals(data));
      assert.equal(response.headers['content-md5'], document.checksum);
    }
    assert.equal(await node.cache.isCached(String(document.id)), true);
    assert.equal((await fetchAll(`${url}/versions`)).status, 200);
    assert.equal((await fetchAll(`${url}/v2/images/unknown-image/file`)).status, 404);
    assert.equal((await fetchAll(`${url}/v2/images`, { method: 'POST', body: '{}' })).status, 404);
  });
});
