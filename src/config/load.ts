/**
 * The one precedence of options, for the library's loaders, every command
 * and `serve`: lowest first, the config file (a glance-api.conf: each
 * option where the schema says the file keeps it), the environment
 * (IMAGE_CACHE_DIR, IMAGE_CACHE_BIND_PORT, ...), the flags (--bind-port, ...).
 * Each setting keeps where it came from, so that a bad value is reported
 * with the file, variable or flag that holds it.
 */
import fs from 'node:fs';
import { ConfigurationError } from '../errors.js';
import { parseIni } from './ini.js';
import { ALL_OPTIONS, type OptionSpec } from './schema.js';

/** Where to look. `flags` by flag name (`bind-port`); values that are not strings (`--json`) are not settings. */
export interface ConfigSources {
  configFile?: string | undefined;
  env?: NodeJS.ProcessEnv;
  flags?: Record<string, string | boolean | undefined>;
}

/** A setting as it was written, and where. */
interface Setting {
  value: string;
  origin: string;
}

export class Configuration {
  private constructor(private readonly settings: ReadonlyMap<string, Setting>) {}

  /**
   * Reads the sources (the config file now: an unreadable one is an error
   * even if no option it would set is asked for). An empty setting in a file
   * or the environment means unset; a flag given empty is a value, and
   * checked as one.
   */
  static load({ configFile, env = process.env, flags = {} }: ConfigSources): Configuration {
    const settings = new Map<string, Setting>();
    if (configFile !== undefined) {
      const sections = parseIni(readConfigFile(configFile));
      for (const spec of ALL_OPTIONS) {
        const found = findInFile(sections, spec);
        if (found !== undefined) settings.set(spec.name, { value: found.value, origin: `${found.section === 'DEFAULT' ? '' : `[${found.section}] `}in ${configFile}` });
      }
    }
    for (const spec of ALL_OPTIONS) {
      const value = env[spec.env];
      if (value !== undefined && value !== '') settings.set(spec.name, { value, origin: `environment variable ${spec.env}` });
    }
    for (const spec of ALL_OPTIONS) {
      const value = spec.flag === undefined ? undefined : flags[spec.flag];
      if (typeof value === 'string') settings.set(spec.name, { value, origin: `flag --${spec.flag}` });
    }
    return new Configuration(settings);
  }

  /** Whether anything sets the option (else it has its default). */
  isSet(spec: OptionSpec): boolean {
    return this.settings.has(spec.name);
  }

  /** The option's value: its setting checked by its type's rule, or its default. */
  get<T>(spec: OptionSpec<T> & { readonly default: T }): T;
  get<T>(spec: OptionSpec<T>): T | undefined;
  get<T>(spec: OptionSpec<T>): T | undefined {
    const setting = this.settings.get(spec.name);
    if (setting === undefined) return spec.default;
    const parsed = spec.type.parse(setting.value);
    if ('invalid' in parsed) throw new ConfigurationError(spec.name, setting.origin, parsed.invalid);
    return parsed.value;
  }
}

/** An option's setting in a config file's sections: the first of its places that has a value (an empty one is unset). */
export function findInFile(sections: ReadonlyMap<string, Record<string, string>>, spec: OptionSpec): { value: string; section: string } | undefined {
  for (const [section, key] of spec.places) {
    const value = sections.get(section)?.[key];
    if (value !== undefined && value !== '') return { value, section };
  }
  return undefined;
}

function readConfigFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigurationError('--config-file', undefined, `${file} cannot be read: ${(err as Error).message}`);
  }
}
