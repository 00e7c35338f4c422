import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { DriverName, ResolvedOptions } from '../config.js';
import { BadDriverConfiguration, ImageNotCached, NotSupported, RangeNotSatisfiable } from '../errors.js';
import { nowSeconds } from '../clock.js';
import { isHeld, quarantineIfAbandoned, removeIfAbandoned } from '../fs/claim.js';
import { CacheFileReader } from '../fs/cache-reader.js';
import { CacheWriter, CommitTracker, type CommitMetadata } from '../fs/cache-writer.js';
import { DirectorySync } from '../fs/directory-sync.js';
import { errorCode, listRegularFiles, mapLimit, unlinkIfExists, unlinkIfExistsSync } from '../fs/files.js';
import { LOCK_PROBE_PREFIX, lockingProblem } from '../fs/flock.js';
import { systemIo, type CacheIo } from '../fs/io.js';
import { isValidImageId, validateImageId } from '../image-id.js';
import { createLogger, type Logger } from '../log.js';
import type { ByteRange, CacheEntry, CachedImage, CacheStatus, CleanResult, RecoverReport, VerifyResult } from '../types.js';
import { AccessBatch, type PendingAccess } from './access-batch.js';
import { StoreRecovery } from './store-recovery.js';

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

/** An active cache file opened for a read of [start, end]; close() once when done. */
export interface OpenImageFile {
  readonly imageId: string;
  readonly fd: number;
  /** Size of the whole cached file. */
  readonly fileSize: number;
  /** First byte to serve. */
  readonly start: number;
  /** Last byte to serve (inclusive); start - 1 for an empty file. */
  readonly end: number;
  /** Closes the descriptor and records the read (hits, last access). Idempotent. */
  close(): void;
}

/** A driver's part of verify(): its own repairs, counted (what it has no use for stays 0). */
export type MetadataRepairs = Pick<VerifyResult, 'recordsDropped' | 'filesAdopted' | 'sizesCorrected'>;

/** How many unlinks prune, clean and delete keep in flight: enough to overlap, few enough to leave the thread pool to readers. */
const UNLINK_CONCURRENCY = 8;

