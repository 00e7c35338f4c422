import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { DriverName, ResolvedOptions } from '../config.js';
import { BadDriverConfiguration, ImageNotCached, NotSupported, RangeNotSatisfiable } from '../errors.js';
import { nowSeconds } from '../clock.js';
import { CacheFileReader } from '../fs/cache-reader.js';
import { CacheWriter } from '../fs/cache-writer.js';
import { DirectorySync } from '../fs/directory-sync.js';
import { errorCode, listRegularFiles, mapLimit, unlinkIfExists, unlinkIfExistsSync } from '../fs/files.js';
import { isValidImageId, validateImageId } from '../image-id.js';
import { createLogger, type Logger } from '../log.js';
import type { ByteRange, CacheEntry, CachedImage, CacheStatus, CleanResult } from '../types.js';

/** A stream of an active cache file (or a byte range of it). */
export interface CacheReadStream extends Readable {
  readonly imageId: string;
  /** Size of the whole cached file. */
  readonly fileSize: number;
  /** First byte served. */
  readonly start: number;
  /** Last byte served (inclusive); start - 1 for an empty file. */
  readonly end: number;
}

/** How many unlinks prune, clean and delete keep in flight: enough to overlap, few enough to leave the thread pool to readers. */
const UNLINK_CONCURRENCY = 8;

/**
 * The driver contract (Glance's glance.image_cache.drivers.base.Driver) and
 * everything about it that is the same for every driver: the directory
 * layout, image-ID validation, the queue, clean(), and the write and read
 * paths. A driver adds where the metadata (hits, times, sizes) lives.
 *
 * Metadata system calls (existence checks, marker creation, renames) are made
 * synchronously on purpose: they take microseconds, while a hop through libuv's
 * four-thread pool costs more than the call and waits behind any large image
 * reads or writes occupying the pool. Data I/O and fsync stay asynchronous.
 */
export abstract class Driver {
  abstract readonly name: DriverName;
  protected readonly options: ResolvedOptions;
  protected readonly log: Logger;
  protected baseDir = '';
  private dirSync: DirectorySync | undefined;
  private configured = false;

  constructor(options: ResolvedOptions) {
    this.options = options;
    this.log = options.logger ?? createLogger();
  }

  // ---- what each driver provides -------------------------------------------------

  /** Prepare the metadata store; throw BadDriverConfiguration when it cannot be used. */
  protected abstract openMetadataStore(): Promise<void>;
  protected abstract closeMetadataStore(): Promise<void>;
  /** Record a freshly written image (hits 0, both times now) before its file becomes visible. */
  protected abstract recordCachedImage(imageId: string, size: number, now: number): Promise<void> | void;
  /** Forget the records of these images (their files are already gone). */
  protected abstract forgetCachedImages(imageIds: readonly string[]): Promise<void> | void;
  /** hits += 1, last accessed = now. May be batched, but the driver's own queries must see it. */
  protected abstract recordAccess(imageId: string, now: number): void;

  abstract getCachedImages(): Promise<CachedImage[]>;
  abstract getCacheSize(): Promise<number>;
  abstract getHitCount(imageId: string): Promise<number>;
  /** Every active image, least recently accessed first: the order prune evicts in. */
  abstract listLeastRecentlyAccessed(): Promise<CacheEntry[]>;

  /** Names in the cache directory that belong to the driver, not to images. */
  protected reservedNames(): ReadonlySet<string> {
    return NO_NAMES;
  }

  // ---- set-up ----------------------------------------------------------------------

  async configure(): Promise<void> {
    if (this.configured) return;
    const dir = this.options.imageCacheDir;
    if (typeof dir !== 'string' || dir.length === 0) {
      throw new BadDriverConfiguration(this.name, 'image_cache_dir is not set');
    }
    this.baseDir = path.resolve(dir);
    try {
      for (const sub of ['incomplete', 'invalid', 'queue']) fs.mkdirSync(path.join(this.baseDir, sub), { recursive: true });
      fs.accessSync(this.baseDir, fs.constants.W_OK);
      this.dirSync = new DirectorySync(this.baseDir);
      this.dirSync.open();
    } catch (err) {
      throw new BadDriverConfiguration(this.name, `cache directory ${this.baseDir} is not usable: ${(err as Error).message}`, { cause: err });
    }
    try {
      await this.openMetadataStore();
    } catch (err) {
      // Not configured: let go of the directory (ImageCache.create may fall back to another driver on it).
      await this.dirSync.close();
      this.dirSync = undefined;
      throw err;
    }
    this.configured = true;
  }

