/**
 * The options every command shares, and where a command finds its cache and
 * its image store: the schema's options (config/schema.ts) as flags, read
 * with the one precedence (config/load.ts): the config file, the
 * IMAGE_CACHE_* environment, the flags.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { cacheOptionsFrom, resolveOptions, type ImageCacheOptions } from '../config.js';
import { Configuration } from '../config/load.js';
import { OPTIONS, optionsOf, shownDefault, type OptionSpec } from '../config/schema.js';
import { ImageCache } from '../cache/image-cache.js';
import { ImageCacheError, UsageError } from '../errors.js';
import type { Flags } from './command.js';

/** An option's flag as commander declares it, and its help: what it sets, its variable, its default. */
export function flagOf(spec: OptionSpec): [flags: string, help: string] {
  const fallback = shownDefault(spec);
  return [`--${spec.flag} <${spec.type.metavar}>`, `${spec.help} (${spec.env}${fallback === undefined ? '' : `; default ${fallback}`})`];
}

/** Declares `specs` as flags of `cmd`. */
export function addOptionFlags(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const spec of specs) cmd.option(...flagOf(spec));
  return cmd;
}

/**
 * The program's options: the config file and the cache's options, accepted
 * before or after the command's name, shown in every command's help. Their
 * values are checked by the command (a usage error that shows its synopsis).
 */
export function addGlobalOptions(program: Command): Command {
  program.option('--config-file <FILE>', 'a glance-api.conf: its [DEFAULT] options, [database] connection, [glance_store] filesystem_store_datadir, [keystone_authtoken]');
  return addOptionFlags(program, optionsOf('cache'));
}

/**
 * `read` on the configuration the flags, the environment and --config-file
 * give; a bad value (or an unreadable file) is a usage error that names the
 * option and where it was set, raised before anything is opened or created.
 */
export function readConfiguration<T>(flags: Flags, read: (config: Configuration) => T): T {
  const configFile = flags['config-file'];
  try {
    return read(Configuration.load({ configFile: typeof configFile === 'string' ? configFile : undefined, env: process.env, flags }));
  } catch (err) {
    if (err instanceof ImageCacheError && !(err instanceof UsageError)) throw new UsageError(err.message);
    throw err;
  }
}

/**
 * The options of a command on the cache directory itself, checked as the
 * cache would check them, so that a bad one is a usage error before the
 * directory is created. Without image_cache_dir the directory is serve's
 * default, ./var/cache, but only if it is there: a command run in the wrong
 * directory must not start a new, empty cache.
 */
export function localCacheOptions(flags: Flags): ImageCacheOptions {
  return readConfiguration(flags, (config) => {
    const options = { imageCacheDir: defaultCacheDir(), ...cacheOptionsFrom(config) };
    if (options.imageCacheDir === undefined) {
      throw new UsageError(`image_cache_dir is required: pass --image-cache-dir DIR, set IMAGE_CACHE_DIR, or give a --config-file that names it (serve's default, ${OPTIONS.imageCacheDir.shownDefault}, is not here)`);
    }
    resolveOptions(options as ImageCacheOptions);
    return options as ImageCacheOptions;
  });
}

/** ./var/cache, where `serve` keeps its cache by default, if it exists. */
function defaultCacheDir(): string | undefined {
  const dir = path.resolve(OPTIONS.imageCacheDir.default);
  return fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory() ? dir : undefined;
}

/** Opens the cache, runs `work` on it, closes it whatever happens. */
export async function withCache<T>(options: ImageCacheOptions, work: (cache: ImageCache) => Promise<T>): Promise<T> {
  const cache = await ImageCache.create(options);
  try {
    return await work(cache);
  } finally {
    await cache.close();
  }
}

/**
 * filesystem_store_datadir, the local image store, as an absolute path: the
 * flag, IMAGE_CACHE_FILESYSTEM_STORE_DATADIR, the config file ([glance_store]
 * or [DEFAULT]), ./var/images (where `serve` looks by default).
 */
export function loadStoreDir(flags: Flags): string {
  return readConfiguration(flags, (config) => path.resolve(config.get(OPTIONS.filesystemStoreDatadir)));
}
