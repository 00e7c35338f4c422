import fs from 'node:fs';
import { optionsFromEnv, optionsFromGlanceSettings, parseGlanceConfig, type ImageCacheOptions } from '../config.js';

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

/** Options from, lowest precedence first: the config file's [DEFAULT], the environment, flags. */
export function loadOptions(flags: Record<string, string | boolean | undefined>): ImageCacheOptions {
  const fromFile = typeof flags['config-file'] === 'string'
    ? optionsFromGlanceSettings(parseGlanceConfig(fs.readFileSync(flags['config-file'], 'utf8')))
    : {};
  const flagSettings: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(flags)) {
    if (typeof value === 'string' && name !== 'config-file') flagSettings[name.replaceAll('-', '_')] = value;
  }
  return { ...fromFile, ...optionsFromEnv(), ...optionsFromGlanceSettings(flagSettings) } as ImageCacheOptions;
}
