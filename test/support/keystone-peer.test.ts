/**
 * The Keystone harness itself: the users it provisions get project-scoped
 * tokens with the roles the auth tests rely on, Keystone validates them, and
 * a revoked token no longer validates.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { keystoneAvailable, startKeystone, type KeystonePeer } from './keystone-peer.js';

const missing = keystoneAvailable() ? undefined : 'Debian\'s keystone is not installed (apt-get install keystone; .ci/run does)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

interface Validation {
  status: number;
  body: { token?: { roles?: { name: string }[]; project?: { name: string }; user?: { name: string } } };
}

/** GET /v3/auth/tokens: `subject` as Keystone sees it, asked with the admin's token. */
async function validate(keystone: KeystonePeer, admin: string, subject: string): Promise<Validation> {
  const res = await fetch(`${keystone.url}/auth/tokens`, { headers: { 'X-Auth-Token': admin, 'X-Subject-Token': subject } });
  const text = await res.text();
  return { status: res.status, body: text === '' ? {} : JSON.parse(text) };
}

function roleNames(validation: Validation): string[] {
  return (validation.body.token?.roles ?? []).map((role) => role.name);
}

describe('the Keystone peer', { skip: missing }, () => {
  let keystone: KeystonePeer;
  before(async () => {
    keystone = await startKeystone();
  });
  after(() => keystone?.stop());

  it('issues project-scoped tokens with the users\' roles, validates them, and stops validating a revoked one', async () => {
    assert.match(keystone.url, /^http:\/\/127\.0\.0\.1:\d+\/v3$/);
    const admin = await keystone.token('admin', 'secret', 'admin');
    const demo = await keystone.token('demo', 'secret', 'demo');

    const asAdmin = await validate(keystone, admin, admin);
    assert.equal(asAdmin.status, 200, JSON.stringify(asAdmin.body));
    assert.equal(asAdmin.body.token?.user?.name, 'admin');
    assert.equal(asAdmin.body.token?.project?.name, 'admin');
    assert.ok(roleNames(asAdmin).includes('admin'), `admin's roles: ${roleNames(asAdmin)}`);

    const asDemo = await validate(keystone, admin, demo);
    assert.equal(asDemo.status, 200, JSON.stringify(asDemo.body));
    assert.equal(asDemo.body.token?.user?.name, 'demo');
    assert.equal(asDemo.body.token?.project?.name, 'demo');
    assert.ok(roleNames(asDemo).includes('member'), `demo's roles: ${roleNames(asDemo)}`);
    assert.ok(!roleNames(asDemo).includes('admin'), `demo's roles: ${roleNames(asDemo)}`);

    await keystone.revoke(demo);
    const revoked = await validate(keystone, admin, demo);
    assert.equal(revoked.status, 404, JSON.stringify(revoked.body));
    // Revoking one token leaves the others valid.
    assert.equal((await validate(keystone, admin, admin)).status, 200);
  });

  it('refuses a wrong password', async () => {
    await assert.rejects(keystone.token('demo', 'wrong', 'demo'), /401/);
  });
});
