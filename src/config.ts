import { InvalidOption } from './errors.js';
import type { CacheIo } from './fs/io.js';
import type { Logger } from './log.js';

export const DRIVER_NAMES = ['sqlite', 'xattr', 'centralized_db'] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];

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

const OPTION_NAMES: ReadonlySet<string> = new Set([
  'imageCacheDir', 'imageCacheDriver', 'imageCacheMaxSize', 'imageCacheStallTime', 'imageCacheSqliteDb',
  'workerSelfReferenceUrl', 'databaseConnection', 'logger', 'io',
] satisfies Array<keyof ImageCacheOptions>);

export const DEFAULTS = {
  imageCacheDriver: 'sqlite' as DriverName,
  imageCacheMaxSize: 10 * 1024 ** 3,
  imageCacheStallTime: 86_400,
  imageCacheSqliteDb: 'cache.db',
};

/**
 * Validates options and fills in defaults. An unset cache directory is left to
 * the driver's configure(), which reports it as BadDriverConfiguration the way
 * Glance does; everything else that is wrong is an InvalidOption naming the option.
 */
export function resolveOptions(options: ImageCacheOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') throw new InvalidOption('options', 'must be an object');
  for (const key of Object.keys(options)) {
    if (key === 'writerLeaseSeconds') {
      throw new InvalidOption(key, 'is gone: a writer\'s claim on an image is now a file lock that dies with its process, so there is no lease to set');
    }
    if (!OPTION_NAMES.has(key)) throw new InvalidOption(key, `is not an option of the image cache (options: ${[...OPTION_NAMES].join(', ')})`);
  }
  const driver = options.imageCacheDriver ?? DEFAULTS.imageCacheDriver;
  if (!DRIVER_NAMES.includes(driver)) {
    throw new InvalidOption('image_cache_driver', `must be one of ${DRIVER_NAMES.join(', ')}, not ${JSON.stringify(driver)}`);
  }
  const sqliteDb = options.imageCacheSqliteDb ?? DEFAULTS.imageCacheSqliteDb;
  if (typeof sqliteDb !== 'string' || sqliteDb.length === 0 || sqliteDb.includes('/') || sqliteDb.includes('\0') || sqliteDb === '.' || sqliteDb === '..') {
    throw new InvalidOption('image_cache_sqlite_db', 'must be a plain file name inside the cache directory');
  }
  return {
    imageCacheDir: options.imageCacheDir,
    imageCacheDriver: driver,
    imageCacheMaxSize: nonNegative('image_cache_max_size', options.imageCacheMaxSize, DEFAULTS.imageCacheMaxSize),
    imageCacheStallTime: nonNegative('image_cache_stall_time', options.imageCacheStallTime, DEFAULTS.imageCacheStallTime),
    imageCacheSqliteDb: sqliteDb,
    workerSelfReferenceUrl: options.workerSelfReferenceUrl,
    databaseConnection: options.databaseConnection,
    logger: options.logger,
    io: options.io,
  };
}

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidOption(name, `must be a number >= 0, not ${JSON.stringify(value)}`);
  }
  return value;
}

/** Glance's option names (snake_case, as in glance-api.conf) mapped to ours. */
const GLANCE_NAMES: Record<string, keyof ImageCacheOptions> = {
  image_cache_dir: 'imageCacheDir',
  image_cache_driver: 'imageCacheDriver',
  image_cache_max_size: 'imageCacheMaxSize',
  image_cache_stall_time: 'imageCacheStallTime',
  image_cache_sqlite_db: 'imageCacheSqliteDb',
  worker_self_reference_url: 'workerSelfReferenceUrl',
  database_connection: 'databaseConnection',
};
const NUMERIC = new Set<keyof ImageCacheOptions>(['imageCacheMaxSize', 'imageCacheStallTime']);

/** Options from Glance-style key/value strings (an INI section, the environment); unknown keys are ignored. */
export function optionsFromGlanceSettings(settings: Record<string, string | undefined>): Partial<ImageCacheOptions> {
  const out: Record<string, unknown> = {};
  for (const [glanceName, ours] of Object.entries(GLANCE_NAMES)) {
    const raw = settings[glanceName];
    if (raw === undefined || raw === '') continue;
    if (NUMERIC.has(ours)) {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new InvalidOption(glanceName, `must be a number, not ${JSON.stringify(raw)}`);
      out[ours] = n;
    } else {
      out[ours] = raw;
    }
  }
  return out as Partial<ImageCacheOptions>;
}

/**
 * The environment variable of an option: IMAGE_CACHE_ and its name in upper
 * case (IMAGE_CACHE_BIND_PORT), or just the upper case for the names that
 * start with image_cache_ already (IMAGE_CACHE_DIR).
 */
export function envName(glanceName: string): string {
  const upper = glanceName.toUpperCase();
  return upper.startsWith('IMAGE_CACHE_') ? upper : `IMAGE_CACHE_${upper}`;
}

/** The same options from environment variables (see envName). */
export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<ImageCacheOptions> {
  const settings: Record<string, string | undefined> = {};
  for (const glanceName of Object.keys(GLANCE_NAMES)) settings[glanceName] = env[envName(glanceName)];
  return optionsFromGlanceSettings(settings);
}

/**
 * The settings of a glance-api.conf-style INI file that concern the cache:
 * its [DEFAULT] section, plus [database] connection as database_connection
 * (where Glance keeps it) unless [DEFAULT] names one itself, and
 * [glance_store] filesystem_store_datadir, which wins over [DEFAULT]'s as
 * oslo.config lets an option's group win over its deprecated place in [DEFAULT].
 */
export function parseGlanceConfig(text: string): Record<string, string> {
  return glanceSettings(parseIni(text));
}

/** parseGlanceConfig of sections parsed already. */
export function glanceSettings(sections: Map<string, Record<string, string>>): Record<string, string> {
  const out = { ...(sections.get('DEFAULT') ?? {}) };
  const connection = sections.get('database')?.connection;
  if (out.database_connection === undefined && connection !== undefined) out.database_connection = connection;
  const storeDir = sections.get('glance_store')?.filesystem_store_datadir;
  if (storeDir !== undefined) out.filesystem_store_datadir = storeDir;
  return out;
}

/** Every section of an INI file, by name, as key/value strings. */
export function parseIni(text: string): Map<string, Record<string, string>> {
  const sections = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      const name = header[1]!.trim();
      current = sections.get(name) ?? {};
      sections.set(name, current);
      continue;
    }
    const eq = line.search(/[=:]/);
    if (current === undefined || eq <= 0) continue;
    current[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return sections;
}
