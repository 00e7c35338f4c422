import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { BadDriverConfiguration } from '../errors.js';
import type { CacheEntry, CachedImage } from '../types.js';
import { AccessBatch, type PendingAccess } from './access-batch.js';
import { Driver } from './driver.js';
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

interface Row {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

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
export class SqliteDriver extends Driver {
  readonly name = 'sqlite' as const;
  private db: Database.Database | undefined;
  private reserved: ReadonlySet<string> = new Set();
  private statements: ReturnType<SqliteDriver['prepare']> | undefined;
  private readonly reads = new AccessBatch((entries) => this.writeReads(entries));

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
      adoptMany: db.transaction((rows: readonly Row[]) => {
        for (const row of rows) adopt.run(row.image_id, row.last_accessed, row.last_modified, row.size);
      }),
      forgetMany: db.transaction((ids: readonly string[]) => {
        for (const id of ids) forget.run(id);
      }),
      applyAccesses: db.transaction((entries: Array<[string, PendingAccess]>) => {
        for (const [id, access] of entries) recordAccess.run(access.hits, access.lastAccessed, id);
      }),
      all: db.prepare<[], Row>('SELECT image_id, hits, last_accessed, last_modified, size FROM cached_images ORDER BY image_id'),
      byAccess: db.prepare<[], Row>('SELECT image_id, hits, last_accessed, last_modified, size FROM cached_images ORDER BY last_accessed'),
      hits: db.prepare<[string], Pick<Row, 'hits'>>('SELECT hits FROM cached_images WHERE image_id = ?'),
    };
  }

  protected async closeMetadataStore(): Promise<void> {
    const db = this.db;
    if (db === undefined) return;
    this.reads.flush();
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

  async getCachedImages(): Promise<CachedImage[]> {
    this.reads.flush();
    const rows = await this.reconciled(this.sql().all.all());
    rows.sort((a, b) => (a.image_id < b.image_id ? -1 : a.image_id > b.image_id ? 1 : 0));
    return rows.map((row) => ({
      imageId: row.image_id,
      hits: row.hits,
      lastModified: row.last_modified,
      lastAccessed: row.last_accessed,
      size: row.size,
    }));
  }

  async getCacheSize(): Promise<number> {
    let total = 0;
    for (const row of await this.reconciled(this.sql().all.all())) total += row.size;
    return total;
  }

  async getHitCount(imageId: string): Promise<number> {
    this.validate(imageId);
    if (!(await this.isCached(imageId))) return 0;
    this.reads.flush();
    return this.sql().hits.get(imageId)?.hits ?? 0;
  }

  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> {
    this.reads.flush();
    const rows = await this.reconciled(this.sql().byAccess.all());
    rows.sort((a, b) => a.last_accessed - b.last_accessed);
    return rows.map((row) => ({ imageId: row.image_id, size: row.size }));
  }

  /**
   * The rows whose active file exists, plus a row for every active file that
   * has none. Files vanish behind our back (an operator, another tool), and
   * files appear without a record (Glance renames before it records, so a
   * crash in between leaves one; a directory switched from the xattr driver
   * has no records at all): those are recorded here from what stat() says,
   * with their mtime as last access, so they are listed, counted and pruned.
   */
  private async reconciled(rows: Row[]): Promise<Row[]> {
    const present = await this.activeImageIds();
    const kept = rows.filter((row) => present.delete(row.image_id));
    if (present.size === 0) return kept;
    const adopted: Row[] = [];
    for (const id of present) {
      const st = fs.statSync(this.getImageFilepath(id), { throwIfNoEntry: false });
      if (st === undefined || !st.isFile()) continue;
      const time = st.mtimeMs / 1000;
      adopted.push({ image_id: id, hits: 0, last_accessed: time, last_modified: time, size: st.size });
    }
    this.sql().adoptMany.immediate(adopted);
    this.log.warn({ driver: this.name, adopted: adopted.length }, 'recorded cached image files that had no record');
    return kept.concat(adopted);
  }

  private sql(): NonNullable<SqliteDriver['statements']> {
    if (this.statements === undefined) throw new Error('the sqlite driver is not configured (call configure() first)');
    return this.statements;
  }
}
