/**
 * The node as a new user meets it: Debian's Keystone, Debian's Glance behind
 * it (keystonemiddleware, which trusts a token's validation for its default
 * 300 s), the node in front with auth_strategy = keystone, and the real
 * clients (python-glanceclient's `glance`, python-openstackclient's
 * `openstack` and the openstacksdk it prints errors with), unchanged.
 *  - A token revoked while its image is cached is refused by the node within
 *    its own token_cache_time, while Glance itself still serves it.
 *  - The clients print the node's refusals (401, 403, 404, 409) as they print Glance's.
 *  - Glance's log lines carry the request id the node sent, so they join ours.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { createLogger } from '../../src/log.js';
import { SERVE_DEFAULTS } from '../../src/server/config.js';
import { startNode, type RunningNode } from '../../src/server/node.js';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes } from '../support/fake-glance.js';
import { glanceAvailable, startGlance, uploadImage, type GlancePeer } from '../support/glance-peer.js';
import { keystoneAvailable, startKeystone, type KeystonePeer } from '../support/keystone-peer.js';
import { onPath } from '../support/processes.js';
import { fetchAll, fileUrl, until } from './helpers.js';

const missing = !keystoneAvailable() ? 'Debian\'s keystone is not installed (apt-get install keystone; .ci/run does)'
  : !glanceAvailable() ? 'Debian\'s glance-api is not installed (apt-get install glance-api; .ci/run does)'
  : !onPath('glance') || !onPath('openstack') ? 'python3-glanceclient and python3-openstackclient are not installed (.ci/run installs them)'
  : undefined;
if (missing !== undefined && process.env.CI) throw new Error(missing);

/** The node's token_cache_time: what bounds a revoked token's downloads from its cache. */
const TOKEN_CACHE_S = 5;
/** How often the revoked token's download is tried: the resolution of the measured time. */
const POLL_MS = 100;
const NO_SUCH_IMAGE = '00000000-0000-4000-8000-000000000000';
/** Debian's python, with the clients' libraries. */
const PYTHON = '/usr/bin/python3';

interface Ran {
  code: number;
  output: string;
}

/** A command's exit code and everything it printed (the clients print errors on stderr). */
function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(command, args, { env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, output: `${stdout}${stderr}` });
    });
  });
}

/**
 * A request through openstacksdk with one of clouds.yaml's clouds, its
 * failure turned into the exception `openstack` prints (raise_from_response,
 * as the SDK's resources do): for the routes openstackclient has no command for.
 */
const SDK_REQUEST = `
import sys, openstack
from openstack import exceptions
conn = openstack.connect(cloud=sys.argv[1])
response = conn.image.request(sys.argv[3], sys.argv[2], raise_exc=False)
try:
    exceptions.raise_from_response(response)
    print(response.status_code)
except exceptions.HttpException as e:
    print(e)
`;

/** A request through python-glanceclient's HTTP client, as its commands send theirs, the error printed as the CLI prints it. */
const GLANCECLIENT_REQUEST = `
import sys
from glanceclient import Client, exc
client = Client('2', endpoint=sys.argv[1], token=sys.argv[2])
try:
    client.http_client.get(sys.argv[3])
    print('200')
except exc.HTTPException as e:
    print(e)
`;

