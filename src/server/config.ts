/**
 * The node's configuration (`serve`): the cache's options and the node's
 * own, read from the one schema (config/schema.ts) with the one precedence
 * (config/load.ts).
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { cacheOptionsFrom, type ImageCacheOptions } from '../config.js';
import { Configuration } from '../config/load.js';
import { OPTIONS, type AuthStrategy } from '../config/schema.js';
import { ConfigurationError } from '../errors.js';
import type { NodeNotificationSettings } from '../notifications/notifications.js';

export type { AuthStrategy } from '../config/schema.js';
/** Moved to errors.ts with the other error classes; exported here still for the code that imports it from here. */
export { ConfigurationError } from '../errors.js';


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
  /** peer_fill: misses read from the other nodes first (centralized_db only; its default there). */
  peerFill: boolean;
  /** peer_connect_timeout, seconds: a node not connected by then is skipped. */
  peerConnectTimeout: number;
  /** peer_max_streams: streams served to other nodes at once, per node (shared among its workers). */
  peerMaxStreams: number;
  /** cache_admin_role: the role the management API needs under keystone (Glance's cache_* policies default to admin). */
  cacheAdminRole: string;
  /** [keystone_authtoken]: the node's own credentials and where Keystone is (auth_strategy = keystone). */
  keystone: KeystoneSettings | undefined;
  /** Glance's notifications, when transport_url is set (notifications/). */
  notifications: NodeNotificationSettings | undefined;
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

/** The embedded default: the sqlite driver and a local image directory under ./var, on 127.0.0.1:9292 (the schema's defaults). */
export const SERVE_DEFAULTS = {
  imageCacheDir: OPTIONS.imageCacheDir.default,
  filesystemStoreDatadir: OPTIONS.filesystemStoreDatadir.default,
  bindHost: OPTIONS.bindHost.default,
  bindPort: OPTIONS.bindPort.default,
  workers: OPTIONS.workers.default,
  upstreamTimeout: OPTIONS.upstreamTimeout.default,
  clientHeaderTimeout: OPTIONS.clientHeaderTimeout.default,
  authStrategy: OPTIONS.authStrategy.default,
  xAccelRedirect: undefined as string | undefined,
  upstreamToken: undefined as string | undefined,
  prefetchWorkers: OPTIONS.prefetchWorkers.default,
  pruneInterval: OPTIONS.pruneInterval.default,
  cleanInterval: OPTIONS.cleanInterval.default,
  peerFill: false,
  peerConnectTimeout: OPTIONS.peerConnectTimeout.default,
  peerMaxStreams: OPTIONS.peerMaxStreams.default,
  cacheAdminRole: OPTIONS.cacheAdminRole.default,
  keystone: undefined as KeystoneSettings | undefined,
  notifications: undefined as NodeNotificationSettings | undefined,
};

/**
 * The configuration of `serve`, lowest precedence first: the config file
 * (its [DEFAULT] section, plus [glance_store] filesystem_store_datadir,
 * [database] connection and [keystone_authtoken] where glance-api.conf keeps
 * them), the environment (IMAGE_CACHE_DIR, IMAGE_CACHE_BIND_PORT, ...), flags
 * (--bind-port, ...). A bad value is a ConfigurationError naming the option
 * and the file, variable or flag that set it.
 */
export function loadServeConfig(configFile: string | undefined, flags: Record<string, string | undefined>, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  return serveConfigFrom(Configuration.load({ configFile, flags, env }));
}

/** The node's configuration from settings loaded already (cli/node-commands.ts). */
export function serveConfigFrom(config: Configuration): ServeConfig {
  const cache = cacheOptionsFrom(config);
  return {
    cache: { ...cache, imageCacheDir: cache.imageCacheDir ?? path.resolve(OPTIONS.imageCacheDir.default) },
    server: serverOptions(config),
  };
}

