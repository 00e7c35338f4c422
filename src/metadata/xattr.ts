import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getAttributeSync, setAttributeSync } from '@napi-rs/xattr';
import type { CommitMetadata } from '../content/writer.js';
import { BadDriverConfiguration, MetadataWriteFailed } from '../errors.js';
import { errorCode } from '../fs/files.js';
import type { CacheEntry, CachedImage } from '../types.js';
import { stillTheFileRead, type PendingAccess } from './access-batch.js';
import type { IndexContext, MetadataIndex, MetadataRepairs } from './metadata-index.js';

/** Glance's attribute: the hit count as str(int), e.g. "3". */
const HITS = 'user.hits';
/** Ours: the last access in epoch seconds as a decimal string. Glance neither writes nor reads it. */
const LAST_ACCESSED = 'user.last_accessed';

/**
 * Files examined between yields to the event loop while scanning: a stat and
 * two getxattr calls take some 40 µs (measured on ext4), so a slice blocks for
 * about 20 ms, and a scan of 100,000 images does not stall every other request
 * for four seconds at a stretch.
 */
const SCAN_SLICE = 500;

const { ENOENT, ENOTSUP, EOPNOTSUPP } = os.constants.errno;

/**
 * No database: an image's metadata lives on its active file, so it is created,
 * renamed and deleted with it and there is nothing to reconcile.
 *
 * - hits: `user.hits`, written as Glance writes it (str(int)), so Glance's
 *   xattr driver reads the counts of a directory we wrote and we read its.
 * - last access: our own `user.last_accessed`; on a file Glance wrote (which
 *   has none) the file's atime, which is what Glance itself goes by.
 * - last modified: the mtime; size: the file size.
 *
 * Listing, sizing and pruning are one readdir, then one stat (and the
 * attributes needed) per file, then one sort; Glance rescans the directory
 * for every image it evicts.
 *
 * Reads are recorded in memory and written once per turn of the event loop;
 * every query flushes them first, so concurrent reads in this process never
 * lose an increment. Across processes the increment is a read-modify-write of
 * the attribute, as in Glance's inc_xattr, and two processes flushing the same
 * image at the same moment can lose one hit: hits are statistics, and a lock
 * per read would cost more than they are worth.
 */
export class XattrIndex implements MetadataIndex {
  readonly name = 'xattr' as const;

  constructor(private readonly ctx: IndexContext) {}

  async open(): Promise<void> {
    this.probeUserAttributes();
  }

