/**
 * Debian's Keystone (the reference identity service) on loopback, as a peer
 * for the tests of auth_strategy = keystone: sqlite, fernet tokens, and two
 * users in domain Default, admin/secret (role admin on project admin) and
 * demo/secret (role member on project demo).
 *
 * Everything lives in one temporary root (config, database, key
 * repositories, logs) that stop() removes. The server (keystone-wsgi-public:
 * wsgiref, one process, one request at a time) runs in its own process
 * group, so the whole group is stopped at once, and is killed when this
 * process exits without having stopped it.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, onPath, PeerGroup, request, sleep, tail } from './processes.js';

/** The WSGI entry Debian's keystone package installs, runnable as a development server. */
const WSGI_PUBLIC = 'keystone-wsgi-public';
const START_TIMEOUT_MS = 60_000;
const POLL_INTERVAL_MS = 100;
/**
 * keystone-manage steps take ~2 s each (mostly imports) on an idle machine, and over a minute
 * (db_sync) on a loaded one; a hung one should not hold the test for ever.
 */
const MANAGE_TIMEOUT_MS = 180_000;
/** Both users' password, as the peers' README gives it. */
const PASSWORD = 'secret';
const DOMAIN = 'default';
/**
 * bcrypt's minimum (Keystone's default is 12): every token issued checks the
 * password, ~0.25 s at 12 rounds on a server that answers one request at a
 * time, and tests ask for many tokens. Nothing else about the tokens changes.
 */
const PASSWORD_HASH_ROUNDS = 4;

export interface KeystonePeer {
  /** The identity API, e.g. http://127.0.0.1:PORT/v3. */
  url: string;
  stop(): Promise<void>;
  /** A project-scoped token (X-Subject-Token) for user/password in domain Default. */
  token(user: string, password: string, project: string): Promise<string>;
  /** Revokes a token (DELETE /v3/auth/tokens with X-Subject-Token, authorized by an admin token). */
  revoke(token: string): Promise<void>;
  /** Whether Keystone takes the token now (GET /v3/auth/tokens with X-Subject-Token: 200, not 404), asked with an admin token. */
  validates(token: string): Promise<boolean>;
  /** Puts a service in the catalog (its public endpoint at `url`), as clients find it after authenticating: `image` for Glance, or the node in front of it. */
  addEndpoint(type: string, url: string): Promise<void>;
}

/** Whether Debian's keystone can be run here: keystone-manage for the setup and the WSGI entry for the server. */
export function keystoneAvailable(): boolean {
  return onPath('keystone-manage') && onPath(WSGI_PUBLIC);
}

export interface KeystoneOptions {
  port?: number;
  /** [token] expiration: the lifetime of every token issued, in seconds (Keystone's default 3600). */
  tokenExpiration?: number;
}

export async function startKeystone(options: KeystoneOptions = {}): Promise<KeystonePeer> {
  // A port already taken would have /v3 answered by whoever holds it: refuse it before starting.
  const port = await freePort(options.port ?? 0);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'keystone-peer-'));
  const url = `http://127.0.0.1:${port}/v3`;
  let peer: RunningKeystone | undefined;
  try {
    const conf = writeConfig(root, options.tokenExpiration);
    // keystone-manage insists on an owner for the key repositories only when run as root. Root's
    // own ids then (uid 0 makes it change no ownership); none otherwise, as the user running the
    // tests need not be in /etc/passwd, where keystone-manage would look it up.
    const uid = process.getuid?.() ?? 0;
    const owner = uid === 0 ? ['--keystone-user', '0', '--keystone-group', String(process.getgid?.() ?? 0)] : [];
    // The key repositories do not touch the database: set them up while the schema is created.
    await Promise.all([
      manage(root, conf, ['db_sync']),
      manage(root, conf, ['fernet_setup', ...owner]),
      manage(root, conf, ['credential_setup', ...owner]),
    ]);
    // Creates domain Default, project admin, user admin with role admin on it, and roles reader < member < admin.
    await manage(root, conf, ['bootstrap', '--bootstrap-password', PASSWORD, '--bootstrap-public-url', url]);
    peer = spawnServer(root, conf, url);
    await waitUntilServing(peer);
    await peer.addDemo();
    return peer;
  } catch (err) {
    if (peer !== undefined) await peer.stop();
    else fs.rmSync(root, { recursive: true, force: true });
    throw err;
  }
}

