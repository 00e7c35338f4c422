import fs from 'node:fs';
import path from 'node:path';
import { envName, glanceSettings, optionsFromGlanceSettings, parseIni, resolveOptions, type ImageCacheOptions } from '../config.js';
import { ImageCacheError, InvalidOption } from '../errors.js';

export type AuthStrategy = 'noauth' | 'keystone';

/** The node's own options (the cache's are in ImageCacheOptions). */
export interface ServerOptions {
  bindHost: string;
  bindPort: number;
  /** The upstream Glance; without it, images come from filesystem_store_datadir. */
  upstreamUrl: string | undefined;
  filesystemStoreDatadir: string;
  /** Processes serving one port and one cache directory (node:cluster); 0 and 1 both mean one process. */
  workers: number;
  /** Seconds a source may keep the node waiting (for its headers, or between two chunks) before the request fails. */
  upstreamTimeout: number;
  /**
   * client_header_timeout: seconds a client may take to send a request's
   * headers, from its first byte; then it gets 408 and its connection is
   * closed, so clients that trickle headers cannot hold connections for ever.
   * (Glance's client_socket_timeout is another thing: the idle time allowed
   * between two socket reads or writes, body included.)
   */
  clientHeaderTimeout: number;
  /**
   * noauth: the upstream answers for anyone, so its 404 proves an image gone
   * (and its cached copy is dropped). keystone: a 404 may only mean "not yours".
   */
  authStrategy: AuthStrategy;
  /**
   * With an nginx in front: the internal location (`/_image_cache/`) under
   * which nginx serves the cache directory. A hit is then authorized by the
   * node and answered with `X-Accel-Redirect`, and nginx sends the file with
   * sendfile(2), which Node cannot. Unset: the node sends hits itself.
   */
  xAccelRedirect: string | undefined;
  /** A static token the node uses for the fetches nobody asked for with a token of their own (prefetching). */
  upstreamToken: string | undefined;
  /** image_cache_prefetch_workers: queued images fetched at once. */
  prefetchWorkers: number;
  /** image_cache_prune_interval, seconds (0: none): a prune on a timer, beside the one after each commit that overfills the cache. */
  pruneInterval: number;
  /** image_cache_clean_interval, seconds (0: none). */
  cleanInterval: number;
  /** cache_admin_role: the role the management API needs under keystone (Glance's cache_* policies default to admin). */
  cacheAdminRole: string;
  /** [keystone_authtoken]: the node's own credentials and where Keystone is (auth_strategy = keystone). */
  keystone: KeystoneSettings | undefined;
}

/** [keystone_authtoken], as glance-api.conf writes it. */
export interface KeystoneSettings {
  authUrl: string;
  username: string;
  password: string;
  projectName: string;
  userDomainName: string;
  projectDomainName: string;
  tokenCacheSeconds: number;
}

export interface ServeConfig {
  cache: ImageCacheOptions;
  server: ServerOptions;
}

/** The embedded default: the sqlite driver and a local image directory under ./var, on 127.0.0.1:9292. */
export const SERVE_DEFAULTS = {
  imageCacheDir: 'var/cache',
  filesystemStoreDatadir: 'var/images',
  bindHost: '127.0.0.1',
  bindPort: 9292,
  workers: 1,
  upstreamTimeout: 60,
  clientHeaderTimeout: 60,
  authStrategy: 'noauth' as AuthStrategy,
  xAccelRedirect: undefined as string | undefined,
  upstreamToken: undefined as string | undefined,
  prefetchWorkers: 1,
  pruneInterval: 300,
  cleanInterval: 3600,
  cacheAdminRole: 'admin',
  keystone: undefined as KeystoneSettings | undefined,
};
/** keystonemiddleware's token_cache_time default. */
const DEFAULT_TOKEN_CACHE_SECONDS = 300;

/** The options `serve` reads, by their names in glance-api.conf. Glance's hundreds of others are ignored. */
const SERVER_NAMES = [
  'bind_host', 'bind_port', 'upstream_url', 'filesystem_store_datadir', 'workers', 'upstream_timeout', 'client_header_timeout', 'auth_strategy', 'x_accel_redirect',
  'upstream_token', 'image_cache_prefetch_workers', 'image_cache_prune_interval', 'image_cache_clean_interval', 'cache_admin_role',
] as const;
/** The options of [keystone_authtoken] the node reads (environment: IMAGE_CACHE_KEYSTONE_AUTH_URL, ...). */
const KEYSTONE_NAMES = ['auth_url', 'username', 'password', 'project_name', 'user_domain_name', 'project_domain_name', 'token_cache_time'] as const;
const CACHE_NAMES = ['image_cache_dir', 'image_cache_driver', 'image_cache_max_size', 'image_cache_stall_time', 'image_cache_sqlite_db', 'worker_self_reference_url', 'database_connection'] as const;
export const SERVE_OPTION_NAMES: readonly string[] = [...CACHE_NAMES, ...SERVER_NAMES];
/** The flags of the node's own options (--bind-port, ...); the cache's are every command's. */
export const SERVER_FLAG_NAMES: readonly string[] = SERVER_NAMES.map((name) => name.replaceAll('_', '-'));

