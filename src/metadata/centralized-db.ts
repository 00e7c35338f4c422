import fs from 'node:fs';
import pg from 'pg';
import type { CommitMetadata, PendingRecord } from '../content/writer.js';
import { BadDriverConfiguration, CacheNotConfigured, InvalidImageId, MetadataStoreUnavailable, MetadataWriteFailed } from '../errors.js';
import type { Logger } from '../log.js';
import type { FillDirectory } from '../cluster/fill-directory.js';
import { CentralizedFillDirectory, FILL_DIRECTORY_SCHEMA, FILL_DIRECTORY_TABLES } from './centralized-fill-directory.js';
import { stillTheFileRead, type PendingAccess } from './access-batch.js';
import { RecordIndex, byId, byLastAccess, type ImageRecord } from './record-index.js';
import { isPostgresConnectionFailure, isRetryablePostgresError, withRetry } from './retry.js';

/**
 * Glance's 2024.1 migration (2024_1_expand01_add_cache_tables), as SQLAlchemy
 * renders it for PostgreSQL: BigInteger autoincrement keys are BIGSERIAL,
 * DateTime is TIMESTAMP WITHOUT TIME ZONE holding UTC wall-clock time, and the
 * constraint names are Glance's (the unnamed ones get PostgreSQL's defaults,
 * which is what Glance's tables have too).
 *
 * One deviation: Glance's image_id is VARCHAR(36) (a UUID), while our image IDs
 * may be up to 255 bytes (SPEC §1), so a table we create holds 255. A table
 * Glance created is used as it is; IDs longer than its column are refused when
 * a writer opens (see checkWritable).
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
  ${FILL_DIRECTORY_SCHEMA}
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
 * and verify() repairs the rows from them, so what a server crash can lose
 * costs nothing lasting. A lost commit record leaves a file without a row
 * (listed from its stat, recorded by verify()); a lost delete leaves a row
 * without a file (never listed, dropped by verify()); a lost hit update loses
 * that hit. Waiting for the server's fsync on every commit, on top of our own,
 * slows a fill measurably (bench:lib --driver centralized_db shows it).
 *
 * The setting is made inside each write statement, for its own transaction
 * only (set_config(..., true)), rather than as a connection start-up option:
 * PgBouncer in transaction mode refuses start-up options, and a session SET
 * would leak through its shared server connections to other clients (Glance).
 * Statements are unnamed for the same reason: PgBouncer before 1.21 cannot
 * keep named prepared statements across transactions.
 */
const ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/** Connections per node: the hot paths (commit record, batched hit update) use one at a time; the rest is for concurrent listings. */
const POOL_MAX = 4;
/** How long configure() waits for the server before reporting it unreachable (and ImageCache falls back to sqlite). */
const CONNECT_TIMEOUT_MS = 5_000;
/** What a failure to use the database points the operator at: the option, under both of its names. */
const CHECK_CONNECTION = 'check database_connection ([database] connection in glance-api.conf)';
/** node_reference_url is VARCHAR(255) in Glance's table. */
const NODE_URL_MAX = 255;

const ROW_COLUMNS = `image_id, hits, ${epochOf('last_accessed')} AS last_accessed, ${epochOf('last_modified')} AS last_modified, size`;

/**
 * Every per-node statement is scoped by node_reference_id ($1), looked up once
 * at configure() instead of joining node_reference on every query as Glance
 * does. Arrays go in through unnest(), so a batch is one statement.
 */
