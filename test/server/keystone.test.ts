/**
 * auth_strategy = keystone against Debian's real Keystone, started by the
 * test: the management API needs a valid token with the admin role (401
 * without one, 403 without the role), validations are cached no longer than
 * token_cache_time, and fetches nobody asked for use the node's own token.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { ServerOptions } from '../../src/server/config.js';
import { imageBytes, startFakeGlance, type FakeGlance } from '../support/fake-glance.js';
import { keystoneAvailable, startKeystone, type KeystonePeer } from '../support/keystone-peer.js';
import { fetchAll, startTestNode, until, type NodeUnderTest } from './helpers.js';

const missing = keystoneAvailable() ? undefined : 'Debian\'s keystone is not installed (apt-get install keystone; .ci/run does)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

const ROUTES: Array<[method: string, path: string]> = [
  ['GET', '/v2/cache'],
  ['PUT', '/v2/cache/some-image'],
  ['DELETE', '/v2/cache/some-image'],
  ['DELETE', '/v2/cache'],
  ['POST', '/v2/cache/clean'],
  ['POST', '/v2/cache/prune'],
  ['GET', '/v2/cache/nodes/some-image'],
];

describe('auth_strategy = keystone', { skip: missing }, () => {
  let keystone: KeystonePeer;
  let adminToken: string;
  let memberToken: string;
  before(async () => {
    keystone = await startKeystone();
    adminToken = await keystone.token('admin', 'secret', 'admin');
    memberToken = await keystone.token('demo', 'secret', 'demo');
  });
  after(() => keystone?.stop());

  async function setUp(t: TestContext, server: Partial<ServerOptions> = {}, tokenCacheSeconds = 300): Promise<{ fake: FakeGlance } & NodeUnderTest> {
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const node = await startTestNode(t, {
      upstreamUrl: fake.url,
      authStrategy: 'keystone',
      keystone: { authUrl: keystone.url, username: 'admin', password: 'secret', projectName: 'admin', userDomainName: 'Default', projectDomainName: 'Default', tokenCacheSeconds },
      ...server,
    });
    return { fake, ...node };
  }

  it('refuses every management route without a token (401) and without the admin role (403)', async (t) => {
    const { url } = await setUp(t);
    for (const [method, path] of ROUTES) {
      assert.equal((await fetchAll(`${url}${path}`, { method })).status, 401, `${method} ${path} without a token`);
      assert.equal((await fetchAll(`${url}${path}`, { method, headers: { 'x-auth-token': 'not-a-token' } })).status, 401, `${method} ${path} with a bad token`);
      const member = await fetchAll(`${url}${path}`, { method, headers: { 'x-auth-token': memberToken } });
      assert.equal(member.status, 403, `${method} ${path} as a member`);
      assert.match(JSON.parse(member.body.toString()).message, /'admin' role/);
    }
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': adminToken } })).status, 200);
  });

  it('lets an admin list, queue, delete and clear', async (t) => {
    const { fake, url, node } = await setUp(t);
    const headers = { 'x-auth-token': adminToken };
    const image = await fake.addImage({ data: imageBytes(4096) });
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT', headers })).status, 202);
    await until(() => node.cache.isCached(image.id), 'the prefetch');
    assert.equal(JSON.parse((await fetchAll(`${url}/v2/cache`, { headers })).body.toString()).cached_images.length, 1);
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'DELETE', headers })).status, 204);
    assert.equal((await fetchAll(`${url}/v2/cache`, { method: 'DELETE', headers })).status, 204);
  });

  it('gives an admin Glance\'s negative answers: queue unknown 404, queue non-active 400, delete unknown 404, bad clear target 400', async (t) => {
    const { fake, url } = await setUp(t);
    const headers = { 'x-auth-token': adminToken };
    const notActive = await fake.addImage({ data: imageBytes(10), status: 'queued' });
    assert.equal((await fetchAll(`${url}/v2/cache/00000000-0000-4000-8000-000000000000`, { method: 'PUT', headers })).status, 404);
    assert.equal((await fetchAll(`${url}/v2/cache/${notActive.id}`, { method: 'PUT', headers })).status, 400);
    assert.equal((await fetchAll(`${url}/v2/cache/never-heard-of-it`, { method: 'DELETE', headers })).status, 404);
    assert.equal((await fetchAll(`${url}/v2/cache`, { method: 'DELETE', headers: { ...headers, 'x-image-cache-clear-target': 'all-of-it' } })).status, 400);
  });

  it('prefetches with the node\'s own token from its [keystone_authtoken] credentials', async (t) => {
    const { fake, url, node } = await setUp(t);
    const image = await fake.addImage({ data: imageBytes(4096) });
    assert.equal((await fetchAll(`${url}/v2/cache/${image.id}`, { method: 'PUT', headers: { 'x-auth-token': adminToken } })).status, 202);
    await until(() => node.cache.isCached(image.id), 'the prefetch');
    const fetched = fake.requests.find((r) => r.path === `/v2/images/${image.id}/file`);
    const token = fetched?.headers['x-auth-token'];
    assert.equal(typeof token, 'string');
    assert.notEqual(token, adminToken, 'not the caller\'s token: the node\'s own');
    // Keystone recognizes it: the node authenticated as its configured user.
    const validated = await fetchAll(`${keystone.url}/auth/tokens?nocatalog`, { headers: { 'x-auth-token': adminToken, 'x-subject-token': String(token) } });
    assert.equal(validated.status, 200);
    assert.equal(JSON.parse(validated.body.toString()).token.user.name, 'admin');
  });

  it('never trusts a validation longer than token_cache_time: a revoked token is refused once that has passed', async (t) => {
    const { url } = await setUp(t, {}, 0);
    const token = await keystone.token('admin', 'secret', 'admin');
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 200);
    await keystone.revoke(token);
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 401);
  });
});