/** A setting and where it came from, so that an invalid value names its file, variable or flag. */
interface Setting {
  value: string;
  origin: string;
}

/** A bad value in the configuration: names the option and where it was set. */
export class ConfigurationError extends ImageCacheError {
  constructor(option: string, origin: string, reason: string) {
    super('ERR_CONFIGURATION', `${option} (${origin}) ${reason}`);
  }
}

/**
 * The configuration of `serve`, lowest precedence first: the config file
 * (its [DEFAULT] section, plus [glance_store] filesystem_store_datadir and
 * [database] connection where glance-api.conf keeps them), the environment
 * (IMAGE_CACHE_DIR, IMAGE_CACHE_BIND_PORT, ...), flags (--bind-port, ...).
 */
export function loadServeConfig(configFile: string | undefined, flags: Record<string, string | undefined>, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const settings = new Map<string, Setting>();
  const keystoneSettings = new Map<string, Setting>();
  if (configFile !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(configFile, 'utf8');
    } catch (err) {
      throw new InvalidOption('--config-file', `cannot be read: ${(err as Error).message}`);
    }
    const sections = parseIni(text);
    const fromFile = glanceSettings(sections);
    overlay(settings, SERVE_OPTION_NAMES, (name) => fromFile[name] || undefined, () => `in ${configFile}`);
    const keystone = sections.get('keystone_authtoken') ?? {};
    overlay(keystoneSettings, KEYSTONE_NAMES, (name) => keystone[name] || undefined, () => `[keystone_authtoken] in ${configFile}`);
  }
  overlay(settings, SERVE_OPTION_NAMES, (name) => env[envName(name)] || undefined, (name) => `environment variable ${envName(name)}`);
  overlay(settings, SERVE_OPTION_NAMES, (name) => flags[name.replaceAll('_', '-')], (name) => `flag --${name.replaceAll('_', '-')}`);
  const keystoneVariable = (name: string): string => `IMAGE_CACHE_KEYSTONE_${name.toUpperCase()}`;
  overlay(keystoneSettings, KEYSTONE_NAMES, (name) => env[keystoneVariable(name)] || undefined, (name) => `environment variable ${keystoneVariable(name)}`);
  return { cache: cacheOptions(settings), server: serverOptions(settings, keystoneSettings) };
}

/**
 * Sets each of `names` that `value` gives, with where it came from: later
 * layers win. (An empty setting in a file or the environment means unset; a
 * flag given empty is a value, and checked as one.)
 */
function overlay(settings: Map<string, Setting>, names: readonly string[], value: (name: string) => string | undefined, origin: (name: string) => string): void {
  for (const name of names) {
    const found = value(name);
    if (found !== undefined) settings.set(name, { value: found, origin: origin(name) });
  }
}