const SQL = {
  // A join with unnest() rather than image_id = ANY($2): an unnamed statement is planned for its
  // values each time, and planning ANY over a long array costs more than the delete (measured).
  forget: `DELETE FROM cached_images AS c USING unnest($2::varchar[]) AS v(image_id), ${ASYNC_COMMIT}
           WHERE c.node_reference_id = $1 AND c.image_id = v.image_id`,
  // hits = hits + n, never read-modify-write: other processes on this node update the same rows.
  addReads: `UPDATE cached_images AS c
             SET hits = c.hits + v.hits, last_accessed = GREATEST(c.last_accessed, ${toTimestamp('v.at')})
             FROM unnest($2::varchar[], $3::int4[], $4::float8[]) AS v(image_id, hits, at), ${ASYNC_COMMIT}
             WHERE c.node_reference_id = $1 AND c.image_id = v.image_id
             RETURNING c.image_id`,
  // Reads of images that had no row (files Glance or a crash left): the row is made, and the hits count.
  insertReads: `INSERT INTO cached_images AS c (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
                SELECT v.image_id, ${toTimestamp('v.at')}, ${toTimestamp('v.modified')}, v.size, v.hits, NULL, $1
                FROM unnest($2::varchar[], $3::int4[], $4::float8[], $5::float8[], $6::int8[]) AS v(image_id, hits, at, modified, size), ${ASYNC_COMMIT}
                ON CONFLICT (image_id, node_reference_id) DO UPDATE
                SET hits = c.hits + EXCLUDED.hits, last_accessed = GREATEST(c.last_accessed, EXCLUDED.last_accessed)`,
  adopt: `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
          SELECT v.image_id, ${toTimestamp('v.at')}, ${toTimestamp('v.at')}, v.size, 0, NULL, $1
          FROM unnest($2::varchar[], $3::float8[], $4::int8[]) AS v(image_id, at, size), ${ASYNC_COMMIT}
          ON CONFLICT (image_id, node_reference_id) DO NOTHING`,
  // Only rows unchanged since verify() read them (same last_modified): a copy recorded meanwhile stays.
  deleteUnchanged: `DELETE FROM cached_images AS c
                    USING unnest($2::varchar[], $3::float8[]) AS v(image_id, modified), ${ASYNC_COMMIT}
                    WHERE c.node_reference_id = $1 AND c.image_id = v.image_id AND c.last_modified = ${toTimestamp('v.modified')}`,
  resizeUnchanged: `UPDATE cached_images AS c SET size = v.size
                    FROM unnest($2::varchar[], $3::float8[], $4::int8[]) AS v(image_id, modified, size), ${ASYNC_COMMIT}
                    WHERE c.node_reference_id = $1 AND c.image_id = v.image_id AND c.last_modified = ${toTimestamp('v.modified')}`,
  all: `SELECT ${ROW_COLUMNS} FROM cached_images WHERE node_reference_id = $1`,
  hits: 'SELECT hits FROM cached_images WHERE node_reference_id = $1 AND image_id = $2',
  allNodes: 'SELECT node_reference_url FROM node_reference WHERE node_reference_id <> $1 ORDER BY node_reference_url',
  nodes: `SELECT n.node_reference_id, n.node_reference_url FROM cached_images AS c
          JOIN node_reference AS n ON n.node_reference_id = c.node_reference_id
          WHERE c.image_id = $1`,
} as const;

/**
 * Metadata in PostgreSQL shared by every cache node (Glance's centralized_db
 * driver): each node names itself with worker_self_reference_url, registers in
 * node_reference, and keeps its rows in cached_images under that reference.
 * Image files stay in the node's own cache directory; getCachedNodes() tells
 * which nodes hold an image.
 *
 * Every write is retried when it loses a deadlock or a serialization race
 * against another node (withRetry).
 *
 * When PostgreSQL is out of reach (stopped, restarting, unreachable), every
 * operation that needs it fails with MetadataStoreUnavailable (see use());
 * what only needs the files goes on: reads of cached images, commits (the
 * file is published, its record waits), queueing. The reads' hits are kept
 * by the access batch, and the records the outage kept from being written
 * are repaired from the files once it answers again (StoreRecovery).
 */
export class CentralizedDbIndex extends RecordIndex {
  readonly name = 'centralized_db' as const;
  /** One write of hits per node per second, whatever the load: the database is every node's (queries that report hits flush first). */
  readonly readsGatherMs = 1_000;
  private pool: pg.Pool | undefined;
  private nodeId = '';
  private nodeUrl = '';
  private imageIdLimit = Infinity;

