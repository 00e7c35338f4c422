import fs from 'node:fs';
import type { DriverName } from '../config.js';
import type { CommitMetadata } from '../content/writer.js';
import type { CacheEntry, CachedImage } from '../types.js';
import type { PendingAccess } from './access-batch.js';
import type { IndexContext, MetadataIndex, MetadataRepairs } from './metadata-index.js';

/** One image's record, as the sqlite and centralized_db drivers store it (Glance's columns). */
export interface ImageRecord {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

/** The records as they stand against the files, computed by reading only. */
interface Reconciliation {
  /** Records whose active file is there. */
  recorded: ImageRecord[];
  /** Active files without a record, described from their stat (hits 0, mtime as both times). */
  unrecorded: ImageRecord[];
  /** Records whose file is gone. */
  missing: ImageRecord[];
}

/** Image ID order (code units, as SQLite's BINARY collation and Glance's listings). */
export const byId = (a: ImageRecord, b: ImageRecord): number => (a.image_id < b.image_id ? -1 : a.image_id > b.image_id ? 1 : 0);
/** Prune's order: least recently accessed first, then by image ID. */
export const byLastAccess = (a: ImageRecord, b: ImageRecord): number => a.last_accessed - b.last_accessed || byId(a, b);

/**
 * An index that keeps a record per image in a database (sqlite, centralized_db).
 *
 * Records and files can disagree: files vanish behind our back (an operator,
 * another tool), and files appear without a record (Glance renames before it
 * records, and so do we: a crash in between leaves one; a directory switched
 * from another driver has no records at all). Listings show the truth without
 * writing anything: a record without its file is not reported, a file without
 * a record is reported from its stat. verify() is what writes the repair.
 *
 * A record must describe the copy of the image that is there now, so none may
 * outlive its copy: a commit withdraws its record if the image was deleted
 * before the record landed, and a read creates a record only if the file it
 * read is still the image. Sizes are therefore taken from the records, which
 * spares a stat per image on every listing; a file rewritten by a process
 * outside the cache shows its recorded size until verify() corrects it.
 */
export abstract class RecordIndex implements MetadataIndex {
  abstract readonly name: DriverName;

  constructor(protected readonly ctx: IndexContext) {}

  abstract open(): Promise<void>;
  abstract close(): Promise<void>;
  abstract commitMetadata(imageId: string): CommitMetadata;
  abstract forget(imageIds: readonly string[]): Promise<void> | void;
  abstract writeReads(entries: Map<string, PendingAccess>): Promise<void> | void;
  abstract getHitCount(imageId: string): Promise<number>;

  checkWritable(_imageId: string): void {}

  /** This node's records; with 'lru', in the order prune evicts (byLastAccess). */
  protected abstract loadRecords(order: 'any' | 'lru'): ImageRecord[] | Promise<ImageRecord[]>;
  /** Inserts records for files that have none, skipping any recorded meanwhile; returns how many were inserted. */
  protected abstract insertRecords(rows: readonly ImageRecord[]): number | Promise<number>;
  /** Deletes these records, each only if it is unchanged since it was read (same last_modified); returns how many. */
  protected abstract deleteRecords(rows: readonly ImageRecord[]): number | Promise<number>;
  /** Sets these records' sizes, each only if it is unchanged since it was read; returns how many. */
  protected abstract updateSizes(rows: readonly ImageRecord[]): number | Promise<number>;

  async getCachedImages(): Promise<CachedImage[]> {
    const { recorded, unrecorded } = await this.reconcile('any');
    return recorded.concat(unrecorded).sort(byId).map((r) => ({
      imageId: r.image_id,
      hits: r.hits,
      lastModified: r.last_modified,
      lastAccessed: r.last_accessed,
      size: r.size,
    }));
  }

  async getCacheSize(): Promise<number> {
    const { recorded, unrecorded } = await this.reconcile('any');
    let total = 0;
    for (const record of recorded) total += record.size;
    for (const record of unrecorded) total += record.size;
    return total;
  }

  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> {
    const { recorded, unrecorded } = await this.reconcile('lru');
    // recorded comes in LRU order from the store; merge in the few unrecorded files.
    const merged = mergeSorted(recorded, unrecorded.sort(byLastAccess), byLastAccess);
    return merged.map((r) => ({ imageId: r.image_id, size: r.size }));
  }

  async repair(): Promise<MetadataRepairs> {
    const { recorded, unrecorded, missing } = await this.reconcile('any');
    const recordsDropped = missing.length === 0 ? 0 : await this.deleteRecords(missing);
    const filesAdopted = unrecorded.length === 0 ? 0 : await this.insertRecords(unrecorded);
    const wrongSize: ImageRecord[] = [];
    for (const record of recorded) {
      const st = fileStat(this.ctx.files.imagePath(record.image_id));
      if (st !== undefined && st.size !== record.size) wrongSize.push({ ...record, size: st.size });
    }
    const sizesCorrected = wrongSize.length === 0 ? 0 : await this.updateSizes(wrongSize);
    return { recordsDropped, filesAdopted, sizesCorrected };
  }

  /**
   * Records first, then the directory: a commit publishes its file before it
   * records it, so a record read here always has its file in the listing that
   * follows unless the file really went.
   */
  private async reconcile(order: 'any' | 'lru'): Promise<Reconciliation> {
    const records = await this.loadRecords(order);
    const present = await this.ctx.files.activeImageIds();
    const recorded: ImageRecord[] = [];
    const missing: ImageRecord[] = [];
    for (const record of records) (present.delete(record.image_id) ? recorded : missing).push(record);
    const unrecorded: ImageRecord[] = [];
    for (const id of present) {
      const st = fileStat(this.ctx.files.imagePath(id));
      if (st === undefined) continue;
      // To the microsecond, as the stores keep times, so that adopting the file changes nothing a listing shows.
      const time = Math.round(st.mtimeMs * 1000) / 1e6;
      unrecorded.push({ image_id: id, hits: 0, last_accessed: time, last_modified: time, size: st.size });
    }
    return { recorded, unrecorded, missing };
  }
}

/** The stat of a regular file at `filePath`, or undefined (gone, or not a file). */
function fileStat(filePath: string): fs.Stats | undefined {
  const st = fs.statSync(filePath, { throwIfNoEntry: false });
  return st !== undefined && st.isFile() ? st : undefined;
}

function mergeSorted<T>(a: readonly T[], b: readonly T[], compare: (x: T, y: T) => number): T[] {
  if (b.length === 0) return a as T[];
  const out: T[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(compare(a[i]!, b[j]!) <= 0 ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
}
