import fs from 'node:fs';
import path from 'node:path';
import { envName, optionsFromEnv, optionsFromGlanceSettings, parseGlanceConfig, type ImageCacheOptions } from '../config.js';
import { SERVE_DEFAULTS } from '../server/config.js';

/** Flags shared by every command, named after Glance's options. */
export const GLOBAL_FLAGS = {
  'config-file': { type: 'string' },
  'image-cache-dir': { type: 'string' },
  'image-cache-driver': { type: 'string' },
  'image-cache-max-size': { type: 'string' },
  'image-cache-stall-time': { type: 'string' },
  'image-cache-sqlite-db': { type: 'string' },
  'worker-self-reference-url': { type: 'string' },
  'database-connection': { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

type Flags = Record<string, string | boolean | undefined>;

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
  return typeof flags['config-file'] === 'string' ? parseGlanceConfig(fs.readFileSync(flags['config-file'], 'utf8')) : {};
}
