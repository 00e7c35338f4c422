import pg from 'pg';
import { BadDriverConfiguration, InvalidImageId } from '../errors.js';
import type { Logger } from '../log.js';
import { AccessBatch } from './access-batch.js';
import { RecordStoreDriver, type ImageRecord } from './record-store-driver.js';
import { sqliteFileNames } from './sqlite-files.js';

/**
 * Glance's 2024.1 migration (2024_1_expand01_add_cache_tables), as SQLAlchemy
 * renders it for PostgreSQL: BigInteger autoincrement keys are BIGSERIAL,
 * DateTime is TIMESTAMP WITHOUT TIME ZONE holding UTC wall-clock time, and the
 * constraint names are Glance's (the unnamed ones get PostgreSQL's defaults,
 * which is what Glance's tables have too).
 *
 * One deviation: Glance's image_id is VARCHAR(36) (a UUID), while our image IDs
 * may be up to 255 bytes (SPEC §1), so a table we create holds 255. A table
 * Glance created is used as it is; IDs longer than its column are refused at
 * commit (see imageIdLimit).
 *
 * Plus our own index: every per-node query filters on node_reference_id, which
 * Glance leaves unindexed (its unique index leads with image_id). hits and
 * last_accessed stay unindexed so that recording reads remains a HOT update.
 */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS node_reference (
    node_reference_id BIGSERIAL NOT NULL,
    node_reference_url VARCHAR(255) NOT NULL,
    CONSTRAINT node_reference_pkey PRIMARY KEY (node_reference_id),
    CONSTRAINT uq_node_reference_node_reference_url UNIQUE (node_reference_url)
  );
  CREATE TABLE IF NOT EXISTS cached_images (
    id BIGSERIAL NOT NULL,
    image_id VARCHAR(255) NOT NULL,
    last_accessed TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    last_modified TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    size BIGINT NOT NULL,
    hits INTEGER NOT NULL,
    checksum VARCHAR(32),
    node_reference_id BIGINT NOT NULL,
    CONSTRAINT cached_images_pkey PRIMARY KEY (id),
    CONSTRAINT cached_images_node_reference_id_fkey FOREIGN KEY (node_reference_id) REFERENCES node_reference (node_reference_id),
    CONSTRAINT ix_cached_images_image_id_node_reference_id UNIQUE (image_id, node_reference_id)
  );
  CREATE INDEX IF NOT EXISTS cached_images_node_reference_id_idx ON cached_images (node_reference_id);
