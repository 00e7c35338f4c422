/**
 * The optional nginx in front: the node authorizes every request (metadata
 * with the caller's token) and hands hits to nginx with X-Accel-Redirect;
 * nginx sends the file with sendfile, ranges included. Misses and everything
 * else stream through it to the node.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nginxAvailable, startFrontNginx } from '../support/nginx.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { fetchAll, metric, startTestNode } from './helpers.js';

const missing = nginxAvailable() ? undefined : 'nginx is not installed (apt-get install nginx-light; .ci/run does)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

describe('nginx in front (x_accel_redirect)', { skip: missing }, () => {
  it('serves misses through the node and hits from nginx, and refuses what the upstream refuses', async (t) => {
    const fake = await startFakeGlance({ validTokens: ['good'] });
    t.after(() => fake.close());
    const { url: nodeUrl, node } = await startTestNode(t, { upstreamUrl: fake.url, xAccelRedirect: '/_image_cache/' });
    const front = await startFrontNginx(nodeUrl, node.cache.options.imageCacheDir);
    t.after(() => front.stop());
    const data = imageBytes(5 * 1024 * 1024 + 1);
    const image = await fake.addImage({ data });
    const file = `${front.url}/v2/images/${image.id}/file`;
    const token = { 'x-auth-token': 'good' };

    const miss = await fetchAll(file, { headers: token });
    assert.equal(miss.status, 200);
    assert.ok(miss.body.equals(data));
    const hit = await fetchAll(file, { headers: token });
    assert.equal(hit.status, 200);
    assert.ok(hit.body.equals(data));
    assert.equal(hit.headers['content-length'], String(data.length));
    assert.equal(hit.headers['content-type'], 'application/octet-stream');
    assert.equal(hit.headers['content-md5'], image.checksum);
    assert.equal(hit.headers['x-accel-redirect'], undefined, 'nginx keeps its internal location to itself');
    const range = await fetchAll(file, { headers: { ...token, range: 'bytes=100-199' } });
    assert.equal(range.status, 206);
    assert.ok(range.body.equals(data.subarray(100, 200)));
    assert.equal((await fetchAll(file, { headers: { 'x-auth-token': 'bad' } })).status, 401);
    assert.equal((await fetchAll(`${front.url}/_image_cache/${image.id}`)).status, 404, 'the cache directory is not reachable from outside');

    assert.equal(fake.fileRequests(image.id), 1);
    assert.equal(await metric(nodeUrl, 'image_cache_hit_responses_total'), 2);
  });
});