describe('the node between the real clients and a real Glance behind a real Keystone', { skip: missing }, () => {
  let keystone: KeystonePeer;
  let glance: GlancePeer;
  let node: RunningNode;
  let dir: string;
  const lines: Array<Record<string, unknown>> = [];
  /** The clients' environment: a home of its own (glanceclient caches schemas there) with a clouds.yaml. */
  let env: NodeJS.ProcessEnv;

  before(async () => {
    keystone = await startKeystone();
    glance = await startGlance({ cache: 'off', keystone: { url: keystone.url, username: 'admin', password: 'secret', project: 'admin' } });
    dir = makeTempDir('image-cache-real-');
    node = await startNode({
      cache: { imageCacheDir: path.join(dir, 'cache') },
      server: {
        ...SERVE_DEFAULTS,
        filesystemStoreDatadir: path.join(dir, 'images'),
        bindPort: 0,
        upstreamUrl: glance.url,
        authStrategy: 'keystone',
        keystone: { authUrl: keystone.url, username: 'admin', password: 'secret', projectName: 'admin', userDomainName: 'Default', projectDomainName: 'Default', tokenCacheSeconds: TOKEN_CACHE_S },
      },
    }, { log: createLogger('info', (line) => lines.push(JSON.parse(line) as Record<string, unknown>)) });
    const home = path.join(dir, 'home');
    fs.mkdirSync(path.join(home, '.config', 'openstack'), { recursive: true });
    // The image endpoint is the node's, as the catalog would give it (this Keystone's catalog API fails on sqlite).
    const cloud = (user: string) => `  ${user}:
    auth:
      auth_url: ${keystone.url}
      username: ${user}
      password: secret
      project_name: ${user}
      user_domain_id: default
      project_domain_id: default
    identity_api_version: 3
    image_endpoint_override: ${node.url}
`;
    fs.writeFileSync(path.join(home, '.config', 'openstack', 'clouds.yaml'), `clouds:\n${cloud('demo')}${cloud('admin')}`);
    env = { ...process.env, HOME: home };
  });
  after(async () => {
    await node?.close();
    await Promise.all([glance?.stop(), keystone?.stop()]);
    if (dir !== undefined) removeDir(dir);
  });

  /** A cloud in clouds.yaml that sends `token` as it is to the node (keystoneauth's admin_token: no Keystone involved). */
  function tokenCloud(name: string, token: string): void {
    fs.appendFileSync(path.join(env.HOME!, '.config', 'openstack', 'clouds.yaml'), `  ${name}:
    auth_type: admin_token
    auth:
      endpoint: ${node.url}/v2
      token: ${token}
`);
  }

  const glanceCli = (user: string, ...args: string[]): Promise<Ran> => run('glance', [
    '--os-image-api-version', '2', '--os-auth-url', keystone.url, '--os-username', user, '--os-password', 'secret',
    '--os-project-name', user, '--os-user-domain-id', 'default', '--os-project-domain-id', 'default', '--os-image-url', node.url, ...args,
  ], env);

  it('refuses a revoked token its cached image within token_cache_time, while Glance itself still serves it', async (t: TestContext) => {
    const token = await keystone.token('demo', 'secret', 'demo');
    const data = imageBytes(256 * 1024);
    const id = await uploadImage(glance.url, data, 'revoked-while-cached', token);
    const headers = { 'x-auth-token': token };
    const miss = await fetchAll(fileUrl(node.url, id), { headers });
    // The node validated the token before it answered: its validation is trusted until TOKEN_CACHE_S after this at the latest.
    const validatedBy = Date.now();
    assert.equal(miss.status, 200);
    assert.ok(miss.body.equals(data));
    await until(() => node.cache.isCached(id), 'the image to be cached');

    await keystone.revoke(token);
    const revokedAt = Date.now();
    let refused: { afterMs: number; glance: number; answer: Awaited<ReturnType<typeof fetchAll>> } | undefined;
    while (refused === undefined) {
      const startedAt = Date.now();
      const [fromNode, fromGlance] = await Promise.all([fetchAll(fileUrl(node.url, id), { headers }), fetchAll(fileUrl(glance.url, id), { headers })]);
      if (fromNode.status === 401) {
        refused = { afterMs: startedAt - revokedAt, glance: fromGlance.status, answer: fromNode };
        break;
      }
      assert.equal(fromNode.status, 200);
      assert.ok(startedAt < validatedBy + TOKEN_CACHE_S * 1000, `the node served the revoked token ${startedAt - validatedBy} ms after validating it (token_cache_time ${TOKEN_CACHE_S} s)`);
      await delay(POLL_MS);
    }
    t.diagnostic(`revocation to the node's first 401 on the cached image: ${refused.afterMs} ms (token_cache_time ${TOKEN_CACHE_S} s); Glance asked directly at that moment: ${refused.glance}`);
    assert.equal(refused.glance, 200, 'Glance still trusts its cached validation: the 401 is the node\'s own');
    assert.match(String(refused.answer.headers['www-authenticate']), new RegExp(`^Keystone uri="${keystone.url}"$`));
    assert.ok(!refused.answer.body.includes(data.subarray(0, 64)), 'no image byte in the refusal');

    // `openstack image save`: the metadata still passes Glance, the data is the node's to refuse. The
    // SDK (0.101) does not look at a download's status: it fails on the checksum of what it got, whoever refused.
    tokenCloud('revoked', token);
    const saved = await run('openstack', ['--os-cloud', 'revoked', 'image', 'save', '--file', path.join(dir, 'saved'), id], env);
    t.diagnostic(`openstack image save with the revoked token: ${saved.output.trim()}`);
    assert.notEqual(saved.code, 0);
    assert.match(saved.output, /^Unable to download image: /m);
    assert.ok(!fs.readFileSync(path.join(dir, 'saved')).includes(data.subarray(0, 64)), 'no image byte saved');
  });

  it('has glance and openstack print the node\'s refusals (401, 403, 404, 409) as they print Glance\'s', async (t: TestContext) => {
    const admin = await keystone.token('admin', 'secret', 'admin');
    const printed: Array<[what: string, ran: Ran, expected: RegExp[]]> = [
      ['glance cache-list, a member', await glanceCli('demo', 'cache-list'), [/^HTTP 403 Forbidden: Managing the image cache needs the 'admin' role\.$/m]],
      ['glance cache-delete, an image nobody knows', await glanceCli('admin', 'cache-delete', NO_SUCH_IMAGE), [new RegExp(`HTTP 404 Not Found: Image ${NO_SUCH_IMAGE} not found\\.`)]],
      ['glance cache-list, a bad token', await run('glance', ['--os-image-api-version', '2', '--os-image-url', node.url, '--os-auth-token', 'not-a-token', 'cache-list'], env), [/^Invalid OpenStack Identity credentials\.$/m]],
      ['glanceclient, the nodes of an image (sqlite driver)', await run(PYTHON, ['-c', GLANCECLIENT_REQUEST, node.url, admin, `/v2/cache/nodes/${NO_SUCH_IMAGE}`], env),
        [/^HTTP 409 Conflict: Listing the nodes that cache an image needs the centralized_db cache driver, not sqlite\.$/m]],
      ['openstacksdk, the cache list, a member', await run(PYTHON, ['-c', SDK_REQUEST, 'demo', 'GET', '/cache'], env), [/^HttpException: 403: /m, /Managing the image cache needs the 'admin' role\./, /403 Forbidden/]],
      ['openstacksdk, deleting an image nobody knows from the cache', await run(PYTHON, ['-c', SDK_REQUEST, 'admin', 'DELETE', `/cache/${NO_SUCH_IMAGE}`], env), [/^(ResourceNotFound|NotFoundException): 404: /m, new RegExp(`Image ${NO_SUCH_IMAGE} not found\\.`)]],
      ['openstacksdk, the nodes of an image (sqlite driver)', await run(PYTHON, ['-c', SDK_REQUEST, 'admin', 'GET', `/cache/nodes/${NO_SUCH_IMAGE}`], env), [/^ConflictException: 409: /m, /needs the centralized_db cache driver/]],
    ];
    tokenCloud('bogus', 'not-a-token');
    printed.push(['openstacksdk, the cache list, a bad token', await run(PYTHON, ['-c', SDK_REQUEST, 'bogus', 'GET', '/cache'], env), [/^HttpException: 401: /m, /The token is not valid \(unknown, expired or revoked\)\./]]);
    for (const [what, ran] of printed) t.diagnostic(`${what}: ${ran.output.trim()}`);
    for (const [what, ran, expected] of printed) {
      assert.notEqual(ran.output.trim(), '200', what);
      assert.doesNotMatch(ran.output, /object has no attribute|Traceback/, what);
      for (const pattern of expected) assert.match(ran.output, pattern, what);
    }
  });

  it('sends Glance the request id Glance logs: the caller\'s global id, else the node\'s own', async () => {
    const token = await keystone.token('demo', 'secret', 'demo');
    const id = await uploadImage(glance.url, imageBytes(4096), 'traced', token);
    const globalId = 'req-6f1c1f0e-1d2b-4c3a-9e8f-7a6b5c4d3e2f';
    const traced = await fetchAll(fileUrl(node.url, id), { headers: { 'x-auth-token': token, 'x-openstack-request-id': globalId } });
    const untraced = await fetchAll(`${node.url}/v2/images/${id}`, { headers: { 'x-auth-token': token } });
    assert.equal(traced.status, 200);
    assert.equal(untraced.status, 200);
    const ownId = String(untraced.headers['x-openstack-request-id']);
    assert.match(ownId, /^req-[0-9a-f-]{36}$/);
    const ourLine = lines.find((l) => l.msg === 'request' && l.requestId === traced.headers['x-openstack-request-id']);
    assert.equal(ourLine?.globalRequestId, globalId);
    // Glance (its context middleware) takes an inbound X-OpenStack-Request-ID as the request's id: `[None req-... user project ...]`.
    // It writes its access line once the answer is sent, which may be after we have read it.
    const logged = (requestId: string, route: string) => () => fs.readFileSync(glance.log, 'utf8').split('\n')
      .some((line) => line.includes(` ${requestId} `) && line.includes(`"GET ${route} `));
    await until(logged(globalId, `/v2/images/${id}`), 'Glance to log the metadata request under the caller\'s global id');
    await until(logged(globalId, `/v2/images/${id}/file`), 'Glance to log the fill under the caller\'s global id');
    await until(logged(ownId, `/v2/images/${id}`), 'Glance to log a forwarded request without a global id under the node\'s own id');
  });
});