`;

/**
 * CREATE ... IF NOT EXISTS is not safe against a concurrent CREATE of the same
 * name (both sessions pass the check, one fails on a catalog unique index), so
 * nodes starting together take this transaction-scoped advisory lock first.
 */
const SCHEMA_LOCK = "hashtext('image-cache centralized_db schema')";

/** Glance writes timeutils.utcnow(): naive UTC. Epoch seconds in and out, whatever the session's TimeZone. */
const toTimestamp = (param: string): string => `(to_timestamp(${param}::float8) AT TIME ZONE 'UTC')`;
const epochOf = (column: string): string => `EXTRACT(EPOCH FROM ${column})::float8`;


/**
 * Our writes do not wait for PostgreSQL's WAL flush: the files are the truth
 * and every listing reconciles the rows with them, so what a server crash can
 * lose costs nothing lasting. A lost commit record leaves a file without a row,
 * which is adopted (hits 0, mtime as times); a lost delete leaves a row without
 * a file, which is never reported; a lost hit update loses that hit. Waiting
 * for the server's fsync on every commit, on top of our own, made fill ~30%
 * slower. Set at connection start-up, for our own sessions only (Glance's are
 * untouched); configure() commits the schema and the node's registration
 * synchronously.
 */
const SESSION_OPTIONS = '-c synchronous_commit=off';

/** Connections per node: the hot paths (commit record, batched hit update) use one at a time; the rest is for concurrent listings. */
const POOL_MAX = 4;
/** How long configure() waits for the server before reporting it unreachable (and ImageCache falls back to sqlite). */
const CONNECT_TIMEOUT_MS = 5_000;
/** node_reference_url is VARCHAR(255) in Glance's table. */
const NODE_URL_MAX = 255;
/** Batched writes that lose a deadlock or serialization race with another node's batch are retried this many times. */
const WRITE_ATTEMPTS = 3;
const RETRYABLE = new Set(['40P01', '40001']);


const ROW_COLUMNS = `image_id, hits, ${epochOf('last_accessed')} AS last_accessed, ${epochOf('last_modified')} AS last_modified, size`;

/**
 * Statements run by name, so each pooled connection parses and plans them
 * once. Every per-node statement is scoped by node_reference_id ($1), looked up
 * once at configure() instead of joining node_reference on every query as
 * Glance does.
 */
const SQL = {
  record: {
    name: 'image-cache-record',
    text: `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
           VALUES ($2, ${toTimestamp('$3')}, ${toTimestamp('$3')}, $4, 0, NULL, $1)
           ON CONFLICT (image_id, node_reference_id) DO UPDATE
           SET last_accessed = EXCLUDED.last_accessed, last_modified = EXCLUDED.last_modified, size = EXCLUDED.size, hits = 0, checksum = NULL`,
  },
  forget: {
    name: 'image-cache-forget',
    text: 'DELETE FROM cached_images WHERE node_reference_id = $1 AND image_id = ANY($2::varchar[])',
  },
  // hits = hits + n, never read-modify-write: other processes on this node update the same rows.
  applyAccesses: {
    name: 'image-cache-accesses',
    text: `UPDATE cached_images AS c
           SET hits = c.hits + v.hits, last_accessed = GREATEST(c.last_accessed, ${toTimestamp('v.at')})
           FROM unnest($2::varchar[], $3::int4[], $4::float8[]) AS v(image_id, hits, at)
           WHERE c.node_reference_id = $1 AND c.image_id = v.image_id`,
  },
  adopt: {
    name: 'image-cache-adopt',
    text: `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
           SELECT v.image_id, ${toTimestamp('v.at')}, ${toTimestamp('v.at')}, v.size, 0, NULL, $1
           FROM unnest($2::varchar[], $3::float8[], $4::int8[]) AS v(image_id, at, size)
           ON CONFLICT (image_id, node_reference_id) DO NOTHING
           RETURNING ${ROW_COLUMNS}`,
  },
  all: {
    name: 'image-cache-all',
    text: `SELECT ${ROW_COLUMNS} FROM cached_images WHERE node_reference_id = $1`,
  },
  hits: {
    name: 'image-cache-hits',
    text: 'SELECT hits FROM cached_images WHERE node_reference_id = $1 AND image_id = $2',
  },
  nodes: {
    name: 'image-cache-nodes',
    text: `SELECT n.node_reference_id, n.node_reference_url FROM cached_images AS c
           JOIN node_reference AS n ON n.node_reference_id = c.node_reference_id
           WHERE c.image_id = $1`,
  },
} as const;

/**
 * Metadata in PostgreSQL shared by every cache node (Glance's centralized_db
 * driver): each node names itself with worker_self_reference_url, registers in
 * node_reference, and keeps its rows in cached_images under that reference.
 * Image files stay in the node's own cache directory; getCachedNodes() tells
 * which nodes hold an image.
 *
 * Reads are recorded in memory and written as one UPDATE per turn of the event
 * loop (while one is in flight, later reads gather for the next); every query
 * flushes them first.
 */
export class CentralizedDbDriver extends RecordStoreDriver {
  readonly name = 'centralized_db' as const;
  private pool: pg.Pool | undefined;
  private nodeId = '';
  private nodeUrl = '';
  private imageIdLimit = Infinity;
  private reserved: ReadonlySet<string> = new Set();
  private readonly reads = new AccessBatch(() => void this.flush());
  /** Writes the pending reads until none are left; shared by everyone who flushes meanwhile. */
  private draining: Promise<void> | undefined;
  /** The UPDATE being run right now, if any. */
  private inFlight: Promise<void> | undefined;

  /** This node's worker_self_reference_url. */
  get nodeReferenceUrl(): string {
    return this.nodeUrl;
  }

  protected override reservedNames(): ReadonlySet<string> {
    return this.reserved;
  }

  protected async openMetadataStore(): Promise<void> {
    this.reserved = sqliteFileNames(this.options.imageCacheSqliteDb);
    const nodeUrl = this.options.workerSelfReferenceUrl;
    if (typeof nodeUrl !== 'string' || nodeUrl.length === 0) {
      throw new BadDriverConfiguration('centralized_db', 'worker_self_reference_url is not set: each node needs its own URL (e.g. http://cache-1.example.com:9292) to keep its rows apart from the other nodes\'');
    }
    if (nodeUrl.length > NODE_URL_MAX) {
      throw new BadDriverConfiguration('centralized_db', `worker_self_reference_url is ${nodeUrl.length} characters long; node_reference holds at most ${NODE_URL_MAX}`);
    }
    const connectionString = postgresUrl(this.options.databaseConnection);
    const where = redact(connectionString);
    const pool = new pg.Pool({
      connectionString: withSessionOptions(connectionString),
      max: POOL_MAX,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      application_name: 'image-cache',
      // A process that forgets close() may still exit once its connections are idle.
      allowExitOnIdle: true,
    });
    // An idle connection that breaks (server restart) is replaced on next use; without a listener it would crash the process.
    pool.on('error', (err) => this.log.warn({ driver: this.name, err }, 'idle PostgreSQL connection failed'));
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      await pool.end().catch(() => {});
      throw new BadDriverConfiguration('centralized_db', `cannot connect to PostgreSQL at ${where}: ${(err as Error).message}`, { cause: err });
    }
    try {
      // The tables and this node's row are what every later row depends on: those commits wait for the WAL flush.
      await client.query('SET synchronous_commit = on');
      await ensureSchema(client, this.log);
      this.imageIdLimit = await imageIdColumnLimit(client);
      // Registered by one statement, read back by another: the insert waits for a
      // concurrent one of the same URL to commit, and the select then sees it.
      await client.query('INSERT INTO node_reference (node_reference_url) VALUES ($1) ON CONFLICT (node_reference_url) DO NOTHING', [nodeUrl]);
      const node = await client.query<{ node_reference_id: string }>('SELECT node_reference_id FROM node_reference WHERE node_reference_url = $1', [nodeUrl]);
      if (node.rows[0] === undefined) throw new Error(`node_reference has no row for ${nodeUrl} after inserting it`);
      this.nodeId = node.rows[0].node_reference_id;
      await client.query('RESET synchronous_commit');
    } catch (err) {
      client.release();
      await pool.end().catch(() => {});
      throw new BadDriverConfiguration('centralized_db', `cannot use the cache tables in ${where}: ${(err as Error).message}`, { cause: err });
    }
    client.release();
    this.nodeUrl = nodeUrl;
    this.pool = pool;
  }

  protected async closeMetadataStore(): Promise<void> {
    const pool = this.pool;
    if (pool === undefined) return;
    await this.flush();
    this.pool = undefined;
    await pool.end();
  }

  protected async recordCachedImage(imageId: string, size: number, now: number): Promise<void> {
    if (imageId.length > this.imageIdLimit) {
      throw new InvalidImageId(imageId, `longer than the ${this.imageIdLimit} characters the cached_images.image_id column holds`);
    }
    // Reads of an earlier copy of this image must not count toward the new one.
    this.reads.forget(imageId);
    await this.inFlight;
    await this.db().query({ ...SQL.record, values: [this.nodeId, imageId, now, size] });
  }

  protected async forgetCachedImages(imageIds: readonly string[]): Promise<void> {
    if (imageIds.length === 0) return;
    for (const id of imageIds) this.reads.forget(id);
    await this.inFlight;
    // Sorted, so that batches of several processes lock rows in the same order.
    await this.write(SQL.forget, [this.nodeId, [...imageIds].sort()]);
  }

  protected recordAccess(imageId: string, now: number): void {
    if (this.pool === undefined) return; // closed while a read was still open
    this.reads.add(imageId, now);
  }

  /** Writes the recorded reads; resolves once every read recorded before the call is in the database. */
  flush(): Promise<void> {
    this.draining ??= this.drain().finally(() => {
      this.draining = undefined;
    });
    return this.draining;
  }

  private async drain(): Promise<void> {
    for (let taken = this.reads.take(); taken !== undefined && this.pool !== undefined; taken = this.reads.take()) {
      const entries = [...taken].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      this.inFlight = this.write(SQL.applyAccesses, [
        this.nodeId,
        entries.map(([id]) => id),
        entries.map(([, access]) => access.hits),
        entries.map(([, access]) => access.lastAccessed),
      ]).then(
        () => {},
        (err: unknown) => this.log.error({ driver: this.name, err, images: entries.length }, 'could not record image reads'),
      );
      await this.inFlight;
      this.inFlight = undefined;
    }
  }

  async getHitCount(imageId: string): Promise<number> {
    this.validate(imageId);
    if (!(await this.isCached(imageId))) return 0;
    await this.flush();
    const result = await this.db().query<{ hits: number }>({ ...SQL.hits, values: [this.nodeId, imageId] });
    return result.rows[0]?.hits ?? 0;
  }

  /**
   * The worker_self_reference_url of every node with a record of the image,
   * sorted. This node is reconciled with its own directory like the listings
   * are; the other nodes' files are out of sight, so their records are taken
   * as they are.
   */
  override async getCachedNodes(imageId: string): Promise<string[]> {
    this.validate(imageId);
    const result = await this.db().query<{ node_reference_id: string; node_reference_url: string }>({ ...SQL.nodes, values: [imageId] });
    const urls = new Set(result.rows.filter((row) => row.node_reference_id !== this.nodeId).map((row) => row.node_reference_url));
    if (await this.isCached(imageId)) urls.add(this.nodeUrl);
    return [...urls].sort();
  }

  protected flushReads(): Promise<void> {
    return this.flush();
  }

  protected async loadRecords(): Promise<ImageRecord[]> {
    const result = await this.db().query<ImageRecord>({ ...SQL.all, values: [this.nodeId] });
    // BIGINT arrives as a string (it may exceed 2^53); an image size does not.
    for (const row of result.rows) row.size = Number(row.size);
    return result.rows;
  }

  protected async adoptRecords(found: ImageRecord[]): Promise<ImageRecord[]> {
    // A name too long for a table Glance created cannot be recorded; it is still listed, counted and pruned.
    const recordable = found.filter((r) => r.image_id.length <= this.imageIdLimit);
    if (recordable.length === 0) return found;
    const inserted = await this.db().query<ImageRecord>({
      ...SQL.adopt,
      values: [this.nodeId, recordable.map((r) => r.image_id), recordable.map((r) => r.last_modified), recordable.map((r) => r.size)],
    });
    // What the database holds (times rounded to microseconds), so that the next listing says the same.
    const stored = new Map(inserted.rows.map((row) => [row.image_id, { ...row, size: Number(row.size) }]));
    return found.map((r) => stored.get(r.image_id) ?? r);
  }

  /** Runs a batched write, again if it lost a deadlock against another process's batch. */
  private async write(statement: { name: string; text: string }, values: unknown[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.db().query({ ...statement, values });
        return;
      } catch (err) {
        if (attempt >= WRITE_ATTEMPTS || !RETRYABLE.has((err as { code?: string }).code ?? '')) throw err;
      }
    }
  }

  private db(): pg.Pool {
    if (this.pool === undefined) throw new Error('the centralized_db driver is not configured (call configure() first)');
    return this.pool;
  }
}

/**
 * The tables, created if missing. When they are all there (the usual case: an
 * earlier node, or Glance's own `glance-manage db sync`, made them) nothing is
 * locked or created, so a database user without CREATE rights can still run
 * nodes; without the right to add our index to Glance's tables, they run
 * without it.
 */
async function ensureSchema(client: pg.PoolClient, log: Logger): Promise<void> {
  const present = await client.query<{ tables: boolean; index: boolean }>(
    `SELECT to_regclass('node_reference') IS NOT NULL AND to_regclass('cached_images') IS NOT NULL AS tables,
            to_regclass('cached_images_node_reference_id_idx') IS NOT NULL AS index`,
  );
  const { tables, index } = present.rows[0] ?? { tables: false, index: false };
  if (tables && index) return;
  try {
    await client.query('BEGIN');
    await client.query(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`);
    await client.query(SCHEMA);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    if (!tables) throw err;
    log.warn({ driver: 'centralized_db', err }, 'could not add an index on cached_images (node_reference_id); per-node queries will scan the table');
  }
}

