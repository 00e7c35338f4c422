import path from 'node:path';
import Database from 'better-sqlite3';
import type { CommitMetadata } from '../content/writer.js';
import { BadDriverConfiguration, CacheNotConfigured } from '../errors.js';
import { stillTheFileRead, type PendingAccess } from './access-batch.js';
import { RecordIndex, type ImageRecord } from './record-index.js';

/**
 * Glance's table, column for column, so either side can read the other's
 * cache.db, plus one index of ours, named after the query it serves: prune's
 * walk in last-access order (listLeastRecentlyAccessed), covering, so that
 * walk reads the index alone. The earlier index on last_accessed alone served
 * no query as written and is dropped.
 */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS cached_images (
    image_id TEXT PRIMARY KEY,
    last_accessed REAL DEFAULT 0.0,
    last_modified REAL DEFAULT 0.0,
    size INTEGER DEFAULT 0,
    hits INTEGER DEFAULT 0,
    checksum TEXT
  );
  DROP INDEX IF EXISTS cached_images_last_accessed_idx;
  CREATE INDEX IF NOT EXISTS cached_images_lru_order ON cached_images (last_accessed, image_id, size);
`;

/** Prune's walk, least recently accessed first; hits are not needed to evict. Served by cached_images_lru_order alone. */
export const LRU_ORDER_QUERY = 'SELECT image_id, 0 AS hits, last_accessed, 0 AS last_modified, size FROM cached_images ORDER BY last_accessed, image_id';

/** WAL pages (4 KiB) between automatic checkpoints. */
const WAL_AUTOCHECKPOINT_PAGES = 10_000;

/** How long a statement waits on a database another process holds, in ms. */
const BUSY_TIMEOUT_MS = 10_000;

/**
 * The embedded default driver's index: metadata in <image_cache_dir>/cache.db,
 * and every statement it runs, here.
 *
 * WAL while open (readers never block the writer, commits need no fsync at
 * synchronous=NORMAL); on close the database goes back to a rollback journal
 * when no other process has it open, because Glance's driver counts every
 * other file in the directory, cache.db-wal included, as a cached image.
 */
export class SqliteIndex extends RecordIndex {
  readonly name = 'sqlite' as const;
  private db: Database.Database | undefined;
  private statements: ReturnType<SqliteIndex['prepare']> | undefined;

  get dbPath(): string {
    return path.join(this.ctx.files.baseDir, this.ctx.options.imageCacheSqliteDb);
  }

  async open(): Promise<void> {
    try {
      const db = new Database(this.dbPath, { timeout: BUSY_TIMEOUT_MS });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      // A checkpoint fsyncs the WAL and the database on the committing
      // connection, blocking the event loop, and every commit writes a few
      // pages: checkpointing ten times less often than the default amortises
      // that to near nothing per cached image.
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
    const addHits = db.prepare<[number, number, string]>(
      'UPDATE cached_images SET hits = hits + ?, last_accessed = max(last_accessed, ?) WHERE image_id = ?',
    );
    const insertRead = db.prepare<[string, number, number, number, number]>(
      'INSERT OR IGNORE INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, ?, ?, ?, ?)',
    );
    const forget = db.prepare<[string]>('DELETE FROM cached_images WHERE image_id = ?');
    const deleteUnchanged = db.prepare<[string, number]>('DELETE FROM cached_images WHERE image_id = ? AND last_modified = ?');
    const resizeUnchanged = db.prepare<[number, string, number]>('UPDATE cached_images SET size = ? WHERE image_id = ? AND last_modified = ?');
    const count = <T>(run: (row: T) => Database.RunResult) => db.transaction((rows: readonly T[]) => {
      let changed = 0;
      for (const row of rows) changed += run(row).changes;
      return changed;
    });
    return {
      record: db.prepare<[string, number, number, number]>(
        'INSERT OR REPLACE INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, ?, ?, ?, 0)',
      ),
      forget,
      deleteUnchanged,
      forgetMany: count((id: string) => forget.run(id)),
      insertMany: count((r: ImageRecord) => insertRead.run(r.image_id, r.last_accessed, r.last_modified, r.size, r.hits)),
      deleteMany: count((r: ImageRecord) => deleteUnchanged.run(r.image_id, r.last_modified)),
      resizeMany: count((r: ImageRecord) => resizeUnchanged.run(r.size, r.image_id, r.last_modified)),
      // An image read before it had a record (a file Glance or a crash left) gets one, if the file read is still the image.
      applyReads: db.transaction((entries: Map<string, PendingAccess>) => {
        for (const [id, read] of entries) {
          if (addHits.run(read.hits, read.lastAccessed, id).changes === 0 && stillTheFileRead(this.ctx.files.imagePath(id), read)) {
            insertRead.run(id, read.lastAccessed, read.lastModified, read.size, read.hits);
          }
        }
      }),
      all: db.prepare<[], ImageRecord>('SELECT image_id, hits, last_accessed, last_modified, size FROM cached_images'),
      lru: db.prepare<[], ImageRecord>(LRU_ORDER_QUERY),
      hits: db.prepare<[string], Pick<ImageRecord, 'hits'>>('SELECT hits FROM cached_images WHERE image_id = ?'),
    };
  }

  async close(): Promise<void> {
    const db = this.db;
    if (db === undefined) return;
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

  commitMetadata(imageId: string): CommitMetadata {
    return {
      beforePublish: () => {},
      // One local insert, cheaper than staging: written once the file is published.
      record: (size, now) => ({
        commit: () => {
          // Reads of an earlier copy of this image must not count toward the new one.
          this.ctx.reads.forget(imageId);
          this.sql().record.run(imageId, now, now, size);
        },
        abandon: () => {},
      }),
      unrecord: (now) => {
        this.sql().deleteUnchanged.run(imageId, now);
      },
    };
  }

  forget(imageIds: readonly string[]): void {
    if (imageIds.length === 1) this.sql().forget.run(imageIds[0]!);
    else if (imageIds.length > 1) this.sql().forgetMany.immediate(imageIds);
  }

  writeReads(entries: Map<string, PendingAccess>): void {
    // The database may have been closed while the batch waited (close() writes it first; this is the rest).
    if (this.statements === undefined) return;
    this.sql().applyReads.immediate(entries);
  }

  async getHitCount(imageId: string): Promise<number> {
    return this.sql().hits.get(imageId)?.hits ?? 0;
  }

  protected loadRecords(order: 'any' | 'lru'): ImageRecord[] {
    return order === 'lru' ? this.sql().lru.all() : this.sql().all.all();
  }

  protected insertRecords(rows: readonly ImageRecord[]): number {
    return this.sql().insertMany.immediate(rows);
  }

  protected deleteRecords(rows: readonly ImageRecord[]): number {
    return this.sql().deleteMany.immediate(rows);
  }

  protected updateSizes(rows: readonly ImageRecord[]): number {
    return this.sql().resizeMany.immediate(rows);
  }

  private sql(): NonNullable<SqliteIndex['statements']> {
    if (this.statements === undefined) throw new CacheNotConfigured('the sqlite driver');
    return this.statements;
  }
}
