/** The one precedence (file, environment, flags), where a glance-api.conf keeps each option, and errors that name where a value was set. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { loadCacheOptions } from '../../src/config.js';
import { Configuration } from '../../src/config/load.js';
import { OPTIONS } from '../../src/config/schema.js';
import { ConfigurationError } from '../../src/errors.js';
import { loadServeConfig } from '../../src/server/config.js';
import { makeTempDir, removeDir } from '../helpers.js';

function configFile(t: TestContext, lines: string[]): string {
  const dir = makeTempDir('image-cache-config-');
  t.after(() => removeDir(dir));
  const file = path.join(dir, 'glance-api.conf');
  fs.writeFileSync(file, lines.join('\n'));
  return file;
}

/** The ConfigurationError that `load` throws. */
function refusal(load: () => unknown): ConfigurationError {
  try {
    load();
  } catch (err) {
    assert.ok(err instanceof ConfigurationError, String(err));
    assert.equal(err.code, 'ERR_CONFIGURATION');
    return err;
  }
  assert.fail('accepted');
}

describe('loading options', () => {
  it('file, then environment, then flags, for the cache\'s options as for the node\'s', (t) => {
    const file = configFile(t, ['[DEFAULT]', 'image_cache_max_size = 1G', 'bind_port = 1000']);
    const env = { IMAGE_CACHE_MAX_SIZE: '2G', IMAGE_CACHE_BIND_PORT: '2000' };
    const flags = { 'image-cache-max-size': '3G', 'bind-port': '3000' };
    const sizeAndPort = (sources: Parameters<typeof Configuration.load>[0]) => {
      const config = Configuration.load(sources);
      return [config.get(OPTIONS.imageCacheMaxSize) / 1024 ** 3, config.get(OPTIONS.bindPort)];
    };
    assert.deepEqual(sizeAndPort({ env: {} }), [10, 9292], 'the defaults');
    assert.deepEqual(sizeAndPort({ configFile: file, env: {} }), [1, 1000]);
    assert.deepEqual(sizeAndPort({ configFile: file, env }), [2, 2000]);
    assert.deepEqual(sizeAndPort({ configFile: file, env, flags }), [3, 3000]);
    assert.equal(loadServeConfig(file, flags, env).cache.imageCacheMaxSize, 3 * 1024 ** 3, 'serve reads the same');
    assert.equal(loadCacheOptions({ configFile: file, env }).imageCacheMaxSize, 2 * 1024 ** 3, 'and so do the commands');
  });

  it('an empty value in the file or the environment is unset; an empty flag is a value, and checked', (t) => {
    const file = configFile(t, ['[DEFAULT]', 'bind_port =', 'image_cache_max_size = 5M']);
    const config = Configuration.load({ configFile: file, env: { IMAGE_CACHE_MAX_SIZE: '' } });
    assert.equal(config.get(OPTIONS.bindPort), 9292);
    assert.equal(config.get(OPTIONS.imageCacheMaxSize), 5 * 1024 ** 2);
    const err = refusal(() => Configuration.load({ env: {}, flags: { 'bind-port': '' } }).get(OPTIONS.bindPort));
    assert.equal(err.message, 'bind_port (flag --bind-port) must be a number from 0 to 65535 (a port), not ""');
  });

  it('reads each option where glance-api.conf keeps it', (t) => {
    const file = configFile(t, [
      '[DEFAULT]', 'filesystem_store_datadir = /from/default', '[glance_store]', 'filesystem_store_datadir = /from/glance-store',
      '[database]', 'connection = postgresql://glance@db/glance', '[keystone_authtoken]', 'token_cache_time = 30',
    ]);
    const config = Configuration.load({ configFile: file, env: {} });
    assert.equal(config.get(OPTIONS.filesystemStoreDatadir), '/from/glance-store', '[glance_store] over [DEFAULT]');
    assert.equal(config.get(OPTIONS.databaseConnection), 'postgresql://glance@db/glance');
    assert.equal(config.get(OPTIONS.tokenCacheSeconds), 30);
    const both = configFile(t, ['[DEFAULT]', 'database_connection = postgresql://a/b', '[database]', 'connection = postgresql://c/d']);
    assert.equal(Configuration.load({ configFile: both, env: {} }).get(OPTIONS.databaseConnection), 'postgresql://a/b', '[DEFAULT] over [database]');
  });

  it('names the option and the file (and its section), variable or flag that holds a bad value', (t) => {
    const file = configFile(t, ['[DEFAULT]', 'image_cache_max_size = 0x400', '[glance_store]', 'filesystem_store_datadir =', '[keystone_authtoken]', 'token_cache_time = 1.5']);
    const fromFile = refusal(() => loadServeConfig(file, {}, {}));
    assert.equal(fromFile.option, 'image_cache_max_size');
    assert.equal(fromFile.origin, `in ${file}`);
    assert.match(fromFile.message, /^image_cache_max_size \(in .*glance-api\.conf\) must be a size: .*not "0x400": hexadecimal is not accepted$/);
    const fromSection = refusal(() => Configuration.load({ configFile: file, env: {} }).get(OPTIONS.tokenCacheSeconds));
    assert.equal(fromSection.origin, `[keystone_authtoken] in ${file}`);
    assert.match(fromSection.message, /fractions are not accepted/);
    const fromEnv = refusal(() => loadServeConfig(undefined, {}, { IMAGE_CACHE_MAX_SIZE: '1e3' }));
    assert.match(fromEnv.message, /^image_cache_max_size \(environment variable IMAGE_CACHE_MAX_SIZE\) .*exponents are not accepted$/);
    const fromFlag = refusal(() => loadServeConfig(undefined, { 'bind-port': '1e3' }, {}));
    assert.match(fromFlag.message, /^bind_port \(flag --bind-port\) .*exponents are not accepted$/);
    const unreadable = refusal(() => Configuration.load({ configFile: path.join(path.dirname(file), 'missing.conf'), env: {} }));
    assert.match(unreadable.message, /^--config-file .*missing\.conf cannot be read: /);
  });

  it('sizes take units in every source, and serve hands the cache its bytes', (t) => {
    const file = configFile(t, ['[DEFAULT]', 'image_cache_max_size = 512M']);
    assert.equal(loadServeConfig(file, {}, {}).cache.imageCacheMaxSize, 512 * 1024 ** 2);
    assert.equal(loadServeConfig(undefined, {}, { IMAGE_CACHE_MAX_SIZE: '10GiB' }).cache.imageCacheMaxSize, 10 * 1024 ** 3);
    assert.equal(loadServeConfig(undefined, { 'image-cache-max-size': '10737418240' }, {}).cache.imageCacheMaxSize, 10 * 1024 ** 3);
  });
});