class RunningKeystone extends PeerGroup implements KeystonePeer {
  /** The admin token validates() asks with. */
  private validator: Promise<string> | undefined;

  constructor(readonly url: string, root: string, pgid: number) {
    super(root, pgid);
  }

  async token(user: string, password: string, project: string): Promise<string> {
    const res = await request(`${this.url}/auth/tokens`, 'POST', { 'Content-Type': 'application/json' }, JSON.stringify({
      auth: {
        identity: { methods: ['password'], password: { user: { name: user, domain: { id: DOMAIN }, password } } },
        scope: { project: { name: project, domain: { id: DOMAIN } } },
      },
    }));
    const token = res.headers['x-subject-token'];
    if (res.status !== 201 || typeof token !== 'string') {
      throw new Error(`token for ${user} on project ${project}: ${res.status} ${res.body}`);
    }
    return token;
  }

  async revoke(token: string): Promise<void> {
    // A fresh admin token each time: one kept from earlier could itself have been revoked through here.
    const admin = await this.token('admin', PASSWORD, 'admin');
    const res = await request(`${this.url}/auth/tokens`, 'DELETE', { 'X-Auth-Token': admin, 'X-Subject-Token': token });
    if (res.status !== 204) throw new Error(`revoking a token: ${res.status} ${res.body}`);
  }

  async validates(token: string): Promise<boolean> {
    // The admin token is kept between calls (a fresh one each time would double Keystone's work),
    // and fetched again once when Keystone refuses it: it may itself have been revoked by revoke().
    let res: { status: number; body: string } | undefined;
    for (let attempt = 0; attempt < 2 && (res === undefined || res.status === 401); attempt++) {
      if (res !== undefined) this.validator = undefined;
      this.validator ??= this.token('admin', PASSWORD, 'admin').catch((err: unknown) => {
        this.validator = undefined;
        throw err;
      });
      res = await request(`${this.url}/auth/tokens?nocatalog`, 'GET', { 'X-Auth-Token': await this.validator, 'X-Subject-Token': token });
    }
    if (res!.status === 200) return true;
    if (res!.status === 404) return false;
    throw new Error(`validating a token: ${res!.status} ${res!.body}`);
  }

  async addEndpoint(type: string, url: string): Promise<void> {
    const api = await this.adminApi();
    const { service } = await api<{ service: { id: string } }>('POST', '/services', { service: { type, name: type } });
    await api<unknown>('POST', '/endpoints', { endpoint: { service_id: service.id, interface: 'public', url } });
  }

  /** Project demo, user demo, and role member (which bootstrap created) for demo on demo, through the API as start.sh does. */
  async addDemo(): Promise<void> {
    const api = await this.adminApi();
    const { project } = await api<{ project: { id: string } }>('POST', '/projects', { project: { name: 'demo', domain_id: DOMAIN } });
    const { user } = await api<{ user: { id: string } }>('POST', '/users', { user: { name: 'demo', domain_id: DOMAIN, password: PASSWORD } });
    const [member] = (await api<{ roles: { id: string }[] }>('GET', '/roles?name=member')).roles;
    if (member === undefined) throw new Error('keystone-manage bootstrap created no role "member"');
    await api<void>('PUT', `/projects/${project.id}/users/${user.id}/roles/${member.id}`);
  }

  /** Keystone's API as the admin: JSON in and out, a failure status thrown. */
  private async adminApi(): Promise<<T>(method: string, resource: string, body?: unknown) => Promise<T>> {
    const admin = await this.token('admin', PASSWORD, 'admin');
    return async <T>(method: string, resource: string, body?: unknown): Promise<T> => {
      const headers: Record<string, string> = { 'X-Auth-Token': admin };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const res = await request(`${this.url}${resource}`, method, headers, body === undefined ? undefined : JSON.stringify(body));
      if (res.status >= 300) throw new Error(`${method} ${resource}: ${res.status} ${res.body}`);
      return (res.body === '' ? undefined : JSON.parse(res.body)) as T;
    };
  }

