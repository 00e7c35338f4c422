/**
 * auth_strategy = keystone against Debian's real Keystone, started by the
 * test: the management API needs a valid token with the admin role (401
 * without one, 403 without the role), validations are cached no longer than
 * token_cache_time nor past the token's expiry, and fetches nobody asked for
 * use the node's own token. On the data path the node validates the token
 * too, and the upstream (here a fake Glance that validates tokens against the
 * same Keystone on every request) still decides: cached bytes never go to a
 * token it refuses. Against a real Glance, which trusts a validation for
 * minutes, see real-openstack.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { ServerOptions } from '../../src/server/config.js';
import { imageBytes, startFakeGlance, type FakeGlance, type FakeGlanceOptions } from '../support/fake-glance.js';
import { keystoneAvailable, startKeystone, type KeystonePeer } from '../support/keystone-peer.js';
import { fetchAll, metric, startTestNode, until, type NodeUnderTest } from './helpers.js';

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

/** [token] expiration of the second Keystone: long enough for a token to be issued, validated and used on a loaded machine (8 s was not always), short enough to wait for. */
const SHORT_EXPIRATION_S = 20;

describe('auth_strategy = keystone', { skip: missing }, () => {
  let keystone: KeystonePeer;
  /** A second Keystone, whose tokens expire within a test ([token] expiration is for all of its tokens). */
  let shortLived: KeystonePeer;
  let adminToken: string;
  let memberToken: string;
  before(async () => {
    // Started side by side: most of a start is waiting on keystone-manage and the server's first answer.
    const started = await Promise.allSettled([startKeystone(), startKeystone({ tokenExpiration: SHORT_EXPIRATION_S })]);
    if (started[0].status === 'fulfilled') keystone = started[0].value;
    if (started[1].status === 'fulfilled') shortLived = started[1].value;
    for (const outcome of started) if (outcome.status === 'rejected') throw outcome.reason;
    adminToken = await keystone.token('admin', 'secret', 'admin');
    memberToken = await keystone.token('demo', 'secret', 'demo');
  });
  after(() => Promise.all([keystone?.stop(), shortLived?.stop()]));

  function setUp(t: TestContext, server: Partial<ServerOptions> = {}, tokenCacheSeconds = 300, upstream: FakeGlanceOptions = {}): Promise<{ fake: FakeGlance } & NodeUnderTest> {
    return startBehindKeystone(t, keystone, { server, tokenCacheSeconds, upstream });
  }

  it('refuses every management route without a token (401) and without the admin role (403)', async (t) => {
    const { url } = await setUp(t);
    for (const [method, path] of ROUTES) {
      assert.equal((await fetchAll(`${url}${path}`, { method })).status, 401, `${method} ${path} without a token`);
      assert.equal((await fetchAll(`${url}${path}`, { method, headers: { 'x-auth-token': 'not-a-token' } })).status, 401, `${method} ${path} with a bad token`);
      const member = await fetchAll(`${url}${path}`, { method, headers: { 'x-auth-token': memberToken, accept: 'application/json' } });
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

  it('never serves cached bytes to a revoked token, however long token_cache_time; a fresh token of the same user gets the hit', async (t) => {
    // The upstream asks Keystone about every token, as keystonemiddleware does in front of Glance.
    const { fake, url, node } = await setUp(t, {}, 300, { validateToken: (token) => keystone.validates(token) });
    const data = imageBytes(256 * 1024);
    const image = await fake.addImage({ data });
    const file = `${url}/v2/images/${image.id}/file`;
    const token = await keystone.token('demo', 'secret', 'demo');
    const first = await fetchAll(file, { headers: { 'x-auth-token': token } });
    assert.equal(first.status, 200);
    assert.ok(first.body.equals(data));
    assert.ok(await node.cache.isCached(image.id));

    await keystone.revoke(token);
    const hitBytes = await metric(url, 'image_cache_hit_bytes_total');
    const refused = await fetchAll(file, { headers: { 'x-auth-token': token } });
    assert.equal(refused.status, 401);
    assert.notEqual(refused.headers['content-type'], 'application/octet-stream');
    assert.ok(refused.body.length < 1024 && !refused.body.includes(data.subarray(0, 16)), 'Glance\'s error page, no image byte');
    assert.equal(await metric(url, 'image_cache_hit_bytes_total'), hitBytes, 'no byte served from the cache');
    const asked = fake.requests.filter((r) => r.headers['x-auth-token'] === token).map((r) => r.path);
    assert.deepEqual(asked, [`/v2/images/${image.id}`, `/v2/images/${image.id}/file`, `/v2/images/${image.id}`], 'the revoked token got no further than the metadata');

    const fresh = await keystone.token('demo', 'secret', 'demo');
    const hit = await fetchAll(file, { headers: { 'x-auth-token': fresh } });
    assert.equal(hit.status, 200);
    assert.ok(hit.body.equals(data));
    assert.equal(await metric(url, 'image_cache_hit_responses_total'), 1);
    assert.equal(fake.fileRequests(image.id), 1, 'the upstream\'s file endpoint was not asked again');
  });

  it('never trusts a validation longer than token_cache_time: a revoked token is refused once that has passed', async (t) => {
    const { url } = await setUp(t, {}, 0);
    const token = await keystone.token('admin', 'secret', 'admin');
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 200);
    await keystone.revoke(token);
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 401);
  });

  it('never trusts a validation past the token\'s expiry, whatever token_cache_time says', async (t) => {
    const { url } = await startBehindKeystone(t, shortLived, { tokenCacheSeconds: 3600 });
    const token = await shortLived.token('admin', 'secret', 'admin');
    // The expiry Keystone gave it (what the node reads from the same validation).
    const validated = await fetchAll(`${shortLived.url}/auth/tokens?nocatalog`, { headers: { 'x-auth-token': token, 'x-subject-token': token } });
    const expiresAt = Date.parse(JSON.parse(validated.body.toString()).token.expires_at);
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 200);
    assert.ok(Date.now() < expiresAt, 'the token was used before it expired');
    // token_cache_time would keep the validation for an hour: only the expiry can end it.
    await until(() => Date.now() > expiresAt, 'the token\'s expiry', (SHORT_EXPIRATION_S + 5) * 1000);
    assert.equal((await fetchAll(`${url}/v2/cache`, { headers: { 'x-auth-token': token } })).status, 401);
  });
});

/** A fake Glance (with `upstream`'s options) and a node with auth_strategy = keystone in front of it, the node's own credentials admin's. */
async function startBehindKeystone(
  t: TestContext,
  keystone: KeystonePeer,
  { server = {}, tokenCacheSeconds = 300, upstream = {} }: { server?: Partial<ServerOptions>; tokenCacheSeconds?: number; upstream?: FakeGlanceOptions },
): Promise<{ fake: FakeGlance } & NodeUnderTest> {
  const fake = await startFakeGlance(upstream);
  t.after(() => fake.close());
  const node = await startTestNode(t, {
    upstreamUrl: fake.url,
    authStrategy: 'keystone',
    keystone: { authUrl: keystone.url, username: 'admin', password: 'secret', projectName: 'admin', userDomainName: 'Default', projectDomainName: 'Default', tokenCacheSeconds },
    ...server,
  });
  return { fake, ...node };
}
