import fs from 'node:fs';
import type { CacheEntry, CachedImage } from '../types.js';
import { Driver } from './driver.js';

/** One image's record, as the sqlite and centralized_db drivers store it (Glance's columns). */
export interface ImageRecord {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

const byId = (a: ImageRecord, b: ImageRecord): number => (a.image_id < b.image_id ? -1 : a.image_id > b.image_id ? 1 : 0);

/**
 * A driver that keeps a record per image in a database (sqlite, centralized_db).
 * Records and files are reconciled on every listing: files vanish behind our
 * back (an operator, another tool), and files appear without a record (Glance
 * renames before it records, so a crash in between leaves one; a directory
 * switched from another driver has no records at all). A record without its
 * file is not reported; a file without a record is recorded from what stat()
 * says, with its mtime as last access, so that it is listed, counted and pruned.
 */
export abstract class RecordStoreDriver extends Driver {
  /** Writes reads recorded but not yet stored, so that queries include them. */
  protected abstract flushReads(): void | Promise<void>;
  /** This node's records, in any order. */
  protected abstract loadRecords(): ImageRecord[] | Promise<ImageRecord[]>;
  /** Stores records for files found without one; returns the records as now stored (or as listed, if they cannot be). */
  protected abstract adoptRecords(found: ImageRecord[]): ImageRecord[] | Promise<ImageRecord[]>;

  async getCachedImages(): Promise<CachedImage[]> {
    await this.flushReads();
    const records = (await this.reconciledRecords()).sort(byId);
    return records.map((r) => ({ imageId: r.image_id, hits: r.hits, lastModified: r.last_modified, lastAccessed: r.last_accessed, size: r.size }));
  }

  async getCacheSize(): Promise<number> {
    let total = 0;
    for (const record of await this.reconciledRecords()) total += record.size;
    return total;
  }

  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> {
    await this.flushReads();
    const records = (await this.reconciledRecords()).sort((a, b) => a.last_accessed - b.last_accessed || byId(a, b));
    return records.map((r) => ({ imageId: r.image_id, size: r.size }));
  }

  private async reconciledRecords(): Promise<ImageRecord[]> {
    const records = await this.loadRecords();
    const present = await this.activeImageIds();
    const kept = records.filter((record) => present.delete(record.image_id));
    if (present.size === 0) return kept;
    const found: ImageRecord[] = [];
    for (const id of present) {
      const st = fs.statSync(this.getImageFilepath(id), { throwIfNoEntry: false });
      if (st === undefined || !st.isFile()) continue;
      const time = st.mtimeMs / 1000;
      found.push({ image_id: id, hits: 0, last_accessed: time, last_modified: time, size: st.size });
    }
    const adopted = await this.adoptRecords(found);
    this.log.warn({ driver: this.name, adopted: adopted.length }, 'recorded cached image files that had no record');
    return kept.concat(adopted);
  }
}
