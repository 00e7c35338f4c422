/**
 * Debian's glance-api (the reference implementation) on loopback, as a peer
 * for integration tests and the HTTP benchmark: no auth, the file store, and
 * the cache + cachemanage middleware with the sqlite or xattr driver, or no
 * cache middleware at all (the plain Glance a cache node sits in front of).
 *
 * Everything lives in one temporary root (config, database, store, cache,
 * logs) that stop() removes. glance-api runs in its own process group (its
 * workers are forked into it), so the whole group is stopped at once, and is
 * killed when this process exits without having stopped it.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, onPath, PeerGroup, request, sleep, tail } from './processes.js';

/** Where Debian's glance-common puts the paste pipeline that both flavors (with and without the cache) come from. */
const PASTE_INI = '/usr/share/glance-common/glance-api-paste.ini';
const START_TIMEOUT_MS = 60_000;
const POLL_INTERVAL_MS = 100;
/** Glance's default image_cache_max_size. */
const DEFAULT_CACHE_MAX_SIZE = 10 * 1024 ** 3;

export interface GlanceOptions {
  /** Default: a free port. */
  port?: number;
  /** 'off': no cache middleware (paste flavor ''), as the upstream behind a cache node runs. Default 'on'. */
  cache?: 'on' | 'off';
  cacheDriver?: 'sqlite' | 'xattr';
  workers?: number;
  cacheMaxSize?: number;
  /**
   * auth_strategy = keystone: keystonemiddleware's authtoken in the pipeline (paste flavor
   * keystone, or keystone+cachemanagement), validating tokens against this Keystone with these
   * credentials of Glance's own, and caching each validation for token_cache_time (its default 300 s).
   */
  keystone?: GlanceKeystone;
  /**
   * Glance's notifications (messagingv2) to this RabbitMQ, on this exchange
   * ([DEFAULT] control_exchange; a test's own, so that runs side by side do
   * not hear each other's events).
   */
  notifications?: { transportUrl: string; exchange: string };
}

/** [keystone_authtoken] of a Glance behind Keystone: where Keystone is and Glance's own user (domain Default). */
export interface GlanceKeystone {
  /** The identity API, e.g. http://127.0.0.1:PORT/v3. */
  url: string;
  username: string;
  password: string;
  project: string;
}

export interface GlancePeer {
  url: string;
  root: string;
  /** glance-api's log; its eventlet access lines ("GET /v2/images/ID/file ...") count the requests it served. */
  log: string;
  /** The process group: glance-api and its workers. */
  pids(): number[];
  stop(): Promise<void>;
}

/** Whether Debian's glance-api can be run here. */
export function glanceAvailable(): boolean {
  return onPath('glance-api') && onPath('glance-manage') && fs.existsSync(PASTE_INI);
}