  async close(): Promise<void> {
    if (!this.configured) return;
    this.configured = false;
    await this.closeMetadataStore();
    await this.dirSync?.close();
  }

  // ---- paths -----------------------------------------------------------------------

  validate(imageId: string): string {
    return validateImageId(imageId, this.reservedNames());
  }

  getImageFilepath(imageId: string, cacheStatus: CacheStatus = 'active'): string {
    this.validate(imageId);
    switch (cacheStatus) {
      case 'active':
        return path.join(this.baseDir, imageId);
      case 'incomplete':
      case 'invalid':
      case 'queue':
        return path.join(this.baseDir, cacheStatus, imageId);
      default:
        throw new TypeError(`unknown cache status ${JSON.stringify(cacheStatus)}`);
    }
  }

  // ---- state -----------------------------------------------------------------------

  async isCached(imageId: string): Promise<boolean> {
    return fs.existsSync(this.getImageFilepath(imageId));
  }

  async isBeingCached(imageId: string): Promise<boolean> {
    return fs.existsSync(this.getImageFilepath(imageId, 'incomplete'));
  }

  async isQueued(imageId: string): Promise<boolean> {
    return fs.existsSync(this.getImageFilepath(imageId, 'queue'));
  }

  async isCacheable(imageId: string): Promise<boolean> {
    return !fs.existsSync(this.getImageFilepath(imageId)) && !fs.existsSync(this.getImageFilepath(imageId, 'incomplete'));
  }

  async getImageSize(imageId: string): Promise<number> {
    const st = fs.statSync(this.getImageFilepath(imageId), { throwIfNoEntry: false });
    if (st === undefined) throw new ImageNotCached(imageId);
    return st.size;
  }

  async getLeastRecentlyAccessed(): Promise<CacheEntry | null> {
    return (await this.listLeastRecentlyAccessed())[0] ?? null;
  }

  async getCachedNodes(_imageId: string): Promise<string[]> {
    throw new NotSupported('getCachedNodes', this.name);
  }

  /** IDs of the active image files in the cache directory. */
  protected async activeImageIds(): Promise<Set<string>> {
    const reserved = this.reservedNames();
    const names = await listRegularFiles(this.baseDir);
    return new Set(names.filter((name) => isValidImageId(name, reserved)));
  }

  // ---- deleting --------------------------------------------------------------------

  async deleteCachedImage(imageId: string): Promise<void> {
    await this.deleteCachedImages([this.validate(imageId)]);
  }

  /**
   * Removes these images' files, then their records; returns how many files
   * were removed. Unlinks go to the thread pool, several at a time: unlinking
   * a file that was just written and synced costs ext4 a few hundred
   * microseconds of journal work, and overlapping them prunes ~1.8x faster
   * than unlinking one after another on the main thread (measured here).
   */
  async deleteCachedImages(imageIds: readonly string[]): Promise<number> {
    for (const id of imageIds) this.validate(id);
    const removed = await mapLimit(imageIds, UNLINK_CONCURRENCY, (id) => unlinkIfExists(this.getImageFilepath(id)));
    await this.forgetCachedImages(imageIds);
    return removed.filter(Boolean).length;
  }

  async deleteAllCachedImages(): Promise<number> {
    return this.deleteCachedImages([...(await this.activeImageIds())]);
  }

  // ---- queue -----------------------------------------------------------------------