  /** This node's worker_self_reference_url. */
  get nodeReferenceUrl(): string {
    return this.nodeUrl;
  }

  /** An ID longer than a Glance-made table's image_id column could never be recorded: refused before the download, not after. */
  override checkWritable(imageId: string): void {
    if (imageId.length > this.imageIdLimit) {
      throw new InvalidImageId(imageId, `longer than the ${this.imageIdLimit} characters the cached_images.image_id column holds`);
    }
  }

  async open(): Promise<void> {
    const nodeUrl = this.ctx.options.workerSelfReferenceUrl;
    if (typeof nodeUrl !== 'string' || nodeUrl.length === 0) {
      throw new BadDriverConfiguration('centralized_db', 'worker_self_reference_url is not set: each node needs its own URL (e.g. http://cache-1.example.com:9292) to keep its rows apart from the other nodes\'');
    }
    if (nodeUrl.length > NODE_URL_MAX) {
      throw new BadDriverConfiguration('centralized_db', `worker_self_reference_url is ${nodeUrl.length} characters long; node_reference holds at most ${NODE_URL_MAX}`);
    }
    const connectionString = postgresUrl(this.ctx.options.databaseConnection);
    const where = redact(connectionString);
    const pool = new pg.Pool({
      connectionString,
      max: POOL_MAX,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      application_name: 'image-cache',
      // A process that forgets close() may still exit once its connections are idle.
      allowExitOnIdle: true,
    });
    // An idle connection that breaks (server restart) is replaced on next use; without a listener it would crash the process.
    // A server that went away may have lost writes it had acknowledged (they do not wait for its WAL flush): repair once it is back.
    pool.on('error', (err) => {
      this.ctx.log.warn({ driver: this.name, err }, 'idle PostgreSQL connection failed');
      if (isPostgresConnectionFailure(err)) this.ctx.storeUnavailable();
    });
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
      // Between two statements the connection may break; the next statement reports it.
      client.on('error', ignore);
    } catch (err) {
      await pool.end().catch(() => {});
      throw new BadDriverConfiguration('centralized_db', `cannot connect to PostgreSQL at ${where}: ${(err as Error).message}; ${CHECK_CONNECTION}`, { cause: err });
    }
    try {
      await ensureSchema(client, this.ctx.log);
      this.imageIdLimit = await imageIdColumnLimit(client);
      // Registered by one statement, read back by another: the insert waits for a
      // concurrent one of the same URL to commit, and the select then sees it.
      await withRetry(() => client.query('INSERT INTO node_reference (node_reference_url) VALUES ($1) ON CONFLICT (node_reference_url) DO NOTHING', [nodeUrl]), isRetryablePostgresError);
      const node = await client.query<{ node_reference_id: string }>('SELECT node_reference_id FROM node_reference WHERE node_reference_url = $1', [nodeUrl]);
      if (node.rows[0] === undefined) throw new BadDriverConfiguration('centralized_db', `node_reference has no row for ${nodeUrl} after inserting it`);
      this.nodeId = node.rows[0].node_reference_id;
    } catch (err) {
      releaseHeld(client, err as Error);
      await pool.end().catch(() => {});
      throw new BadDriverConfiguration('centralized_db', `cannot use the cache tables in ${where}: ${(err as Error).message}; ${CHECK_CONNECTION}`, { cause: err });
    }
    releaseHeld(client);
    this.nodeUrl = nodeUrl;
    this.pool = pool;
  }

  async close(): Promise<void> {
    const pool = this.pool;
    if (pool === undefined) return;
    this.pool = undefined;
    await pool.end();
  }

  commitMetadata(imageId: string): CommitMetadata {
    return {
      beforePublish: () => {},
      record: (size, now) => this.stageRecord(imageId, size, now),
      unrecord: async (now) => {
        await this.write(SQL.deleteUnchanged, [this.nodeId, [imageId], [now]]);
      },
    };
  }

  /**
   * The record of a commit, in a transaction of its own: begun (BEGIN, INSERT)
   * while the writer fsyncs its file, so that the round trips cost nothing,
   * and committed only after the file is published, so that no other node or
   * Glance tool ever sees a row before its file exists; a crash in between
   * rolls it back with the connection.
   */
  private stageRecord(imageId: string, size: number, now: number): PendingRecord {
    // Reads of an earlier copy of this image must not count toward the new one:
    // drop those not yet sent, and let the batch in flight land first.
    this.ctx.reads.forget(imageId);
    // The connection sits idle in its transaction while the file is fsynced: if it breaks
    // then, pg reports it as an 'error' event (fatal without a listener), and COMMIT fails.
    const staged = this.ctx.reads.settled().then(() => withRetry(() => this.use(async (pool) => {
      const client = await pool.connect();
      client.on('error', ignore);
      try {
        await client.query(beginRecord(client, this.nodeId, imageId, now, size));
        return client;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        releaseHeld(client); // not reused if its connection broke (the pool checks)
        throw err;
      }
    }), isRetryablePostgresError));
    staged.catch(() => {}); // reported by commit() (or dropped by abandon())
    const finish = async (statement: 'COMMIT' | 'ROLLBACK'): Promise<void> => {
      const client = await staged;
      try {
        await this.use(() => client.query(statement));
        releaseHeld(client);
      } catch (err) {
        releaseHeld(client, err as Error); // a connection whose transaction end failed is not reused
        throw err;
      }
    };
    return {
      commit: () => finish('COMMIT'),
      abandon: () => finish('ROLLBACK').catch(() => {}),
    };
  }

  async forget(imageIds: readonly string[]): Promise<void> {
    if (imageIds.length === 0) return;
    await this.ctx.reads.settled();
    // Sorted, so that batches of several processes lock rows in the same order.
    await this.write(SQL.forget, [this.nodeId, [...imageIds].sort()]);
  }

  async writeReads(entries: Map<string, PendingAccess>): Promise<void> {
    if (this.pool === undefined) return; // closed while the batch waited
    const sorted = [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const updated = await this.write(SQL.addReads, [
      this.nodeId,
      sorted.map(([id]) => id),
      sorted.map(([, read]) => read.hits),
      sorted.map(([, read]) => read.lastAccessed),
    ]);
    if (updated.rowCount === sorted.length) return;
    const done = new Set(updated.rows.map((row: { image_id: string }) => row.image_id));
    // Written: should the insert below fail, only the rest may be kept for another try.
    for (const id of done) entries.delete(id);
    const unrecorded = sorted.filter(([id, read]) => !done.has(id) && id.length <= this.imageIdLimit && stillTheFileRead(this.ctx.files.imagePath(id), read));
    if (unrecorded.length === 0) return;
    await this.write(SQL.insertReads, [
      this.nodeId,
      unrecorded.map(([id]) => id),
      unrecorded.map(([, read]) => read.hits),
      unrecorded.map(([, read]) => read.lastAccessed),
      unrecorded.map(([, read]) => read.lastModified),
      unrecorded.map(([, read]) => read.size),
    ]);
  }

  async getHitCount(imageId: string): Promise<number> {
    const result = await this.use((pool) => pool.query<{ hits: number }>(SQL.hits, [this.nodeId, imageId]));
    return result.rows[0]?.hits ?? 0;
  }

  /**
   * The worker_self_reference_url of every node with a record of the image,
   * sorted. This node answers from its own directory, like the listings do;
   * the other nodes' files are out of sight, so their records are taken as
   * they are (each node's verify() keeps its own rows true).
   */
  async getCachedNodes(imageId: string): Promise<string[]> {
    const result = await this.use((pool) => pool.query<{ node_reference_id: string; node_reference_url: string }>(SQL.nodes, [imageId]));
    const urls = new Set(result.rows.filter((row) => row.node_reference_id !== this.nodeId).map((row) => row.node_reference_url));
    if (fs.existsSync(this.ctx.files.imagePath(imageId))) urls.add(this.nodeUrl);
    return [...urls].sort();
  }

  /** Who holds or fills what across the nodes, and the claims on upstream fetches (cluster/fill-directory.ts). */
  fillDirectory(): FillDirectory {
    this.db();
    return new CentralizedFillDirectory(
      (text, values, write) => (write ? this.write(text, values) : this.use((pool) => pool.query(text, values))),
      this.nodeId,
      this.nodeUrl,
    );
  }

  /** The worker_self_reference_url of every other node that ever registered (node_reference), sorted. */
  async getClusterNodes(): Promise<string[]> {
    const result = await this.use((pool) => pool.query<{ node_reference_url: string }>(SQL.allNodes, [this.nodeId]));
    return result.rows.map((row) => row.node_reference_url);
  }

  protected async loadRecords(order: 'any' | 'lru'): Promise<ImageRecord[]> {
    const result = await this.use((pool) => pool.query<ImageRecord>(SQL.all, [this.nodeId]));
    // BIGINT arrives as a string (it may exceed 2^53); an image size does not.
    for (const row of result.rows) row.size = Number(row.size);
    // No index serves last-access order here (one on it would make every hit
    // update a non-HOT update), so the node's rows are sorted here rather than
    // by the server: measured faster, and it spares the shared database the work.
    if (order === 'lru') result.rows.sort(byLastAccess);
    return result.rows;
  }

  protected async insertRecords(rows: readonly ImageRecord[]): Promise<number> {
    // A name too long for a table Glance created cannot be recorded; it is still listed, counted and pruned.
    const recordable = rows.filter((r) => r.image_id.length <= this.imageIdLimit);
    if (recordable.length === 0) return 0;
    const result = await this.write(SQL.adopt, [this.nodeId, recordable.map((r) => r.image_id), recordable.map((r) => r.last_modified), recordable.map((r) => r.size)]);
    return result.rowCount ?? 0;
  }

  protected async deleteRecords(rows: readonly ImageRecord[]): Promise<number> {
    const sorted = [...rows].sort(byId);
    const result = await this.write(SQL.deleteUnchanged, [this.nodeId, sorted.map((r) => r.image_id), sorted.map((r) => r.last_modified)]);
    return result.rowCount ?? 0;
  }

  protected async updateSizes(rows: readonly ImageRecord[]): Promise<number> {
    const sorted = [...rows].sort(byId);
    const result = await this.write(SQL.resizeUnchanged, [this.nodeId, sorted.map((r) => r.image_id), sorted.map((r) => r.last_modified), sorted.map((r) => r.size)]);
    return result.rowCount ?? 0;
  }

  /** Runs a write, again (after a jittered wait) when it lost a deadlock or serialization race. */
  private write(text: string, values: unknown[]): Promise<pg.QueryResult> {
    return withRetry(() => this.use((pool) => pool.query(text, values)), isRetryablePostgresError);
  }

  /**
   * Every use of PostgreSQL goes through here: a failure that says the server
   * is out of reach (isPostgresConnectionFailure), rather than that the
   * statement failed, becomes MetadataStoreUnavailable (the node answers 503
   * to what needs the store), and the recovery is told, so that what the
   * outage kept from being written is repaired once the server is back.
   */
  private async use<T>(operation: (pool: pg.Pool) => Promise<T>): Promise<T> {
    const pool = this.db();
    try {
      return await operation(pool);
    } catch (err) {
      if (!isPostgresConnectionFailure(err)) throw err;
      this.ctx.storeUnavailable();
      throw new MetadataStoreUnavailable(this.name, err as Error);
    }
  }

  private db(): pg.Pool {
    if (this.pool === undefined) throw new CacheNotConfigured('the centralized_db driver');
    return this.pool;
  }
}

