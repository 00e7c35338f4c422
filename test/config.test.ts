import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { optionsFromGlanceSettings, parseGlanceConfig, resolveOptions } from '../src/index.js';

describe('configuration', () => {
  it('reads [DEFAULT] of a glance-api.conf, and [database] connection as database_connection', () => {
    const settings = parseGlanceConfig([
      '[DEFAULT]',
      'image_cache_dir = /var/lib/glance/image-cache',
      '# a comment',
      'image_cache_max_size: 2048',
      '[database]',
      'connection = postgresql://glance@db/glance',
      '[glance_store]',
      'image_cache_dir = /elsewhere',
    ].join('\n'));
    assert.deepEqual(optionsFromGlanceSettings(settings), {
      imageCacheDir: '/var/lib/glance/image-cache',
      imageCacheMaxSize: 2048,
      databaseConnection: 'postgresql://glance@db/glance',
    });
    assert.equal(parseGlanceConfig('[DEFAULT]\ndatabase_connection = postgresql://a/b\n[database]\nconnection = postgresql://c/d\n').database_connection, 'postgresql://a/b');
  });

  it('rejects bad values with InvalidOption naming the option', () => {
    assert.throws(() => optionsFromGlanceSettings({ image_cache_max_size: 'ten' }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_max_size' });
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheMaxSize: -1 }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_max_size' });
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheDriver: 'redis' as never }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_driver' });
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheSqliteDb: '../cache.db' }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_sqlite_db' });
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheMaxSzie: 10 } as never), { code: 'ERR_INVALID_OPTION', option: 'imageCacheMaxSzie', message: /not an option/ });
    // Gone since claims became file locks: said so, not silently ignored.
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', writerLeaseSeconds: 60 } as never), { code: 'ERR_INVALID_OPTION', option: 'writerLeaseSeconds', message: /lock/ });
  });

  it('fills in Glance\'s defaults', () => {
    const options = resolveOptions({ imageCacheDir: '/x' });
    assert.equal(options.imageCacheDriver, 'sqlite');
    assert.equal(options.imageCacheMaxSize, 10 * 1024 ** 3);
    assert.equal(options.imageCacheStallTime, 86_400);
    assert.equal(options.imageCacheSqliteDb, 'cache.db');
  });
});