/**
 * The driver contract (Glance's glance.image_cache.drivers.base.Driver) and
 * everything about it that is the same for every driver: the directory
 * layout, image-ID validation, the queue, clean(), verify()'s order, reads
 * batching, and the write and read paths. A driver adds where the metadata
 * (hits, times, sizes) lives.
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
  protected readonly io: CacheIo;
  protected baseDir = '';
  /** Reads not yet written to the metadata store; every query of the driver flushes it first. */
  protected readonly reads: AccessBatch;
  /** Repairs the metadata once a store that was found unavailable answers again (a driver whose store can be unavailable calls needed()). */
  protected recovery: StoreRecovery;
  private dirSync: DirectorySync | undefined;
  private commits = new CommitTracker();
  private configured = false;

  constructor(options: ResolvedOptions) {
    this.options = options;
    this.log = options.logger ?? createLogger();
    this.io = options.io ?? systemIo;
    this.reads = new AccessBatch((entries) => this.writeReads(entries), this.log, () => this.name);
    this.recovery = this.newRecovery();
  }

  // ---- what each driver provides -------------------------------------------------

  /** Prepare the metadata store; throw BadDriverConfiguration when it cannot be used. */
  protected abstract openMetadataStore(): Promise<void>;
  protected abstract closeMetadataStore(): Promise<void>;
  /** What a commit writes: before the publish (on the incomplete file) and after it (the record). */
  protected abstract commitMetadata(imageId: string): CommitMetadata;
  /** Forget the records of these images (their files are already gone). */
  protected abstract forgetCachedImages(imageIds: readonly string[]): Promise<void> | void;
  /**
   * hits += n and last access moved forward, for each image; an image read
   * without a record (an adopted Glance directory) gets one, if its file is still there.
   * A write that fails part-way deletes from `entries` what it wrote (see WriteAccesses).
   */
  protected abstract writeReads(entries: Map<string, PendingAccess>): Promise<void> | void;
  /** Brings the metadata into agreement with the files, counting each fix. */
  protected abstract repairMetadata(): Promise<MetadataRepairs>;

  abstract getCachedImages(): Promise<CachedImage[]>;
  abstract getCacheSize(): Promise<number>;
  abstract getHitCount(imageId: string): Promise<number>;
  /** Every active image, least recently accessed first: the order prune evicts in. */
  abstract listLeastRecentlyAccessed(): Promise<CacheEntry[]>;

  /** Names in the cache directory that belong to the driver, not to images. */
  protected reservedNames(): ReadonlySet<string> {
    return NO_NAMES;
  }

  /** Refuses, before anything is written, an image the metadata store could not record. */
  protected checkWritable(_imageId: string): void {}

  // ---- set-up ----------------------------------------------------------------------

  async configure(): Promise<void> {
    if (this.configured) return;
    const dir = this.options.imageCacheDir;
    if (typeof dir !== 'string' || dir.length === 0) {
      throw new BadDriverConfiguration(this.name, 'image_cache_dir is not set');
    }
    this.baseDir = path.resolve(dir);
    let dirSync: DirectorySync;
    try {
      for (const sub of ['incomplete', 'invalid', 'queue']) fs.mkdirSync(path.join(this.baseDir, sub), { recursive: true });
      fs.accessSync(this.baseDir, fs.constants.W_OK);
      dirSync = new DirectorySync(this.baseDir, this.io);
      dirSync.open();
    } catch (err) {
      throw new BadDriverConfiguration(this.name, `cache directory ${this.baseDir} is not usable: ${(err as Error).message}`, { cause: err });
    }
    // Claims on images being written are flock(2) locks (fs/claim.ts): without them, writers could not tell a dead writer from a slow one.
    const lockProblem = lockingProblem(path.join(this.baseDir, 'incomplete'));
    if (lockProblem !== undefined) {
      await dirSync.close();
      throw new BadDriverConfiguration(this.name, `the file system holding ${this.baseDir} does not support the file locks that claim images being written (${lockProblem})`);
    }
    try {
      await this.openMetadataStore();
    } catch (err) {
      // Not configured: let go of the directory (ImageCache.create may fall back to another driver on it).
      await dirSync.close();
      throw err;
    }
    this.dirSync = dirSync;
    this.commits = new CommitTracker();
    this.recovery = this.newRecovery();
    this.configured = true;
  }

  /**
   * Waits for the commits in flight (nothing is published after this is
   * called), writes the reads recorded so far, and lets go of the store
   * (with it unavailable, what it missed is left to verify()).
   */
  async close(): Promise<void> {
    if (!this.configured) return;
    this.configured = false;
    await this.commits.close();
    await this.reads.flush();
    this.reads.close();
    await this.recovery.close();
    await this.closeMetadataStore();
    await this.dirSync?.close();
    this.dirSync = undefined;
  }

  private newRecovery(): StoreRecovery {
    return new StoreRecovery(() => this.repairMetadata(), this.log, () => this.name);
  }

  // ---- paths -----------------------------------------------------------------------

  validate(imageId: string): string {
    return validateImageId(imageId, this.reservedNames());
  }

  /** Whether the ID can name an image in this cache (validate() without the error). */
  isValidImageId(imageId: string): boolean {
    return isValidImageId(imageId, this.reservedNames());
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

  /** A live writer (in any process) holds the image. A dead writer's leftover file does not count. */
  async isBeingCached(imageId: string): Promise<boolean> {
    return isHeld(this.getImageFilepath(imageId, 'incomplete'));
  }

  async isQueued(imageId: string): Promise<boolean> {
    return fs.existsSync(this.getImageFilepath(imageId, 'queue'));
  }

  async isCacheable(imageId: string): Promise<boolean> {
    return !fs.existsSync(this.getImageFilepath(imageId)) && !isHeld(this.getImageFilepath(imageId, 'incomplete'));
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

  /** Writes the reads recorded before this call, so that what a query reports includes them. */
  protected flushReads(): Promise<void> {
    return this.reads.flush();
  }

  // ---- deleting --------------------------------------------------------------------

  async deleteCachedImage(imageId: string): Promise<void> {
    await this.deleteCachedImages([this.validate(imageId)]);
  }

  /**
   * Removes these images' files, then their records; returns how many files
   * were removed. Unlinks go to the thread pool, several at a time: unlinking
   * a file that was just written and synced costs ext4 journal work, and
   * overlapping the unlinks prunes faster than one after another on the main
   * thread (bench:lib's prune phase measures it).
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

  /**
   * Queues an image for prefetching; false (and nothing written) when it is
   * cached, being cached by a live writer, or queued already.
   */
  async queueImage(imageId: string): Promise<boolean> {
    if (!(await this.isCacheable(imageId))) return false;
    const marker = this.getImageFilepath(imageId, 'queue');
    let fd: number;
    try {
      // The exclusive create is both the "already queued?" test and the marker.
      fd = fs.openSync(marker, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    } catch (err) {
      if (errorCode(err) === 'EEXIST') return false;
      throw err;
    }
    fs.closeSync(fd);
    // A commit publishes before it pops the marker; we create the marker before
    // looking again. So if a commit popped (nothing) before our marker existed,
    // its image is visible now, and the marker must not outlive this call.
    if (await this.isCached(imageId)) {
      unlinkIfExistsSync(marker);
      return false;
    }
    return true;
  }

  async getQueuedImages(): Promise<string[]> {
    const items: Array<{ id: string; mtime: number }> = [];
    for (const id of await this.queuedIds()) {
      const st = fs.statSync(this.getImageFilepath(id, 'queue'), { throwIfNoEntry: false });
      if (st !== undefined) items.push({ id, mtime: st.mtimeMs });
    }
    items.sort((a, b) => a.mtime - b.mtime || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return items.map((item) => item.id);
  }

  /** IDs of the queue markers, in no order. */
  private async queuedIds(): Promise<string[]> {
    const reserved = this.reservedNames();
    return (await listRegularFiles(path.join(this.baseDir, 'queue'))).filter((name) => isValidImageId(name, reserved));
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

  // ---- maintenance -----------------------------------------------------------------

  /**
   * Deletes everything in invalid/, and the files in incomplete/ that no live
   * writer holds and that were last written more than `stallTime` seconds ago
   * (default image_cache_stall_time; 0 = all of them). A live writer's file is
   * never removed, however long it has been idle: its writer ends or aborts it.
   * Files that vanish meanwhile (another process cleaning) are skipped.
   */
  async clean(stallTime?: number): Promise<CleanResult> {
    const stall = stallTime ?? this.options.imageCacheStallTime;
    if (!Number.isFinite(stall) || stall < 0) throw new RangeError(`stall time must be a number >= 0, not ${stall}`);
    const invalidDir = path.join(this.baseDir, 'invalid');
    const incompleteDir = path.join(this.baseDir, 'incomplete');
    const invalid = await mapLimit(await listRegularFiles(invalidDir), UNLINK_CONCURRENCY, (name) => unlinkIfExists(path.join(invalidDir, name)));
    const olderThanMs = BigInt(Math.floor(Date.now() - stall * 1000));
    let stalled = 0;
    for (const name of await listRegularFiles(incompleteDir)) {
      // A lock probe left by a process that died while configuring. A live one lives for
      // microseconds, and must not even be locked meanwhile (its process would see a lock it did
      // not take): only one a minute old is touched.
      if (name.startsWith(LOCK_PROBE_PREFIX)) {
        const probe = path.join(incompleteDir, name);
        const st = fs.statSync(probe, { throwIfNoEntry: false });
        if (st !== undefined && st.mtimeMs < Date.now() - 60_000 && unlinkIfExistsSync(probe)) stalled++;
        continue;
      }
      // Our own names only: anything foreign is not an image's claim.
      if (!isValidImageId(name, this.reservedNames())) continue;
      if (removeIfAbandoned(path.join(incompleteDir, name), (st) => stall === 0 || st.mtimeMs < olderThanMs)) stalled++;
    }
    const result = { invalid: invalid.filter(Boolean).length, stalled };
    if (result.invalid + result.stalled > 0) this.log.info({ driver: this.name, ...result }, 'cleaned cache');
    return result;
  }

  /**
   * What a process starting on the directory does before it serves (the node
   * runs it at start): the files of writers that died, which no live writer
   * holds, go to invalid/ whatever their age (a crash's leftovers, kept for
   * inspection until the cleaner removes them), and verify() brings the
   * metadata back into agreement with the files: a record whose file is gone
   * is dropped, a file without a record is adopted (a file reaches an image's
   * name only by the rename at the end of a commit, after its fsync, so it is
   * whole). Safe beside live writers in other processes: their files are held.
   */
  async recover(): Promise<RecoverReport> {
    const incompleteDir = path.join(this.baseDir, 'incomplete');
    let abandonedWrites = 0;
    for (const name of await listRegularFiles(incompleteDir)) {
      // Our own names only (a lock probe's name, with its '@', is none): anything foreign is not an image's claim.
      if (!isValidImageId(name, this.reservedNames())) continue;
      const paths = { incomplete: path.join(incompleteDir, name), invalid: this.getImageFilepath(name, 'invalid') };
      if (quarantineIfAbandoned(paths, this.io)) abandonedWrites++;
    }
    if (abandonedWrites > 0) this.log.info({ driver: this.name, abandonedWrites }, 'moved the files of writers that died to invalid/');
    return { abandonedWrites, ...(await this.verify()) };
  }

  /**
   * Brings metadata and files back into agreement, in named steps, and counts
   * what each step did. Listings never write; this is where repair happens
   * (the cleaner runs it too).
   */
  async verify(): Promise<VerifyResult> {
    await this.flushReads();
    const repairs = await this.repairMetadata();
    const queueMarkersDropped = await this.dropQueueMarkersOfCachedImages();
    const result: VerifyResult = { ...repairs, queueMarkersDropped };
    if (Object.values(result).some((n) => n > 0)) this.log.info({ driver: this.name, ...result }, 'verified cache');
    return result;
  }

  private async dropQueueMarkersOfCachedImages(): Promise<number> {
    let dropped = 0;
    // Order does not matter here: the marker names are enough, without getQueuedImages' stat of each.
    for (const id of await this.queuedIds()) {
      if (fs.existsSync(this.getImageFilepath(id)) && unlinkIfExistsSync(this.getImageFilepath(id, 'queue'))) dropped++;
    }
    return dropped;
  }

  // ---- write and read paths ----------------------------------------------------------

  /**
   * A Writable onto incomplete/<id>: end() commits, destroy() or abandonment
   * moves the partial file to invalid/. Rejects with ImageAlreadyCached for a
   * cached image and with ImageBeingCached while a live writer holds it.
   */
  async openForWrite(imageId: string): Promise<CacheWriter> {
    this.validate(imageId);
    this.checkWritable(imageId);
    const directory = this.requireDirSync();
    return CacheWriter.open({
      imageId,
      paths: {
        incomplete: this.getImageFilepath(imageId, 'incomplete'),
        invalid: this.getImageFilepath(imageId, 'invalid'),
        active: this.getImageFilepath(imageId),
        queueMarker: this.getImageFilepath(imageId, 'queue'),
      },
      io: this.io,
      directory,
      metadata: this.commitMetadata(imageId),
      commits: this.commits,
      log: this.log,
    });
  }

  /**
   * Opens the active file for a read of [start, end] (the whole file, or the
   * inclusive range): its descriptor, for a caller that reads it its own way
   * (the node sends it with reused buffers). close() closes it and records
   * the read (hits, last access); call it once, however the read ended.
   */
  async openFile(imageId: string, range?: ByteRange): Promise<OpenImageFile> {
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
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
      [start, end] = resolveRange(range, st.size);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const access = { ino: st.ino, size: st.size, lastModified: st.mtimeMs / 1000 };
    let open = true;
    return {
      imageId,
      fd,
      fileSize: st.size,
      start,
      end,
      close: () => {
        if (!open) return;
        open = false;
        fs.closeSync(fd);
        if (this.configured) this.reads.add(imageId, { at: nowSeconds(), ...access });
      },
    };
  }

  /**
   * Streams the active file, or the inclusive byte range of it. When the
   * stream closes, the image's hits and last access are recorded.
   */
  async openForRead(imageId: string, range?: ByteRange): Promise<CacheReadStream> {
    const file = await this.openFile(imageId, range);
    const stream = new CacheFileReader(file.fd, file.start, file.end, () => file.close());
    return Object.assign(stream, { imageId, fileSize: file.fileSize, start: file.start, end: file.end }) as unknown as CacheReadStream;
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