/** An 'error' listener for a connection held between statements: the next statement reports the failure. */
function ignore(): void {}

/** Gives a connection held with `ignore` back to the pool (with the error that broke it, so that it is not reused). */
function releaseHeld(client: pg.PoolClient, err?: Error): void {
  client.off('error', ignore);
  client.release(err);
}

/**
 * BEGIN and the record's insert as one simple-protocol query, so that staging
 * costs one round trip instead of two (a parameterised statement cannot share
 * a query with BEGIN). The values are literals made safe here: the node ID is
 * the database's own bigint, the image ID is a validated ID (and escaped all
 * the same), time and size are finite numbers.
 *
 * A row already there is replaced, hits and all, when it is an earlier
 * copy's (left by a delete whose record removal failed). But it may be this
 * copy's own: the file is published without waiting for the record to be
 * staged, and reads of it that land first make its row (insertReads). Those
 * reads closed after the commit began (`now`), an earlier copy's before it
 * (its file was gone before this one could be claimed), so a row accessed
 * after `now` keeps its hits and last access.
 */
function beginRecord(client: pg.PoolClient, nodeId: string, imageId: string, now: number, size: number): string {
  if (!/^\d+$/.test(nodeId) || !Number.isFinite(now) || !Number.isSafeInteger(size)) {
    throw new MetadataWriteFailed('centralized_db', imageId, `refusing to build its record from an unexpected node ${nodeId}, time ${now} or size ${size}`);
  }
  const at = toTimestamp(String(now));
  return `BEGIN; SET LOCAL synchronous_commit = off;
    INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id)
    VALUES (${client.escapeLiteral(imageId)}, ${at}, ${at}, ${size}, 0, NULL, ${nodeId})
    ON CONFLICT (image_id, node_reference_id) DO UPDATE
    SET last_accessed = GREATEST(cached_images.last_accessed, EXCLUDED.last_accessed), last_modified = EXCLUDED.last_modified, size = EXCLUDED.size,
        hits = CASE WHEN cached_images.last_accessed > EXCLUDED.last_modified THEN cached_images.hits ELSE 0 END, checksum = NULL`;
}

