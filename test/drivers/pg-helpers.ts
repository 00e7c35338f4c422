/**
 * A real PostgreSQL server for the centralized_db tests: each test run gets a
 * database of its own, created at the start and dropped at the end, so that
 * runs (and developers) sharing a server never see each other's rows.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * A superuser connection to an existing database of the server under test.
 * Trust authentication for postgres@127.0.0.1, here and in CI;
 * IMAGE_CACHE_TEST_PG_URL points the tests at another server.
 */
export const ADMIN_URL = process.env.IMAGE_CACHE_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';

/** Why the server cannot be used (connection refused, authentication failed, ...), or undefined when it can. */
export async function unreachableReason(url: string = ADMIN_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    return (err as Error).message || String(err);
  } finally {
    await client.end().catch(() => {});
  }
}

/** `url` naming another database, with libpq-style parameters (e.g. options: '-c search_path=x') added. */
export function databaseUrl(url: string, database: string, params: Record<string, string> = {}): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  for (const [key, value] of Object.entries(params)) parsed.searchParams.set(key, value);
  return parsed.toString();
}

/** A database named image_cache_test_<pid>_<random> on the server behind ADMIN_URL. */
export class TestDatabase {
  readonly name = `image_cache_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  readonly url: string;
  private pool: pg.Pool | undefined;

  constructor(private readonly adminUrl: string = ADMIN_URL) {
    this.url = databaseUrl(adminUrl, this.name);
  }

  /** The database's URL with connection parameters, e.g. { options: '-c search_path=glance' }. */
  urlWith(params: Record<string, string>): string {
    return databaseUrl(this.adminUrl, this.name, params);
  }

  async create(): Promise<void> {
    await withClient(this.adminUrl, (client) => client.query(`CREATE DATABASE ${this.name}`));
    this.pool = new pg.Pool({ connectionString: this.url, max: 2 });
    // drop() ends the pool, then DROP ... WITH (FORCE) terminates whatever is still connected: an idle
    // connection of ours that has not finished closing must not turn that into an uncaught error.
    this.pool.on('error', () => {});
  }

  /** Drops the database, disconnecting whatever is still connected to it (PostgreSQL 13+). */
  async drop(): Promise<void> {
    await this.pool?.end();
    this.pool = undefined;
    await withClient(this.adminUrl, (client) => client.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`));
  }

  /** A statement in the test database, as the test's own superuser connection. */
  async query<R extends pg.QueryResultRow = Record<string, unknown>>(text: string, values: unknown[] = []): Promise<R[]> {
    if (this.pool === undefined) throw new Error(`test database ${this.name} is not created`);
    return (await this.pool.query<R>(text, values)).rows;
  }
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}