  /**
   * Sets a user attribute on a scratch file, as Glance's configure() does, so
   * that a file system without user xattrs is reported now rather than by the
   * first commit. The probe's name is not a valid image ID, so that one left
   * behind by a crash is never listed or pruned as an image.
   */
  private probeUserAttributes(): void {
    const dir = this.ctx.files.baseDir;
    const probe = path.join(dir, `.xattr-probe@${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      fs.writeFileSync(probe, '', { flag: 'wx' });
    } catch (err) {
      throw new BadDriverConfiguration('xattr', `cannot create a probe file in the cache directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
    try {
      try {
        setAttributeSync(probe, HITS, '1');
      } catch (err) {
        const errno = osErrno(err);
        if (errno === EOPNOTSUPP || errno === ENOTSUP) {
          throw new BadDriverConfiguration('xattr', `the file system holding the cache directory ${dir} does not support user extended attributes; ` +
            'mount it with the user_xattr option (in /etc/fstab) or use another image_cache_driver', { cause: err });
        }
        throw new BadDriverConfiguration('xattr', `cannot set the extended attribute ${HITS} in the cache directory ${dir}: ${(err as Error).message}`, { cause: err });
      }
      if (getAttributeSync(probe, HITS)?.toString('utf8') !== '1') {
        throw new BadDriverConfiguration('xattr', `the file system holding the cache directory ${dir} does not keep user extended attributes; ` +
          'mount it with the user_xattr option (in /etc/fstab) or use another image_cache_driver');
      }
    } finally {
      try {
        fs.unlinkSync(probe);
      } catch (err) {
        this.ctx.log.warn({ driver: this.name, err, probe }, 'could not remove the extended attribute probe file');
      }
    }
  }

  async close(): Promise<void> {}

  checkWritable(_imageId: string): void {}

  /**
   * The attributes go on incomplete/<id>, before the rename, so that the
   * active file never exists without them (Glance's inc_xattr fails on a file
   * without user.hits). The directory fsync that follows the rename commits
   * them along with it on journalling file systems (ext4, XFS).
   */
  commitMetadata(imageId: string): CommitMetadata {
    return {
      beforePublish: (file, now) => {
        this.ctx.reads.forget(imageId);
        try {
          setAttributeSync(file, HITS, '0');
          setAttributeSync(file, LAST_ACCESSED, String(now));
        } catch (err) {
          throw new MetadataWriteFailed(this.name, imageId, `cannot set the extended attributes of ${file}: ${(err as Error).message}`, { cause: err });
        }
      },
      // The attributes are on the file: gone with it.
      record: () => ({ commit: () => {}, abandon: () => {} }),
      unrecord: () => {},
    };
  }

  /** The attributes went with the files: nothing to forget. */
  forget(_imageIds: readonly string[]): void {}

  /**
   * Files without user.hits (copied in, or committed by a Glance that crashed
   * before setting it) get a count of 0 and their atime as last access, so
   * that Glance's inc_xattr works on them. There are no records to drop and
   * no recorded sizes here: both live on the file itself.
   */
  async repair(): Promise<MetadataRepairs> {
    let filesAdopted = 0;
    await this.forEachActiveImage((_id, file) => {
      try {
        if (getAttributeSync(file, HITS) === null) {
          const st = fs.statSync(file);
          setAttributeSync(file, HITS, '0');
          if (getAttributeSync(file, LAST_ACCESSED) === null) setAttributeSync(file, LAST_ACCESSED, String(st.atimeMs / 1000));
          filesAdopted++;
        }
      } catch (err) {
        if (osErrno(err) !== ENOENT && errorCode(err) !== 'ENOENT') throw err; // deleted meanwhile
      }
    });
    return { recordsDropped: 0, filesAdopted, sizesCorrected: 0 };
  }

  /** Writes recorded reads to the files' attributes. */
  writeReads(entries: Map<string, PendingAccess>): void {
    let failed = 0;
    let lastError: unknown;
    for (const [id, access] of entries) {
      const file = this.ctx.files.imagePath(id);
      // A read of an earlier copy (deleted, or pruned, and cached again since) counts for nothing.
      if (!stillTheFileRead(file, access)) continue;
      try {
        // A missing or unreadable count (a file Glance committed without one) starts from 0.
        const hits = parseHits(getAttributeSync(file, HITS)) + access.hits;
        setAttributeSync(file, HITS, String(hits));
        setAttributeSync(file, LAST_ACCESSED, String(access.lastAccessed));
      } catch (err) {
        if (osErrno(err) === ENOENT) continue; // deleted or pruned since it was read
        failed++;
        lastError = err;
      }
    }
    if (failed > 0) this.ctx.log.error({ driver: this.name, err: lastError, images: failed }, 'could not record image reads');
  }

  async getCachedImages(): Promise<CachedImage[]> {
    const images = await this.scan(true);
    images.sort((a, b) => (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0));
    return images;
  }

  async getCacheSize(): Promise<number> {
    let total = 0;
    await this.forEachActiveImage((_id, file) => {
      const st = fs.statSync(file, { throwIfNoEntry: false });
      if (st !== undefined && st.isFile()) total += st.size;
    });
    return total;
  }

  async getHitCount(imageId: string): Promise<number> {
    // null when the file has no count (or is gone meanwhile): 0, as Glance says.
    return parseHits(getAttributeSync(this.ctx.files.imagePath(imageId), HITS));
  }

  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> {
    const images = await this.scan(false);
    images.sort((a, b) => a.lastAccessed - b.lastAccessed || (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0));
    return images.map((image) => ({ imageId: image.imageId, size: image.size }));
  }

  /**
   * Every active image, read from its file: one readdir, then per file one
   * stat and its attributes, once. A file without attributes (Glance crashed,
   * or an operator copied it in) is listed with 0 hits and its atime as last
   * access, so that it is counted and pruned like any other. `withHits` false
   * skips reading the counts, which ordering by last access does not need.
   */
  private async scan(withHits: boolean): Promise<CachedImage[]> {
    const images: CachedImage[] = [];
    await this.forEachActiveImage((id, file) => {
      const st = fs.statSync(file, { throwIfNoEntry: false });
      if (st === undefined || !st.isFile()) return;
      images.push({
        imageId: id,
        hits: withHits ? parseHits(getAttributeSync(file, HITS)) : 0,
        lastModified: st.mtimeMs / 1000,
        lastAccessed: parseSeconds(getAttributeSync(file, LAST_ACCESSED)) ?? st.atimeMs / 1000,
        size: st.size,
      });
    });
    return images;
  }

  /** Calls `visit` for each active image, yielding to the event loop every SCAN_SLICE files. */
  private async forEachActiveImage(visit: (imageId: string, file: string) => void): Promise<void> {
    let examined = 0;
    for (const id of await this.ctx.files.activeImageIds()) {
      visit(id, this.ctx.files.imagePath(id));
      if (++examined % SCAN_SLICE === 0) await yieldToEventLoop();
    }
  }
}

/**
 * The errno of a failed @napi-rs/xattr call. Its errors carry no errno
 * property, only the OS message, e.g. "Operation not supported (os error 95)".
 */
function osErrno(err: unknown): number | undefined {
  const match = /\(os error (\d+)\)/.exec(err instanceof Error ? err.message : '');
  return match ? Number(match[1]) : undefined;
}

/** A count as Glance writes it (str(int)); anything else (or nothing) is 0. */
function parseHits(value: Buffer | null): number {
  if (value === null) return 0;
  const text = value.toString('utf8').trim();
  if (!/^\+?\d+$/.test(text)) return 0;
  const hits = Number(text);
  return Number.isSafeInteger(hits) ? hits : 0;
}

/** Epoch seconds as we write them; undefined when absent or not a number. */
function parseSeconds(value: Buffer | null): number | undefined {
  if (value === null) return undefined;
  const text = value.toString('utf8').trim();
  const seconds = text.length > 0 ? Number(text) : Number.NaN;
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined;
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