/**
 * The tables, created if missing. When they are all there (the usual case: an
 * earlier node, or Glance's own `glance-manage db sync`, made them) nothing is
 * locked or created, so a database user without CREATE rights can still run
 * nodes; without the right to add our index to Glance's tables, they run
 * without it.
 */
async function ensureSchema(client: pg.PoolClient, log: Logger): Promise<void> {
  // Our own (the index, the fill directory's tables) are "index" here: without them the node still runs, as Glance's do.
  const ours = FILL_DIRECTORY_TABLES.map((table) => `AND to_regclass('${table}') IS NOT NULL`).join(' ');
  const present = await client.query<{ tables: boolean; index: boolean }>(
    `SELECT to_regclass('node_reference') IS NOT NULL AND to_regclass('cached_images') IS NOT NULL AS tables,
            to_regclass('cached_images_node_reference_id_idx') IS NOT NULL ${ours} AS index`,
  );
  const { tables, index } = present.rows[0] ?? { tables: false, index: false };
  if (tables && index) return;
  const create = async (): Promise<void> => {
    try {
      await client.query('BEGIN');
      await client.query(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`);
      await client.query(SCHEMA);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  };
  try {
    await withRetry(create, isRetryablePostgresError);
  } catch (err) {
    if (!tables) throw err;
    log.warn({ driver: 'centralized_db', err }, 'could not add our index on cached_images (node_reference_id) or the fill directory\'s tables; per-node queries will scan the table, and nodes will not fill from each other');
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
      'database_connection is not set: it must be a PostgreSQL URL such as postgresql://glance:secret@db.example.com:5432/glance (option database_connection, or the IMAGE_CACHE_DATABASE_CONNECTION environment variable)',
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

/** The URL without its password, for messages and logs. */
function redact(url: string): string {
  return url.replace(/^(postgresql:\/\/[^/@:]*):[^/@]*@/, '$1:***@');
}
