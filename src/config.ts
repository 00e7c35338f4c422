/**
 * The image cache's options as the library takes them (ImageCacheOptions)
 * and checks them (resolveOptions), by the rules of the one schema
 * (config/schema.ts) that the commands and the node read too.
 */
import path from 'node:path';
import { Configuration, findInFile, type ConfigSources } from './config/load.js';
import { parseIni } from './config/ini.js';
import { parseValue } from './config/option-types.js';
import { ALL_OPTIONS, OPTIONS, optionsOf, type DriverName, type OptionSpec } from './config/schema.js';
import { InvalidOption } from './errors.js';
import type { CacheIo } from './fs/io.js';
import type { Logger } from './log.js';

export { DRIVER_NAMES, envName, type DriverName } from './config/schema.js';
export { parseIni } from './config/ini.js';

/** Options of the cache, named after Glance's configuration options (camelCased). */
export interface ImageCacheOptions {
  /** image_cache_dir: the cache directory (required). */
  imageCacheDir: string;
  /** image_cache_driver: which metadata driver (default sqlite). */
  imageCacheDriver?: DriverName;
  /** image_cache_max_size: prune target in bytes (default 10 GiB). */
  imageCacheMaxSize?: number;
  /** image_cache_stall_time: seconds after which an incomplete file is stalled (default 86400). */
  imageCacheStallTime?: number;
  /** image_cache_sqlite_db: the sqlite file name, relative to the cache directory (default cache.db). */
  imageCacheSqliteDb?: string;
  /** worker_self_reference_url: this node's URL (centralized_db). */
  workerSelfReferenceUrl?: string;
  /** database_connection: PostgreSQL URL (centralized_db). */
  databaseConnection?: string;
  logger?: Logger;
  /**
   * The fsync and rename calls of the write path. For tests that need a slow
   * or failing disk, or to act between two steps of a commit; the default is the real system calls.
   */
  io?: CacheIo;
}

export interface ResolvedOptions {
  imageCacheDir: string;
  imageCacheDriver: DriverName;
  imageCacheMaxSize: number;
  imageCacheStallTime: number;
  imageCacheSqliteDb: string;
  workerSelfReferenceUrl: string | undefined;
  databaseConnection: string | undefined;
  logger: Logger | undefined;
  io: CacheIo | undefined;
}

/** The options ImageCacheOptions takes from the schema, by field name. */
const CACHE_KEYS = ['imageCacheDir', 'imageCacheDriver', 'imageCacheMaxSize', 'imageCacheStallTime', 'imageCacheSqliteDb', 'workerSelfReferenceUrl', 'databaseConnection'] as const;
type CacheKey = (typeof CACHE_KEYS)[number];
const CACHE_OPTIONS: ReadonlyArray<readonly [CacheKey, OptionSpec]> = CACHE_KEYS.map((key) => [key, OPTIONS[key] as OptionSpec]);

const OPTION_NAMES: ReadonlySet<string> = new Set([...CACHE_KEYS, 'logger', 'io'] satisfies Array<keyof ImageCacheOptions>);

export const DEFAULTS = {
  imageCacheDriver: OPTIONS.imageCacheDriver.default,
  imageCacheMaxSize: OPTIONS.imageCacheMaxSize.default,
  imageCacheStallTime: OPTIONS.imageCacheStallTime.default,
  imageCacheSqliteDb: OPTIONS.imageCacheSqliteDb.default,
};

/**
 * Validates options and fills in defaults. An unset cache directory is left to
 * the driver's configure(), which reports it as BadDriverConfiguration the way
 * Glance does; everything else that is wrong is an InvalidOption naming the
 * option, by the rule of its type (a size must be whole bytes: 1.5 is refused).
 */
