/**
 * The options every command shares, named after Glance's, and where a
 * local command finds its cache and its image store: lowest precedence
 * first, the config file, the IMAGE_CACHE_* environment, the flags.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DRIVER_NAMES, envName, optionsFromEnv, optionsFromGlanceSettings, parseGlanceConfig, resolveOptions, type ImageCacheOptions } from '../config.js';
import { ImageCache } from '../cache/image-cache.js';
import { InvalidOption } from '../errors.js';
import { SERVE_DEFAULTS } from '../server/config.js';
import { UsageError, type Flags } from './command.js';

/** The program's options: accepted before or after the command's name, shown in every command's help. */
export function addGlobalOptions(program: Command): Command {
  return program
    .option('--config-file <FILE>', 'a glance-api.conf: its [DEFAULT] options, [database] connection, [glance_store] filesystem_store_datadir')
    .option('--image-cache-dir <DIR>', 'the cache directory (IMAGE_CACHE_DIR)')
    // Checked with the other options, by the command (a usage error that shows the command's synopsis).
    .option('--image-cache-driver <DRIVER>', `the metadata driver: ${DRIVER_NAMES.join(', ')} (IMAGE_CACHE_DRIVER; default sqlite)`)
    .option('--image-cache-max-size <BYTES>', 'the size prune brings the cache down to (IMAGE_CACHE_MAX_SIZE; default 10 GiB)')
    .option('--image-cache-stall-time <SECONDS>', 'age at which an unfinished download is abandoned (IMAGE_CACHE_STALL_TIME; default 86400)')
    .option('--image-cache-sqlite-db <NAME>', 'the sqlite file in the cache directory (default cache.db)')
    .option('--worker-self-reference-url <URL>', 'this node\'s URL, for centralized_db')
    .option('--database-connection <URL>', 'PostgreSQL URL, for centralized_db');
}

/** Options from, lowest precedence first: the config file's [DEFAULT], the environment, flags. */
export function loadOptions(flags: Flags): ImageCacheOptions {
  const fromFile = optionsFromGlanceSettings(configSettings(flags));
  const flagSettings: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(flags)) {
    if (typeof value === 'string' && name !== 'config-file') flagSettings[name.replaceAll('-', '_')] = value;
  }
  return { ...fromFile, ...optionsFromEnv(), ...optionsFromGlanceSettings(flagSettings) } as ImageCacheOptions;
}

/**
 * The options of a command on the cache directory itself, checked as the
 * cache would check them, so that a bad one is a usage error before the
 * directory is created. image_cache_dir is required (no default: a command
 * run in the wrong directory must not start a new, empty cache there).
 */
export function localCacheOptions(flags: Flags): ImageCacheOptions {
  try {
    const options = loadOptions(flags);
    if (!options.imageCacheDir) {
      throw new UsageError('image_cache_dir is required: pass --image-cache-dir DIR, set IMAGE_CACHE_DIR, or give a --config-file that names it');
    }
    options.imageCacheDir = path.resolve(options.imageCacheDir);
    resolveOptions(options);
    return options;
  } catch (err) {
    if (err instanceof InvalidOption) throw new UsageError(err.message);
    throw err;
  }
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
 * filesystem_store_datadir, the local image store, as an absolute path. From,
 * highest precedence first: --filesystem-store-datadir, IMAGE_CACHE_FILESYSTEM_STORE_DATADIR,
 * the config file ([glance_store] or [DEFAULT]), ./var/images (where `serve` looks by default).
 */
export function loadStoreDir(flags: Flags): string {
  const named = [flags['filesystem-store-datadir'], process.env[envName('filesystem_store_datadir')], configSettings(flags).filesystem_store_datadir]
    .find((value): value is string => typeof value === 'string' && value !== '');
  return path.resolve(named ?? SERVE_DEFAULTS.filesystemStoreDatadir);
}

/** The settings of --config-file; none without one. */
function configSettings(flags: Flags): Record<string, string> {
  const file = flags['config-file'];
  if (typeof file !== 'string') return {};
  try {
    return parseGlanceConfig(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config-file ${file} cannot be read: ${(err as Error).message}`);
  }
}
