/**
 * Every option the library, the commands and the node read, once: its name
 * in glance-api.conf and where the file keeps it, its type (the one rule that
 * checks it, option-types.ts), its default, its environment variable, its
 * flag and its help. The loader (load.ts), the library's resolveOptions,
 * the commands' flags and --help, and the README's option table (checked by
 * a test) all come from this list.
 */
import { activationPolicy, boolean, bytes, count, fileName, filePath, httpUrl, locationPrefix, nameList, oneOf, port, seconds, text, transportUrl, type OptionType } from './option-types.js';

export const DRIVER_NAMES = ['sqlite', 'xattr', 'centralized_db'] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];
export const AUTH_STRATEGIES = ['noauth', 'keystone'] as const;
export type AuthStrategy = (typeof AUTH_STRATEGIES)[number];

/**
 * Who reads an option: `cache`, the image cache itself (the library, every
 * command on the cache directory, the node; a flag of every command);
 * `node`, the cache node (`serve`'s flags); `keystone`, the node under
 * auth_strategy = keystone ([keystone_authtoken], no flags).
 */
export type Scope = 'cache' | 'node' | 'keystone';

export interface OptionSpec<T = unknown> {
  /** The name in glance-api.conf, and in messages. */
  readonly name: string;
  readonly scope: Scope;
  /** Where a config file may set it, [section, key], the first found winning. */
  readonly places: ReadonlyArray<readonly [section: string, key: string]>;
  readonly type: OptionType<T>;
  /** The value when nothing sets it; undefined: unset (the help says what that means). */
  readonly default: T | undefined;
  /** The default as the README and --help write it, when it is not the value itself (`./var/cache`, `10G`). */
  readonly shownDefault?: string;
  readonly env: string;
  /** The flag, without its dashes; none for [keystone_authtoken]. */
  readonly flag: string | undefined;
  readonly help: string;
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

interface Definition<T> {
  type: OptionType<T>;
  /** NoInfer: T comes from the type ('sqlite' is a DriverName, not a string). */
  default?: NoInfer<T>;
  shownDefault?: string;
  /** Where a file keeps it, when that is not [DEFAULT] under its own name. */
  places?: Array<[string, string]>;
  help: string;
}

// An option's `default` is typed T when it has one (so that SERVE_DEFAULTS.bindPort is a number), undefined when not.
function option<T>(scope: Scope, name: string, definition: Definition<T> & { default: NoInfer<T> }): OptionSpec<T> & { readonly default: T };
function option<T>(scope: Scope, name: string, definition: Definition<T> & { default?: undefined }): OptionSpec<T> & { readonly default: undefined };
function option<T>(scope: Scope, name: string, definition: Definition<T>): OptionSpec<T> {
  const keystone = scope === 'keystone';
  return {
    name,
    scope,
    places: definition.places ?? [[keystone ? 'keystone_authtoken' : 'DEFAULT', name]],
    type: definition.type,
    default: definition.default,
    shownDefault: definition.shownDefault,
    env: keystone ? `IMAGE_CACHE_KEYSTONE_${name.toUpperCase()}` : envName(name),
    flag: keystone ? undefined : name.replaceAll('_', '-'),
    help: definition.help,
  };
}

/** The options, by the names of their fields in ImageCacheOptions, ServerOptions and KeystoneSettings. */
export const OPTIONS = {
  imageCacheDir: option('cache', 'image_cache_dir', {
    type: filePath('DIR'),
    default: 'var/cache',
    shownDefault: './var/cache',
    help: 'the cache directory; `serve` creates it, the commands on the directory use ./var/cache only if it exists, the library has no default',
  }),
  imageCacheDriver: option('cache', 'image_cache_driver', { type: oneOf(DRIVER_NAMES, 'DRIVER'), default: 'sqlite', help: 'the metadata driver (see Drivers)' }),
  imageCacheMaxSize: option('cache', 'image_cache_max_size', {
    type: bytes,
    default: 10 * 1024 ** 3,
    shownDefault: '10G',
    help: 'the size prune brings the cache down to: bytes, or with a unit (512M, 10G)',
  }),
  imageCacheStallTime: option('cache', 'image_cache_stall_time', { type: seconds(0), default: 86_400, help: 'seconds after which an unfinished download no writer holds is abandoned' }),
  imageCacheSqliteDb: option('cache', 'image_cache_sqlite_db', { type: fileName, default: 'cache.db', help: 'the sqlite driver\'s file, in the cache directory' }),
  // The driver judges these two (its configure()), so that the library keeps Glance's fallback to sqlite.
  workerSelfReferenceUrl: option('cache', 'worker_self_reference_url', { type: text('URL'), help: 'this node\'s URL as the other nodes reach it, for centralized_db (the driver checks it)' }),
  databaseConnection: option('cache', 'database_connection', {
    type: text('URL'),
    places: [['DEFAULT', 'database_connection'], ['database', 'connection']],
    help: 'the PostgreSQL URL, for centralized_db (the driver checks it)',
  }),

  bindHost: option('node', 'bind_host', { type: text('HOST'), default: '127.0.0.1', help: 'the address to listen on' }),
  bindPort: option('node', 'bind_port', { type: port, default: 9292, help: 'the port; 0 picks a free one (printed as `serving on URL`)' }),
  upstreamUrl: option('node', 'upstream_url', { type: httpUrl, help: 'the Glance to front; without it, images come from filesystem_store_datadir' }),
  filesystemStoreDatadir: option('node', 'filesystem_store_datadir', {
    type: filePath('DIR'),
    default: 'var/images',
    shownDefault: './var/images',
    places: [['glance_store', 'filesystem_store_datadir'], ['DEFAULT', 'filesystem_store_datadir']],
    help: 'the local image directory (`<dir>/<id>`): the source without an upstream',
  }),
  workers: option('node', 'workers', { type: count(0, 256), default: 1, help: 'processes sharing the port and the cache directory (node:cluster); 0 and 1 both mean one' }),
  upstreamTimeout: option('node', 'upstream_timeout', { type: seconds(1), default: 60, help: 'seconds the source may keep a request or a fill waiting for its next bytes' }),
  clientHeaderTimeout: option('node', 'client_header_timeout', {
    type: seconds(1, 86_400),
    default: 60,
    help: 'seconds a client may take to send a request\'s headers; then it gets 408 and the connection is closed (nginx\'s name for the same limit; Glance\'s client_socket_timeout is another thing, and is not read)',
  }),
  authStrategy: option('node', 'auth_strategy', { type: oneOf(AUTH_STRATEGIES, 'STRATEGY'), default: 'noauth', help: 'noauth (everyone is admin) or keystone (tokens validated, [keystone_authtoken])' }),
  xAccelRedirect: option('node', 'x_accel_redirect', { type: locationPrefix, help: 'with an nginx in front: the internal location it serves the cache directory under (/_image_cache/)' }),
  upstreamToken: option('node', 'upstream_token', { type: text('TOKEN'), help: 'a static token for the fetches no caller asked for (prefetching); under keystone the node\'s own token is used' }),
  prefetchWorkers: option('node', 'image_cache_prefetch_workers', { type: count(1, 64), default: 1, help: 'queued images fetched at once' }),
  pruneInterval: option('node', 'image_cache_prune_interval', { type: seconds(0, 31_536_000), default: 300, help: 'seconds between prunes on a timer (0: none), beside the prune after a commit that overfills the cache' }),
  cleanInterval: option('node', 'image_cache_clean_interval', { type: seconds(0, 31_536_000), default: 3600, help: 'seconds between cleans on a timer (0: none)' }),
  peerFill: option('node', 'peer_fill', {
    type: boolean,
    shownDefault: 'true under centralized_db',
    help: 'on a miss, read the image from another node that holds it or is filling it (found in the database) before the upstream; one upstream fetch per cluster. Only under centralized_db',
  }),
  peerConnectTimeout: option('node', 'peer_connect_timeout', { type: seconds(1, 60), default: 1, help: 'seconds to connect to another node before it is skipped (and tried last for a while)' }),
  peerMaxStreams: option('node', 'peer_max_streams', { type: count(1, 10_000), default: 8, help: 'image streams this node serves to other nodes at once; past it, they are turned away at once and ask another node' }),
  transportUrl: option('node', 'transport_url', {
    type: transportUrl,
    places: [['oslo_messaging_notifications', 'transport_url'], ['DEFAULT', 'transport_url']],
    help: 'the RabbitMQ Glance publishes its notifications to, as glance-api.conf names it; set, the node listens (see Notifications); unset, it does not',
  }),
  notificationTopics: option('node', 'topics', {
    type: nameList('TOPICS'),
    default: ['notifications'],
    shownDefault: 'notifications',
    places: [['oslo_messaging_notifications', 'topics']],
    help: 'the topics Glance publishes on (routing keys TOPIC.info, TOPIC.error, ...)',
  }),
  controlExchange: option('node', 'control_exchange', { type: text('EXCHANGE'), default: 'glance', help: 'the exchange Glance publishes to (Glance\'s default is glance)' }),
  amqpDurableQueues: option('node', 'amqp_durable_queues', {
    type: boolean,
    default: false,
    places: [['oslo_messaging_rabbit', 'amqp_durable_queues']],
    help: 'as Glance has it: whether its exchange is durable (declared alike, or the broker refuses)',
  }),
  amqpAutoDelete: option('node', 'amqp_auto_delete', {
    type: boolean,
    default: false,
    places: [['oslo_messaging_rabbit', 'amqp_auto_delete']],
    help: 'as Glance has it: whether its exchange is auto-delete',
  }),
  rabbitQuorumQueue: option('node', 'rabbit_quorum_queue', {
    type: boolean,
    default: false,
    places: [['oslo_messaging_rabbit', 'rabbit_quorum_queue']],
    help: 'as Glance has it: true makes its exchange durable too',
  }),
  notificationsQueue: option('node', 'notifications_queue', {
    type: text('NAME'),
    shownDefault: 'image-cache.HOST.HASH',
    help: 'this node\'s own queue on the exchange (kept across restarts); by default named by the host and a hash of worker_self_reference_url or image_cache_dir',
  }),
  notificationsQueueExpiry: option('node', 'notifications_queue_expiry', {
    type: seconds(60, 31_536_000),
    default: 7 * 86_400,
    help: 'seconds after which the broker deletes the queue of a node that has not consumed from it (x-expires)',
  }),
  notificationsQueueMaxLength: option('node', 'notifications_queue_max_length', {
    type: count(100, 100_000_000),
    default: 100_000,
    help: 'events the queue keeps for a node that is down (x-max-length); the oldest go first',
  }),
  evictOnDeactivate: option('node', 'image_cache_evict_on_deactivate', { type: boolean, default: false, help: 'drop the cached copy of an image Glance deactivates (image.update)' }),
  prefetchOnActivate: option('node', 'image_cache_prefetch_on_activate', {
    type: activationPolicy,
    default: { kind: 'none' },
    shownDefault: 'none',
    help: 'the images a node queues for prefetching when Glance activates them (image.activate): none, public, all, or property:NAME=VALUE',
  }),
  prefetchMaxSize: option('node', 'image_cache_prefetch_max_size', {
    type: bytes,
    default: 0,
    help: 'the largest image prefetched on activation; 0: up to image_cache_max_size',
  }),
  cacheAdminRole: option('node', 'cache_admin_role', { type: text('ROLE'), default: 'admin', help: 'the role the management API needs under keystone' }),

  authUrl: option('keystone', 'auth_url', { type: httpUrl, help: 'Keystone, required under keystone' }),
  username: option('keystone', 'username', { type: text('NAME'), help: 'the node\'s own user, required under keystone' }),
  password: option('keystone', 'password', { type: text('PASSWORD'), help: 'its password, required under keystone' }),
  projectName: option('keystone', 'project_name', { type: text('NAME'), help: 'its project, required under keystone' }),
  userDomainName: option('keystone', 'user_domain_name', { type: text('NAME'), default: 'Default', help: 'the user\'s domain' }),
  projectDomainName: option('keystone', 'project_domain_name', { type: text('NAME'), default: 'Default', help: 'the project\'s domain' }),
  tokenCacheSeconds: option('keystone', 'token_cache_time', { type: seconds(0, 86_400), default: 300, help: 'seconds a token\'s validation is trusted, never past its expiry (keystonemiddleware\'s default)' }),
} as const satisfies Record<string, OptionSpec>;

export type OptionKey = keyof typeof OPTIONS;

/** Every option, in the order above (the README's). */
export const ALL_OPTIONS: readonly OptionSpec[] = Object.values(OPTIONS) as OptionSpec[];

/** The options of one scope. */
export function optionsOf(scope: Scope): OptionSpec[] {
  return ALL_OPTIONS.filter((spec) => spec.scope === scope);
}

/** The default as people write it: the README's and --help's. */
export function shownDefault(spec: OptionSpec): string | undefined {
  return spec.shownDefault ?? (spec.default === undefined ? undefined : String(spec.default));
}