function serverOptions(config: Configuration): ServerOptions {
  const authStrategy = config.get(OPTIONS.authStrategy);
  return {
    bindHost: config.get(OPTIONS.bindHost),
    bindPort: config.get(OPTIONS.bindPort),
    upstreamUrl: config.get(OPTIONS.upstreamUrl),
    filesystemStoreDatadir: path.resolve(config.get(OPTIONS.filesystemStoreDatadir)),
    workers: Math.max(1, config.get(OPTIONS.workers)),
    upstreamTimeout: config.get(OPTIONS.upstreamTimeout),
    clientHeaderTimeout: config.get(OPTIONS.clientHeaderTimeout),
    authStrategy,
    xAccelRedirect: config.get(OPTIONS.xAccelRedirect),
    upstreamToken: config.get(OPTIONS.upstreamToken),
    prefetchWorkers: config.get(OPTIONS.prefetchWorkers),
    pruneInterval: config.get(OPTIONS.pruneInterval),
    cleanInterval: config.get(OPTIONS.cleanInterval),
    peerFill: peerFill(config),
    peerConnectTimeout: config.get(OPTIONS.peerConnectTimeout),
    peerMaxStreams: config.get(OPTIONS.peerMaxStreams),
    cacheAdminRole: config.get(OPTIONS.cacheAdminRole),
    keystone: authStrategy === 'keystone' ? keystoneSettings(config) : undefined,
    notifications: notificationSettings(config),
  };
}

/** transport_url set: where the node listens to Glance's notifications, declared as oslo.messaging declares Glance's side. */
function notificationSettings(config: Configuration): NodeNotificationSettings | undefined {
  const transportUrl = config.get(OPTIONS.transportUrl);
  if (transportUrl === undefined) return undefined;
  return {
    transportUrl,
    topics: config.get(OPTIONS.notificationTopics),
    exchange: config.get(OPTIONS.controlExchange),
    exchangeDurable: config.get(OPTIONS.amqpDurableQueues) || config.get(OPTIONS.rabbitQuorumQueue),
    exchangeAutoDelete: config.get(OPTIONS.amqpAutoDelete),
    queue: config.get(OPTIONS.notificationsQueue) ?? defaultQueueName(config),
    queueExpirySeconds: config.get(OPTIONS.notificationsQueueExpiry),
    queueMaxLength: config.get(OPTIONS.notificationsQueueMaxLength),
    evictOnDeactivate: config.get(OPTIONS.evictOnDeactivate),
    prefetchOnActivate: config.get(OPTIONS.prefetchOnActivate),
    prefetchMaxSize: config.get(OPTIONS.prefetchMaxSize),
  };
}

/**
 * A node's own queue, the same across its restarts and different from every
 * other node's: the host, and a hash of what names this node among the
 * others (its URL in the cluster, else its cache directory).
 */
function defaultQueueName(config: Configuration): string {
  const self = config.get(OPTIONS.workerSelfReferenceUrl) ?? path.resolve(config.get(OPTIONS.imageCacheDir));
  const hash = createHash('sha256').update(self).digest('hex').slice(0, 12);
  return `image-cache.${os.hostname()}.${hash}`;
}

/** peer_fill: on by default under centralized_db, where the database tells who holds what; refused elsewhere. */
function peerFill(config: Configuration): boolean {
  const centralized = config.get(OPTIONS.imageCacheDriver) === 'centralized_db';
  const value = config.get(OPTIONS.peerFill);
  if (value === true && !centralized) {
    throw new ConfigurationError('peer_fill', `image_cache_driver = ${config.get(OPTIONS.imageCacheDriver)}`, 'cannot be true: the nodes find each other\'s images in the centralized_db driver\'s database');
  }
  return value ?? centralized;
}

/** With auth_strategy = keystone the node needs Keystone's address and its own credentials: missing ones are named. */
function keystoneSettings(config: Configuration): KeystoneSettings {
  const required = (spec: typeof OPTIONS.authUrl): string => {
    const value = config.get(spec);
    if (value === undefined) throw new ConfigurationError(`[keystone_authtoken] ${spec.name}`, 'auth_strategy = keystone', 'is required: the node validates tokens and fetches with credentials of its own');
    return value;
  };
  return {
    authUrl: required(OPTIONS.authUrl),
    username: required(OPTIONS.username),
    password: required(OPTIONS.password),
    projectName: required(OPTIONS.projectName),
    userDomainName: config.get(OPTIONS.userDomainName),
    projectDomainName: config.get(OPTIONS.projectDomainName),
    tokenCacheSeconds: config.get(OPTIONS.tokenCacheSeconds),
  };
}