/** The cache's options, checked now (as the cache will check them) so that a bad one is named with where it was set. */
function cacheOptions(settings: Map<string, Setting>): ImageCacheOptions {
  const raw: Record<string, string> = {};
  for (const name of CACHE_NAMES) {
    const setting = settings.get(name);
    if (setting !== undefined) raw[name] = setting.value;
  }
  try {
    const options = optionsFromGlanceSettings(raw);
    const resolved = { ...options, imageCacheDir: path.resolve(options.imageCacheDir ?? SERVE_DEFAULTS.imageCacheDir) };
    resolveOptions(resolved);
    return resolved;
  } catch (err) {
    if (!(err instanceof InvalidOption)) throw err;
    const origin = settings.get(err.option)?.origin ?? 'default';
    throw new ConfigurationError(err.option, origin, err.message.replace(/^Option '[^']+' /, ''));
  }
}

function serverOptions(settings: Map<string, Setting>, keystoneSettings: Map<string, Setting>): ServerOptions {
  const get = getter(settings);
  const authStrategy = get('auth_strategy', oneOf(['noauth', 'keystone'] as const), SERVE_DEFAULTS.authStrategy);
  return {
    bindHost: get('bind_host', text, SERVE_DEFAULTS.bindHost),
    bindPort: get('bind_port', integer(0, 65535), SERVE_DEFAULTS.bindPort),
    upstreamUrl: get<string | undefined>('upstream_url', httpUrl, undefined),
    filesystemStoreDatadir: path.resolve(get('filesystem_store_datadir', text, SERVE_DEFAULTS.filesystemStoreDatadir)),
    workers: Math.max(1, get('workers', integer(0, 256), SERVE_DEFAULTS.workers)),
    upstreamTimeout: get('upstream_timeout', positiveSeconds, SERVE_DEFAULTS.upstreamTimeout),
    clientHeaderTimeout: get('client_header_timeout', integer(1, 86_400), SERVE_DEFAULTS.clientHeaderTimeout),
    authStrategy,
    xAccelRedirect: get<string | undefined>('x_accel_redirect', locationPrefix, undefined),
    upstreamToken: get<string | undefined>('upstream_token', text, undefined),
    prefetchWorkers: get('image_cache_prefetch_workers', integer(1, 64), SERVE_DEFAULTS.prefetchWorkers),
    pruneInterval: get('image_cache_prune_interval', integer(0, 31_536_000), SERVE_DEFAULTS.pruneInterval),
    cleanInterval: get('image_cache_clean_interval', integer(0, 31_536_000), SERVE_DEFAULTS.cleanInterval),
    cacheAdminRole: get('cache_admin_role', text, SERVE_DEFAULTS.cacheAdminRole),
    keystone: authStrategy === 'keystone' ? keystoneOptions(keystoneSettings) : undefined,
  };
}

/** With auth_strategy = keystone the node needs Keystone's address and its own credentials: missing ones are named. */
function keystoneOptions(settings: Map<string, Setting>): KeystoneSettings {
  const get = getter(settings);
  const required = (name: string): string => {
    const value = get<string | undefined>(name, text, undefined);
    if (value === undefined) throw new ConfigurationError(`[keystone_authtoken] ${name}`, 'auth_strategy = keystone', 'is required: the node validates tokens and fetches with credentials of its own');
    return value;
  };
  return {
    authUrl: get<string | undefined>('auth_url', httpUrl, undefined) ?? required('auth_url'),
    username: required('username'),
    password: required('password'),
    projectName: required('project_name'),
    userDomainName: get('user_domain_name', text, 'Default'),
    projectDomainName: get('project_domain_name', text, 'Default'),
    tokenCacheSeconds: get('token_cache_time', integer(0, 86_400), DEFAULT_TOKEN_CACHE_SECONDS),
  };
}

function getter(settings: Map<string, Setting>) {
  return <T>(name: string, parse: Parser<T>, fallback: T): T => {
    const setting = settings.get(name);
    if (setting === undefined) return fallback;
    const parsed = parse(setting.value);
    if ('invalid' in parsed) throw new ConfigurationError(name, setting.origin, parsed.invalid);
    return parsed.value;
  };
}

type Parser<T> = (value: string) => { value: T } | { invalid: string };

const text: Parser<string> = (value) => ({ value });

function integer(min: number, max: number): Parser<number> {
  return (value) => {
    const n = Number(value);
    return /^\d+$/.test(value) && n >= min && n <= max ? { value: n } : { invalid: `must be a whole number from ${min} to ${max}, not ${JSON.stringify(value)}` };
  };
}

const positiveSeconds: Parser<number> = (value) => {
  const n = Number(value);
  return value.trim() !== '' && Number.isFinite(n) && n > 0 ? { value: n } : { invalid: `must be a number of seconds > 0, not ${JSON.stringify(value)}` };
};

const httpUrl: Parser<string> = (value) => {
  const invalid = { invalid: `must be an http:// or https:// URL, not ${JSON.stringify(value)}` };
  if (!URL.canParse(value)) return invalid;
  const { protocol } = new URL(value);
  return protocol === 'http:' || protocol === 'https:' ? { value } : invalid;
};

const locationPrefix: Parser<string> = (value) =>
  (/^\/[A-Za-z0-9._~/-]*\/$/.test(value) ? { value } : { invalid: `must be a location path that starts and ends with / (such as /_image_cache/), not ${JSON.stringify(value)}` });

function oneOf<T extends string>(choices: readonly T[]): Parser<T> {
  return (value) => ((choices as readonly string[]).includes(value) ? { value: value as T } : { invalid: `must be one of ${choices.join(', ')}, not ${JSON.stringify(value)}` });
}