/** How many characters cached_images.image_id holds: 255 in a table we made, 36 in one Glance made. */
async function imageIdColumnLimit(client: pg.PoolClient): Promise<number> {
  const result = await client.query<{ atttypmod: number }>(
    "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'cached_images'::regclass AND attname = 'image_id' AND NOT attisdropped",
  );
  const typmod = result.rows[0]?.atttypmod ?? -1;
  // VARCHAR(n) has typmod n + 4 (the varlena header); -1 is unbounded (TEXT).
  return typmod > 4 ? typmod - 4 : Infinity;
}

/**
 * The database_connection URL, for pg. SQLAlchemy's dialect+driver form
 * (postgresql+psycopg2://, as glance-api.conf has it) is accepted and the
 * driver part dropped.
 */
function postgresUrl(raw: string | undefined): string {
  if (typeof raw !== 'string' || raw.trim() === '') {
    throw new BadDriverConfiguration(
      'centralized_db',
      'database_connection is not set: it must be a PostgreSQL URL such as postgresql://glance:secret@db.example.com:5432/glance (option database_connection, or the DATABASE_CONNECTION environment variable)',
    );
  }
  const match = /^(postgres|postgresql)(\+[A-Za-z0-9_]+)?:\/\//i.exec(raw.trim());
  if (match === null) {
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(raw)?.[1];
    throw new BadDriverConfiguration(
      'centralized_db',
      `database_connection must be a PostgreSQL URL (postgresql://user:password@host:port/database), not ${scheme === undefined ? 'a string without a URL scheme' : `a ${scheme}:// URL`}`,
    );
  }
  const url = `postgresql://${raw.trim().slice(match[0].length)}`;
  try {
    new URL(url);
  } catch {
    throw new BadDriverConfiguration('centralized_db', `database_connection is not a valid URL: ${redact(url)}`);
  }
  return url;
}

/** Adds our session settings to the URL's own `options` (pg lets the URL's override any given beside it). */
function withSessionOptions(url: string): string {
  const parsed = new URL(url);
  const given = parsed.searchParams.get('options');
  parsed.searchParams.set('options', given === null || given.trim() === '' ? SESSION_OPTIONS : `${given} ${SESSION_OPTIONS}`);
  return parsed.toString();
}

/** The URL without its password, for messages and logs. */
function redact(url: string): string {
  return url.replace(/^(postgresql:\/\/[^/@:]*):[^/@]*@/, '$1:***@');
}