  /** The last lines of the server's and keystone-manage's logs, for a failure's message. */
  logTail(lines = 20): string {
    return logTail(this.root, lines);
  }
}

/** The configuration start.sh writes: sqlite database, fernet tokens, key repositories and logs in the root. */
function writeConfig(root: string, tokenExpiration: number | undefined): string {
  for (const dir of ['fernet', 'credential', 'log']) fs.mkdirSync(path.join(root, dir));
  const conf = path.join(root, 'keystone.conf');
  // log_dir without log_file: each program logs to its own file there (keystone-manage.log, keystone-wsgi-public.log).
  fs.writeFileSync(conf, `[DEFAULT]
log_dir = ${path.join(root, 'log')}
[database]
connection = sqlite:///${path.join(root, 'keystone.db')}
[fernet_tokens]
key_repository = ${path.join(root, 'fernet')}
[credential]
key_repository = ${path.join(root, 'credential')}
[token]
provider = fernet
${tokenExpiration === undefined ? '' : `expiration = ${tokenExpiration}\n`}[identity]
password_hash_rounds = ${PASSWORD_HASH_ROUNDS}
`);
  return conf;
}

/** One keystone-manage step; its output is appended to log/manage.log (steps may run at once: each appends whole). */
function manage(root: string, conf: string, args: string[]): Promise<void> {
  const logFile = path.join(root, 'log', 'manage.log');
  return new Promise((resolve, reject) => {
    execFile('keystone-manage', ['--config-file', conf, ...args], { cwd: root, timeout: MANAGE_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      fs.appendFileSync(logFile, `--- keystone-manage ${args[0]}\n${stdout}${stderr}`);
      if (err) reject(new Error(`keystone-manage ${args[0]} failed: ${err.message}\n${logTail(root, 20)}`));
      else resolve();
    });
  });
}

function spawnServer(root: string, conf: string, url: string): RunningKeystone {
  const { port } = new URL(url);
  const out = fs.openSync(path.join(root, 'log', 'server.log'), 'a');
  // The WSGI entry takes no --config-file: the application reads its configuration files from this variable.
  const env = { ...process.env, OS_KEYSTONE_CONFIG_FILES: conf };
  // detached: setsid, so its pid is also the group id of the server and anything it forks.
  const child = spawn(WSGI_PUBLIC, ['--host', '127.0.0.1', '--port', port], { cwd: root, env, detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  if (child.pid === undefined) throw new Error(`${WSGI_PUBLIC} could not be spawned`);
  // Not keeping this process alive for it: stop() or the exit hook ends it.
  child.unref();
  const peer = new RunningKeystone(url, root, child.pid);
  child.on('exit', (code, signal) => {
    peer.exited = `${WSGI_PUBLIC} exited (${signal ?? `code ${code}`})`;
  });
  return peer;
}

/** Polls /v3 until Keystone answers, it exits, or the deadline passes (then fails with its logs' tails). */
async function waitUntilServing(peer: RunningKeystone): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    // Checked first: a server that could not bind must not be taken as up because someone else answers on the port.
    if (peer.exited === undefined && (await answers(peer.url))) return;
    const reason = peer.exited ?? (Date.now() > deadline ? `no answer within ${START_TIMEOUT_MS} ms` : undefined);
    if (reason !== undefined) throw new Error(`Keystone on ${peer.url} did not come up: ${reason}\n${peer.logTail()}`);
    await sleep(POLL_INTERVAL_MS);
  }
}

async function answers(url: string): Promise<boolean> {
  try {
    const { status } = await request(url, 'GET', {}, undefined, 2000);
    return status === 200;
  } catch {
    return false;
  }
}





/** The last lines of every log in the root: keystone-manage's output, the server's stdout, Keystone's own logs. */
function logTail(root: string, lines: number): string {
  const dir = path.join(root, 'log');
  if (!fs.existsSync(dir)) return '';
  return fs.readdirSync(dir)
    .sort()
    .map((name) => `--- ${name}\n${tail(fs.readFileSync(path.join(dir, name), 'utf8'), lines)}`)
    .join('\n');
}