export function resolveOptions(options: ImageCacheOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') throw new InvalidOption('options', 'must be an object');
  for (const key of Object.keys(options)) {
    if (key === 'writerLeaseSeconds') {
      throw new InvalidOption(key, 'is gone: a writer\'s claim on an image is now a file lock that dies with its process, so there is no lease to set');
    }
    if (!OPTION_NAMES.has(key)) throw new InvalidOption(key, `is not an option of the image cache (options: ${[...OPTION_NAMES].join(', ')})`);
  }
  const checked = <T>(spec: OptionSpec<T>, given: unknown): T | undefined => {
    if (given === undefined) return spec.default;
    const parsed = parseValue(spec.type, given);
    if ('invalid' in parsed) throw new InvalidOption(spec.name, parsed.invalid);
    return parsed.value;
  };
  return {
    imageCacheDir: options.imageCacheDir,
    imageCacheDriver: checked(OPTIONS.imageCacheDriver, options.imageCacheDriver)!,
    imageCacheMaxSize: checked(OPTIONS.imageCacheMaxSize, options.imageCacheMaxSize)!,
    imageCacheStallTime: checked(OPTIONS.imageCacheStallTime, options.imageCacheStallTime)!,
    imageCacheSqliteDb: checked(OPTIONS.imageCacheSqliteDb, options.imageCacheSqliteDb)!,
    workerSelfReferenceUrl: checked(OPTIONS.workerSelfReferenceUrl, options.workerSelfReferenceUrl),
    databaseConnection: checked(OPTIONS.databaseConnection, options.databaseConnection),
    logger: options.logger,
    io: options.io,
  };
}

/**
 * The cache's options that `config` sets (the library fills in the rest),
 * each checked now so that a bad one is named with where it was set.
 * image_cache_dir is made absolute; unset, it is left unset.
 */
export function cacheOptionsFrom(config: Configuration): Partial<ImageCacheOptions> {
  const options: Partial<Record<CacheKey, unknown>> = {};
  for (const [key, spec] of CACHE_OPTIONS) if (config.isSet(spec)) options[key] = config.get(spec);
  if (typeof options.imageCacheDir === 'string') options.imageCacheDir = path.resolve(options.imageCacheDir);
  return options as Partial<ImageCacheOptions>;
}

/** The cache's options from a config file, the environment and flags (Configuration.load). */
export function loadCacheOptions(sources: ConfigSources): Partial<ImageCacheOptions> {
  return cacheOptionsFrom(Configuration.load(sources));
}

/** Options from Glance-style key/value strings (an INI section, the environment); unknown keys are ignored. */
export function optionsFromGlanceSettings(settings: Record<string, string | undefined>): Partial<ImageCacheOptions> {
  const out: Partial<Record<CacheKey, unknown>> = {};
  for (const [key, spec] of CACHE_OPTIONS) {
    const raw = settings[spec.name];
    if (raw === undefined || raw === '') continue;
    const parsed = spec.type.parse(raw);
    if ('invalid' in parsed) throw new InvalidOption(spec.name, parsed.invalid);
    out[key] = parsed.value;
  }
  return out as Partial<ImageCacheOptions>;
}

/** The same options from environment variables (IMAGE_CACHE_DIR, IMAGE_CACHE_MAX_SIZE, ...). */
export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<ImageCacheOptions> {
  return optionsFromGlanceSettings(Object.fromEntries(optionsOf('cache').map((spec) => [spec.name, env[spec.env]])));
}

/**
 * The settings of a glance-api.conf-style INI file, by option name, each from
 * where the schema says the file keeps it: [DEFAULT], [database] connection
 * as database_connection (unless [DEFAULT] names one itself), [glance_store]
 * filesystem_store_datadir (which wins over [DEFAULT]'s, as oslo.config lets
 * an option's group win over its deprecated place). [keystone_authtoken] is the node's.
 */
export function parseGlanceConfig(text: string): Record<string, string> {
  const sections = parseIni(text);
  const out: Record<string, string> = {};
  for (const spec of ALL_OPTIONS) {
    if (spec.scope === 'keystone') continue;
    const found = findInFile(sections, spec);
    if (found !== undefined) out[spec.name] = found.value;
  }
  return out;
}
