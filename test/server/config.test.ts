/** loadServeConfig: glance-api.conf's sections, and the errors that name an option and where it was set. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ConfigurationError, loadServeConfig } from '../../src/server/config.js';
import { makeTempDir, removeDir } from '../helpers.js';

function withConfig(lines: string[], fn: (file: string) => void): void {
  const dir = makeTempDir('image-cache-config-');
  try {
    const file = path.join(dir, 'glance-api.conf');
    fs.writeFileSync(file, lines.join('\n'));
    fn(file);
  } finally {
    removeDir(dir);
  }
}

describe('loadServeConfig', () => {
  it('reads [keystone_authtoken] as glance-api.conf writes it when auth_strategy = keystone', () => {
    withConfig([
      '[DEFAULT]', 'auth_strategy = keystone', 'cache_admin_role = cloud-admin',
      '[keystone_authtoken]', 'auth_url = http://keystone.example.com:5000', 'username = glance', 'password = s3cret', 'project_name = service',
      'user_domain_name = Default', 'project_domain_name = Default', 'token_cache_time = 60', 'memcached_servers = ignored:11211',
    ], (file) => {
      const { server } = loadServeConfig(file, {}, {});
      assert.equal(server.authStrategy, 'keystone');
      assert.equal(server.cacheAdminRole, 'cloud-admin');
      assert.deepEqual(server.keystone, {
        authUrl: 'http://keystone.example.com:5000', username: 'glance', password: 's3cret', projectName: 'service',
        userDomainName: 'Default', projectDomainName: 'Default', tokenCacheSeconds: 60,
      });
    });
  });

  it('names a missing [keystone_authtoken] option, and an invalid one with its file', () => {
    withConfig(['[DEFAULT]', 'auth_strategy = keystone', '[keystone_authtoken]', 'auth_url = http://keystone:5000', 'username = glance', 'project_name = service'], (file) => {
      assert.throws(() => loadServeConfig(file, {}, {}), (err: Error) => err instanceof ConfigurationError && /\[keystone_authtoken\] password/.test(err.message));
    });
    withConfig(['[DEFAULT]', 'auth_strategy = keystone', '[keystone_authtoken]', 'auth_url = http://k:5000', 'username = g', 'password = p', 'project_name = s', 'token_cache_time = soon'], (file) => {
      assert.throws(() => loadServeConfig(file, {}, {}), (err: Error) => err instanceof ConfigurationError && err.message.includes('token_cache_time') && err.message.includes(file));
    });
  });

  it('needs no Keystone settings with noauth, and reads the maintenance and prefetch options', () => {
    withConfig(['[DEFAULT]', 'image_cache_prefetch_workers = 3', 'image_cache_prune_interval = 0', 'image_cache_clean_interval = 600', 'upstream_token = static'], (file) => {
      const { server } = loadServeConfig(file, {}, {});
      assert.equal(server.keystone, undefined);
      assert.equal(server.prefetchWorkers, 3);
      assert.equal(server.pruneInterval, 0);
      assert.equal(server.cleanInterval, 600);
      assert.equal(server.upstreamToken, 'static');
    });
  });

  it('reads client_header_timeout (default 60 s) and refuses a bad one, naming the option and where it was set', () => {
    assert.equal(loadServeConfig(undefined, {}, {}).server.clientHeaderTimeout, 60);
    withConfig(['[DEFAULT]', 'client_header_timeout = 5'], (file) => {
      assert.equal(loadServeConfig(file, {}, {}).server.clientHeaderTimeout, 5);
    });
    withConfig(['[DEFAULT]', 'client_header_timeout = soon'], (file) => {
      assert.throws(() => loadServeConfig(file, {}, {}), (err: Error) => err instanceof ConfigurationError && err.message.includes('client_header_timeout') && err.message.includes(file));
    });
    const refused = (flags: Record<string, string>, env: NodeJS.ProcessEnv, origin: string) =>
      assert.throws(() => loadServeConfig(undefined, flags, env), (err: Error) => err instanceof ConfigurationError && err.message.startsWith(`client_header_timeout (${origin})`));
    // 0 would turn the limit off; whole seconds, as Glance's IntOpt timeouts are.
    refused({}, { IMAGE_CACHE_CLIENT_HEADER_TIMEOUT: '0' }, 'environment variable IMAGE_CACHE_CLIENT_HEADER_TIMEOUT');
    refused({ 'client-header-timeout': '1.5' }, {}, 'flag --client-header-timeout');
    refused({ 'client-header-timeout': '-1' }, {}, 'flag --client-header-timeout');
  });

  it('lets the environment override the file and flags override both', () => {
    withConfig(['[DEFAULT]', 'bind_port = 1000'], (file) => {
      assert.equal(loadServeConfig(file, {}, {}).server.bindPort, 1000);
      assert.equal(loadServeConfig(file, {}, { IMAGE_CACHE_BIND_PORT: '2000' }).server.bindPort, 2000);
      assert.equal(loadServeConfig(file, { 'bind-port': '3000' }, { IMAGE_CACHE_BIND_PORT: '2000' }).server.bindPort, 3000);
    });
  });
});