  async queueImage(imageId: string): Promise<boolean> {
    if (!(await this.isCacheable(imageId))) return false;
    let fd: number;
    try {
      // The exclusive create is both the "already queued?" test and the marker.
      fd = fs.openSync(this.getImageFilepath(imageId, 'queue'), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    } catch (err) {
      if (errorCode(err) === 'EEXIST') return false;
      throw err;
    }
    fs.closeSync(fd);
    return true;
  }

  async getQueuedImages(): Promise<string[]> {
    const queueDir = path.join(this.baseDir, 'queue');
    const items: Array<{ id: string; mtime: number }> = [];
    for (const id of await listRegularFiles(queueDir)) {
      if (!isValidImageId(id, this.reservedNames())) continue;
      const st = fs.statSync(path.join(queueDir, id), { throwIfNoEntry: false });
      if (st !== undefined) items.push({ id, mtime: st.mtimeMs });
    }
    items.sort((a, b) => a.mtime - b.mtime || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return items.map((item) => item.id);
  }

  async deleteQueuedImage(imageId: string): Promise<void> {
    unlinkIfExistsSync(this.getImageFilepath(imageId, 'queue'));
  }

  async deleteAllQueuedImages(): Promise<number> {
    const queueDir = path.join(this.baseDir, 'queue');
    let removed = 0;
    for (const name of await listRegularFiles(queueDir)) if (unlinkIfExistsSync(path.join(queueDir, name))) removed++;
    return removed;
  }

  // ---- clean -----------------------------------------------------------------------

  /**
   * Deletes everything in invalid/, and the files in incomplete/ last written
   * more than `stallTime` seconds ago (default image_cache_stall_time; 0 = all).
   * Files that vanish meanwhile (another process cleaning) are skipped.
   */
  async clean(stallTime?: number): Promise<CleanResult> {
    const stall = stallTime ?? this.options.imageCacheStallTime;
    if (!Number.isFinite(stall) || stall < 0) throw new RangeError(`stall time must be a number >= 0, not ${stall}`);
    const invalidDir = path.join(this.baseDir, 'invalid');
    const incompleteDir = path.join(this.baseDir, 'incomplete');
    const invalid = await mapLimit(await listRegularFiles(invalidDir), UNLINK_CONCURRENCY, (name) => unlinkIfExists(path.join(invalidDir, name)));
    const olderThanMs = Date.now() - stall * 1000;
    const stalledNames = (await listRegularFiles(incompleteDir)).filter((name) => {
      if (stall === 0) return true;
      const st = fs.statSync(path.join(incompleteDir, name), { throwIfNoEntry: false });
      return st !== undefined && st.mtimeMs < olderThanMs;
    });
    const stalled = await mapLimit(stalledNames, UNLINK_CONCURRENCY, (name) => unlinkIfExists(path.join(incompleteDir, name)));
    const result = { invalid: invalid.filter(Boolean).length, stalled: stalled.filter(Boolean).length };
    if (result.invalid + result.stalled > 0) this.log.info({ driver: this.name, ...result }, 'cleaned cache');
    return result;
  }

  // ---- write and read paths ----------------------------------------------------------

  /**
   * A Writable onto incomplete/<id>: end() commits, destroy() or abandonment
   * moves the partial file to invalid/. Rejects with ImageBeingCached while
   * another writer holds the image.
   */
  async openForWrite(imageId: string): Promise<CacheWriter> {
    const paths = {
      incomplete: this.getImageFilepath(imageId, 'incomplete'),
      invalid: this.getImageFilepath(imageId, 'invalid'),
      active: this.getImageFilepath(imageId),
    };
    const queueMarker = this.getImageFilepath(imageId, 'queue');
    const dirSync = this.requireDirSync();
    return CacheWriter.open(imageId, paths, {
      record: (size) => this.recordCachedImage(imageId, size, nowSeconds()),
      unrecord: () => this.forgetCachedImages([imageId]),
      published: async () => {
        await dirSync.sync();
        unlinkIfExistsSync(queueMarker);
      },
    }, this.options.writerLeaseSeconds * 1000);
  }

  /**
   * Streams the active file, or the inclusive byte range of it. When the
   * stream closes, the image's hits and last access are recorded.
   */
  async openForRead(imageId: string, range?: ByteRange): Promise<CacheReadStream> {
    const filePath = this.getImageFilepath(imageId);
    let fd: number;
    try {
      fd = fs.openSync(filePath, 'r');
    } catch (err) {
      if (errorCode(err) === 'ENOENT') throw new ImageNotCached(imageId);
      throw err;
    }
    let start: number;
    let end: number;
    let fileSize: number;
    try {
      fileSize = fs.fstatSync(fd).size;
      [start, end] = resolveRange(range, fileSize);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const stream = new CacheFileReader(fd, start, end);
    stream.once('close', () => this.recordAccess(imageId, nowSeconds()));
    return Object.assign(stream, { imageId, fileSize, start, end }) as unknown as CacheReadStream;
  }

  private requireDirSync(): DirectorySync {
    if (!this.configured || this.dirSync === undefined) throw new Error(`the ${this.name} driver is not configured (call configure() first)`);
    return this.dirSync;
  }
}

const NO_NAMES: ReadonlySet<string> = new Set();

/** [start, end] inclusive, clamped to the file like HTTP does; throws RangeNotSatisfiable. */
function resolveRange(range: ByteRange | undefined, size: number): [number, number] {
  if (range === undefined) return [0, size - 1];
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
    throw new RangeNotSatisfiable(start, end, size);
  }
  if (start >= size) throw new RangeNotSatisfiable(start, end, size);
  return [start, Math.min(end ?? size - 1, size - 1)];
}
