/**
 * A real PgBouncer in transaction-pooling mode in front of the test
 * PostgreSQL server, started by a test suite and stopped after it.
 *
 * Its configuration lives in a temporary directory of its own (removed on
 * stop); it logs to stderr (kept for error messages), listens on a free
 * port on 127.0.0.1 only, and lets in the server's user with trust
 * authentication, as the test server does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { ADMIN_URL, databaseUrl } from './pg-helpers.js';

/** Where Debian (and most distributions) install it, then $PATH. */
export function findPgBouncer(): string | undefined {
  const dirs = ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin', ...(process.env.PATH ?? '').split(path.delimiter)];
  for (const dir of dirs) {
    if (dir === '') continue;
    const candidate = path.join(dir, 'pgbouncer');
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not there
    }
  }
  return undefined;
}

export interface PgBouncerOptions {
  /** Server connections per database and user (default_pool_size): small, so that clients share them. */
  poolSize: number;
}

export interface PgBouncer {
  readonly port: number;
  /** A URL to `database` on the server, through the bouncer, with libpq-style parameters added. */
  url(database: string, params?: Record<string, string>): string;
  /** PgBouncer's admin console (SHOW CLIENTS, SHOW SERVERS, ...): simple-protocol queries only. */
  admin<T extends pg.QueryResultRow = Record<string, unknown>>(command: string): Promise<T[]>;
  /** What it logged so far (the tail). */
  log(): string;
  /** Stops it (SIGTERM, then SIGKILL if it does not exit) and removes its directory. */
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const LOG_TAIL = 16 * 1024;
const PORT_ATTEMPTS = 5;

/** A port nothing listens on right now (the kernel's pick), released for the caller to bind. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error(`no TCP port from ${String(address)}`);
  return address.port;
}

/**
 * Starts PgBouncer, and resolves once it accepts connections. A port taken
 * between our pick and its bind makes it exit at once: another port is tried.
 */
export async function startPgBouncer(binary: string, options: PgBouncerOptions): Promise<PgBouncer> {
  const upstream = new URL(ADMIN_URL);
  const user = decodeURIComponent(upstream.username) || 'postgres';
  const password = decodeURIComponent(upstream.password);
  let lastError: Error | undefined;
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-pgbouncer-'));
    try {
      return await startOnce(binary, options, dir, await freePort(), { host: upstream.hostname || '127.0.0.1', port: upstream.port || '5432', user, password });
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      lastError = err as Error;
      if (!/Address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError ?? new Error('pgbouncer did not start');
}

interface Upstream {
  host: string;
  port: string;
  user: string;
  password: string;
}

async function startOnce(binary: string, options: PgBouncerOptions, dir: string, port: number, upstream: Upstream): Promise<PgBouncer> {
  const quote = (value: string) => `"${value.replace(/"/g, '""')}"`;
  const ini = path.join(dir, 'pgbouncer.ini');
  const users = path.join(dir, 'userlist.txt');
  fs.writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=${upstream.host} port=${upstream.port}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${users}`,
      `admin_users = ${upstream.user}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize}`,
      'reserve_pool_size = 0',
      // No ignore_startup_parameters: a start-up parameter PgBouncer does not track (options) is refused, as in production.
      '',
    ].join('\n'),
  );
  fs.writeFileSync(users, `${quote(upstream.user)} ${quote(upstream.password)}\n`);
  // PgBouncer refuses to run as root: it switches to postgres, who must read its files.
  fs.chmodSync(dir, 0o755);
  fs.chmodSync(ini, 0o644);
  fs.chmodSync(users, 0o644);

  const args = process.getuid?.() === 0 ? ['-u', 'postgres', ini] : [ini];
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    log = (log + chunk).slice(-LOG_TAIL);
  });
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
  });
  child.once('error', (err) => {
    log += `\nspawn error: ${err.message}`;
  });

  const url = (database: string, params: Record<string, string> = {}): string => {
    const base = new URL(ADMIN_URL);
    base.hostname = '127.0.0.1';
    base.port = String(port);
    return databaseUrl(base.toString(), database, params);
  };

  const stop = async (): Promise<void> => {
    if (exited === undefined) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exit;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    await waitReady(url('pgbouncer'), () => exited, () => log);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    port,
    url,
    log: () => log,
    stop,
    admin: async <T extends pg.QueryResultRow>(command: string) => {
      const client = new pg.Client({ connectionString: url('pgbouncer'), connectionTimeoutMillis: 5_000 });
      await client.connect();
      try {
        return (await client.query<T>(command)).rows;
      } finally {
        await client.end();
      }
    },
  };
}

/** Connects to the admin console until it answers; bounded, and failing at once if PgBouncer exits. */
async function waitReady(adminUrl: string, exited: () => { code: number | null; signal: NodeJS.Signals | null } | undefined, log: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let lastError = '';
  for (;;) {
    const status = exited();
    if (status !== undefined) throw new Error(`pgbouncer exited (code ${status.code}, signal ${status.signal}) before accepting connections: ${log().trim()}`);
    const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 1_000 });
    try {
      await client.connect();
      await client.query('SHOW VERSION');
      return;
    } catch (err) {
      lastError = (err as Error).message;
    } finally {
      await client.end().catch(() => {});
    }
    if (Date.now() > deadline) throw new Error(`pgbouncer did not accept connections within ${READY_TIMEOUT_MS} ms (${lastError}): ${log().trim()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
