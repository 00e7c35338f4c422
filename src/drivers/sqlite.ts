import path from 'node:path';
import Database from 'better-sqlite3';
import { BadDriverConfiguration } from '../errors.js';
import { AccessBatch, type PendingAccess } from './access-batch.js';
import { RecordStoreDriver, type ImageRecord } from './record-store-driver.js';
import { sqliteFileNames } from './sqlite-files.js';

/** Glance's table, column for column, so either side can read the other's cache.db. */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS cached_images (
    image_id TEXT PRIMARY KEY,
    last_accessed REAL DEFAULT 0.0,
    last_modified REAL DEFAULT 0.0,
    size INTEGER DEFAULT 0,
    hits INTEGER DEFAULT 0,
    checksum TEXT
  );
  CREATE INDEX IF NOT EXISTS cached_images_last_accessed_idx ON cached_images (last_accessed);
`;

/** WAL pages (4 KiB) between automatic checkpoints. */
const WAL_AUTOCHECKPOINT_PAGES = 10_000;

/** How long a statement waits on a database another process holds, in ms. */
const BUSY_TIMEOUT_MS = 10_000;


/**
 * The embedded default driver: metadata in <image_cache_dir>/cache.db.
 *
 * WAL while open (readers never block the writer, commits need no fsync at
 * synchronous=NORMAL); on close the database goes back to a rollback journal
 * when no other process has it open, because Glance's driver counts every
 * other file in the directory, cache.db-wal included, as a cached image.
 *
 * Reads are recorded in memory and written in one transaction per turn of
 * the event loop; every query flushes them first.
 */
export class SqliteDriver extends RecordStoreDriver {
  readonly name = 'sqlite' as const;
  private db: Database.Database | undefined;
  private reserved: ReadonlySet<string> = new Set();
  private statements: ReturnType<SqliteDriver['prepare']> | undefined;
  private readonly reads = new AccessBatch(() => this.flushReads());

  get dbPath(): string {
    return path.join(this.baseDir, this.options.imageCacheSqliteDb);
  }

  protected override reservedNames(): ReadonlySet<string> {
    return this.reserved;
  }

  protected async openMetadataStore(): Promise<void> {
    this.reserved = sqliteFileNames(this.options.imageCacheSqliteDb);
    try {
      const db = new Database(this.dbPath, { timeout: BUSY_TIMEOUT_MS });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      // A checkpoint fsyncs the WAL and the database on the committing
      // connection, blocking the event loop. Every commit writes ~3 pages, so
      // the default (every 1000 pages) cost ~0.13 ms per cached image here;
      // checkpointing ten times less often amortises that to near nothing.
      db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT_PAGES}`);
      db.exec(SCHEMA);
      this.db = db;
      this.statements = this.prepare(db);
    } catch (err) {
      this.db?.close();
      this.db = undefined;
      throw new BadDriverConfiguration('sqlite', `cannot use the cache database ${this.dbPath}: ${(err as Error).message}`, { cause: err });
    }
  }

  private prepare(db: Database.Database) {
    const recordAccess = db.prepare<[number, number, string]>(
      'UPDATE cached_images SET hits = hits + ?, last_accessed = max(last_accessed, ?) WHERE image_id = ?',
    );
    const forget = db.prepare<[string]>('DELETE FROM cached_images WHERE image_id = ?');
    const adopt = db.prepare<[string, number, number, number]>(
      'INSERT OR IGNORE INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, ?, ?, ?, 0)',
    );
    return {
      insert: db.prepare<[string, number, number, number]>(
        'INSERT OR REPLACE INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, ?, ?, ?, 0)',
      ),
      forget,
      adoptMany: db.transaction((rows: readonly ImageRecord[]) => {
        for (const row of rows) adopt.run(row.image_id, row.last_accessed, row.last_modified, row.size);
      }),
      forgetMany: db.transaction((ids: readonly string[]) => {
        for (const id of ids) forget.run(id);
      }),
      applyAccesses: db.transaction((entries: Array<[string, PendingAccess]>) => {
        for (const [id, access] of entries) recordAccess.run(access.hits, access.lastAccessed, id);
      }),
      all: db.prepare<[], ImageRecord>('SELECT image_id, hits, last_accessed, last_modified, size FROM cached_images'),
      hits: db.prepare<[string], Pick<ImageRecord, 'hits'>>('SELECT hits FROM cached_images WHERE image_id = ?'),
    };
  }

  protected async closeMetadataStore(): Promise<void> {
    const db = this.db;
    if (db === undefined) return;
    this.flushReads();
    this.db = undefined;
    this.statements = undefined;
    try {
      // Only succeeds when we are the last connection; otherwise the last one out does it.
      db.pragma('busy_timeout = 0');
      db.pragma('journal_mode = DELETE');
    } catch {
      // another process still has the database open in WAL mode
    }
    db.close();
  }

  protected recordCachedImage(imageId: string, size: number, now: number): void {
    this.reads.forget(imageId);
    this.sql().insert.run(imageId, now, now, size);
  }

  protected forgetCachedImages(imageIds: readonly string[]): void {
    for (const id of imageIds) this.reads.forget(id);
    if (imageIds.length === 1) this.sql().forget.run(imageIds[0]!);
    else if (imageIds.length > 1) this.sql().forgetMany.immediate(imageIds);
  }

  protected recordAccess(imageId: string, now: number): void {
    if (this.db === undefined) return; // closed while a read was still open
    this.reads.add(imageId, now);
  }

  /** Writes recorded reads, in one transaction. */
  private writeReads(entries: Map<string, PendingAccess>): void {
    try {
      this.sql().applyAccesses.immediate([...entries]);
    } catch (err) {
      this.log.error({ driver: this.name, err, images: entries.size }, 'could not record image reads');
    }
  }

  async getHitCount(imageId: string): Promise<number> {
    this.validate(imageId);
    if (!(await this.isCached(imageId))) return 0;
    this.flushReads();
    return this.sql().hits.get(imageId)?.hits ?? 0;
  }

  /** Writes the reads recorded so far. */
  protected flushReads(): void {
    const entries = this.reads.take();
    if (entries !== undefined) this.writeReads(entries);
  }

  protected loadRecords(): ImageRecord[] {
    return this.sql().all.all();
  }

  protected adoptRecords(found: ImageRecord[]): ImageRecord[] {
    this.sql().adoptMany.immediate(found);
    return found;
  }

  private sql(): NonNullable<SqliteDriver['statements']> {
    if (this.statements === undefined) throw new Error('the sqlite driver is not configured (call configure() first)');
    return this.statements;
  }
}