export async function startGlance(options: GlanceOptions = {}): Promise<GlancePeer> {
  // A port already taken would have /versions answered by whoever holds it: refuse it before starting.
  const port = await freePort(options.port ?? 0);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'glance-peer-'));
  const conf = writeConfig(root, port, options);
  let peer: RunningGlance | undefined;
  try {
    await dbSync(root, conf);
    peer = spawnApi(root, conf, `http://127.0.0.1:${port}`);
    await waitUntilServing(peer);
    return peer;
  } catch (err) {
    if (peer !== undefined) await peer.stop();
    else fs.rmSync(root, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Creates a raw/bare image and uploads its bytes (a Buffer, or a file streamed from its path);
 * resolves to its id once active. `token`: a Keystone token, for a Glance behind Keystone (the
 * image is then its project's).
 */
export async function uploadImage(url: string, data: Buffer | string, name = 'image', token?: string, extra: Record<string, unknown> = {}): Promise<string> {
  const auth: Record<string, string> = token === undefined ? {} : { 'X-Auth-Token': token };
  const created = await glanceRequest(`${url}/v2/images`, 'POST', { ...auth, 'Content-Type': 'application/json' }, JSON.stringify({
    name,
    disk_format: 'raw',
    container_format: 'bare',
    ...extra,
  }));
  if (created.status !== 201) throw new Error(`POST /v2/images: ${created.status} ${created.body}`);
  const { id } = JSON.parse(created.body) as { id: string };
  const size = typeof data === 'string' ? fs.statSync(data).size : data.length;
  const body = typeof data === 'string' ? fs.createReadStream(data) : data;
  const uploaded = await glanceRequest(`${url}/v2/images/${id}/file`, 'PUT', {
    ...auth,
    'Content-Type': 'application/octet-stream',
    'Content-Length': String(size),
  }, body);
  if (uploaded.status !== 204) throw new Error(`PUT /v2/images/${id}/file: ${uploaded.status} ${uploaded.body}`);
  return id;
}

class RunningGlance extends PeerGroup implements GlancePeer {
  readonly log: string;

  constructor(readonly url: string, root: string, pgid: number) {
    super(root, pgid);
    this.log = path.join(root, 'log', 'api.log');
  }

  /** The last lines of glance-api's logs, for a failure's message. */
  logTail(lines = 20): string {
    return ['stdout.log', 'api.log']
      .map((name) => path.join(this.root, 'log', name))
      .filter((file) => fs.existsSync(file))
      .map((file) => `--- ${path.basename(file)}\n${tail(fs.readFileSync(file, 'utf8'), lines)}`)
      .join('\n');
  }
}

/** The configuration start.sh writes: loopback, no auth (unless `keystone`), file store, sqlite database, cache middleware unless 'off'. */
function writeConfig(root: string, port: number, options: GlanceOptions): string {
  for (const dir of ['etc', 'cache', 'images', 'log']) fs.mkdirSync(path.join(root, dir));
  const etc = path.join(root, 'etc');
  const paste = path.join(etc, 'glance-api-paste.ini');
  fs.copyFileSync(PASTE_INI, paste);
  const policy = path.join(etc, 'policy.yaml');
  // No auth means no roles: the cache API's rules must let anyone through (with Keystone too, as the peers' start.sh has them).
  fs.writeFileSync(policy, ['manage_image_cache', 'cache_image', 'cache_list', 'cache_delete', 'publicize_image'].map((rule) => `"${rule}": ""\n`).join(''));
  const conf = path.join(etc, 'glance-api.conf');
  fs.writeFileSync(conf, `[DEFAULT]
bind_host = 127.0.0.1
bind_port = ${port}
workers = ${options.workers ?? 1}
image_cache_dir = ${path.join(root, 'cache')}
image_cache_driver = ${options.cacheDriver ?? 'sqlite'}
image_cache_max_size = ${options.cacheMaxSize ?? DEFAULT_CACHE_MAX_SIZE}
log_file = ${path.join(root, 'log', 'api.log')}
debug = false
enabled_import_methods = []
${options.notifications === undefined ? '' : `control_exchange = ${options.notifications.exchange}\n`}[database]
connection = sqlite:///${path.join(root, 'glance.sqlite')}
[paste_deploy]
flavor = ${pasteFlavor(options)}
config_file = ${paste}
[glance_store]
stores = file
default_store = file
filesystem_store_datadir = ${path.join(root, 'images')}
[oslo_policy]
enforce_scope = false
enforce_new_defaults = false
policy_file = ${policy}
${options.keystone === undefined ? '' : authtokenSection(options.keystone)}${options.notifications === undefined ? '' : `[oslo_messaging_notifications]
driver = messagingv2
transport_url = ${options.notifications.transportUrl}
`}`);
  return conf;
}

/** The paste pipeline: glance-api[-keystone][+]cachemanagement, as glance-api-paste.ini names them. */
function pasteFlavor(options: GlanceOptions): string {
  const cache = options.cache === 'off' ? '' : 'cachemanagement';
  if (options.keystone === undefined) return cache;
  return cache === '' ? 'keystone' : `keystone+${cache}`;
}

/**
 * keystonemiddleware's options: password authentication for Glance's own token, Keystone's public
 * endpoint (the only one bootstrap registers; the default is internal), token_cache_time left at its default.
 */
function authtokenSection(keystone: GlanceKeystone): string {
  return `[keystone_authtoken]
www_authenticate_uri = ${keystone.url}
auth_url = ${keystone.url}
auth_type = password
username = ${keystone.username}
password = ${keystone.password}
project_name = ${keystone.project}
user_domain_id = default
project_domain_id = default
interface = public
`;
}

function dbSync(root: string, conf: string): Promise<void> {
  const logFile = path.join(root, 'log', 'dbsync.log');
  return new Promise((resolve, reject) => {
    execFile('glance-manage', ['--config-file', conf, 'db_sync'], { cwd: root, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      fs.writeFileSync(logFile, stdout + stderr);
      if (err) reject(new Error(`glance-manage db_sync failed: ${err.message}\n${tail(stdout + stderr, 20)}`));
      else resolve();
    });
  });
}

function spawnApi(root: string, conf: string, url: string): RunningGlance {
  const out = fs.openSync(path.join(root, 'log', 'stdout.log'), 'a');
  // detached: setsid, so its pid is also the group id of glance-api and the workers it forks.
  const child = spawn('glance-api', ['--config-file', conf], { cwd: root, detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  if (child.pid === undefined) throw new Error('glance-api could not be spawned');
  // Not keeping this process alive for it: stop() or the exit hook ends it.
  child.unref();
  const peer = new RunningGlance(url, root, child.pid);
  child.on('exit', (code, signal) => {
    peer.exited = `glance-api exited (${signal ?? `code ${code}`})`;
  });
  return peer;
}

/** Polls /versions until glance-api answers, it exits, or the deadline passes (then fails with its logs' tails). */
async function waitUntilServing(peer: RunningGlance): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (await answers(`${peer.url}/versions`)) return;
    const reason = peer.exited ?? (Date.now() > deadline ? `no answer within ${START_TIMEOUT_MS} ms` : undefined);
    if (reason !== undefined) throw new Error(`glance-api on ${peer.url} did not come up: ${reason}\n${peer.logTail()}`);
    await sleep(POLL_INTERVAL_MS);
  }
}

async function answers(url: string): Promise<boolean> {
  try {
    const { status } = await glanceRequest(url, 'GET', {}, undefined, 2000);
    return status < 400;
  } catch {
    return false;
  }
}

/** A request to Glance, with the token its noauth pipeline wants to see (any will do) unless `headers` has one. */
function glanceRequest(url: string, method: string, headers: Record<string, string>, body?: string | Buffer | fs.ReadStream, timeoutMs?: number): ReturnType<typeof request> {
  return request(url, method, { 'X-Auth-Token': 'x', ...headers }, body, timeoutMs ?? 0);
}
