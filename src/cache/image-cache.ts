import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { resolveOptions, type ImageCacheOptions, type ResolvedOptions } from '../config.js';
import { streamImageFile, type CacheReadStream, type OpenImageFile } from '../content/read.js';
import { ContentStore } from '../content/store.js';
import type { CacheWriter } from '../content/writer.js';
import { BadDriverConfiguration, CacheNotConfigured, NotSupported } from '../errors.js';
import { systemIo } from '../fs/io.js';
import { createLogger, type Logger } from '../log.js';
import { AccessBatch } from '../metadata/access-batch.js';
import type { MetadataIndex } from '../metadata/metadata-index.js';
import { loadIndex, type IndexConstructor } from '../metadata/registry.js';
import { sqliteFileNames } from '../metadata/sqlite-files.js';
import { StoreRecovery } from '../metadata/store-recovery.js';
import type { ByteRange, CacheEntry, CachedImage, CacheStatus, CleanReport, ExpectedChecksum, PruneResult, RecoverReport, VerifyResult } from '../types.js';
import { cacheFromSource, createCachingStream, type ImageBytes } from './caching-stream.js';
import { Maintenance } from './maintenance.js';

/** How the engine behaves, beside the cache's options (which are Glance's). */
export interface EngineOptions {
  /**
   * When the named driver reports BadDriverConfiguration, fall back to
   * sqlite on the same directory with a warning, as Glance does (default
   * true). The node turns it off: a node that cannot reach its shared
   * metadata must not serve as if it were alone.
   */
  fallbackToSqlite?: boolean;
  /**
   * After each commit, prune if the cache is past image_cache_max_size, so
   * that once every commit has settled it is at or under it (default true;
   * see Maintenance.afterCommit).
   */
  pruneAfterCommit?: boolean;
}

/** Images prune removed, as an eviction listener is told of them. */
export interface Eviction {
  reason: 'prune';
  imageIds: readonly string[];
  bytes: number;
}

/**
 * The LRU image cache (Glance's glance.image_cache.ImageCache), the one
 * engine behind the library, the CLI and the node. It owns:
 * - the content store (src/content): the image files, their claims, commits,
 *   reads, the queue markers, and the files' half of clean/recover/verify;
 * - the metadata index of its driver (src/metadata): hits, times, sizes,
 *   nodes, and the metadata's half of verify; reads are batched here for it;
 * - maintenance (maintenance.ts): the prune after a commit, the timers, and
 *   the directory lock that keeps prunes and cleans of all processes apart.
 * The Driver contract's methods (SPEC §2) are its own.
 */
export class ImageCache {
  readonly options: ResolvedOptions;
  /** The driver's metadata index; `name` is the driver name. */
  readonly driver: MetadataIndex;
  readonly maintenance: Maintenance;
  private readonly store: ContentStore;
  private readonly log: Logger;
  /** Reads not yet written to the index; every query that reports hits or last access flushes it first. */
  private readonly reads: AccessBatch;
  /** Repairs the metadata once a store that was found unavailable answers again. */
  private recovery: StoreRecovery;
  private readonly evictionListeners = new Set<(eviction: Eviction) => void>();
  private readonly pruneAfterCommit: boolean;
  private open = false;

  private constructor(options: ResolvedOptions, log: Logger, engine: EngineOptions, Index: IndexConstructor) {
    this.options = options;
    this.log = log;
    this.pruneAfterCommit = engine.pruneAfterCommit ?? true;
    this.store = new ContentStore(options.imageCacheDir, sqliteFileNames(options.imageCacheSqliteDb), options.io ?? systemIo, log, {
      committed: () => {
        if (this.pruneAfterCommit) this.maintenance.afterCommit();
      },
      read: (imageId, read) => {
        if (this.open) this.reads.add(imageId, read);
      },
    });
    this.reads = new AccessBatch((entries) => this.driver.writeReads(entries), log, () => this.driver.name, () => this.driver.readsGatherMs ?? 0);
    this.recovery = this.newRecovery();
    this.driver = new Index({
      options,
      log,
      files: this.store.layout,
      reads: this.reads,
      storeUnavailable: () => this.recovery.needed(),
    });
    this.maintenance = new Maintenance(this, { pruneIntervalSeconds: 0, cleanIntervalSeconds: 0, log });
  }

  /**
   * Opens the cache directory with the named driver's index. When the driver
   * reports BadDriverConfiguration, falls back to sqlite with a warning, as
   * Glance does, unless `engine.fallbackToSqlite` is false.
   */
  static async create(options: ImageCacheOptions, engine: EngineOptions = {}): Promise<ImageCache> {
    const resolved = resolveOptions(options);
    const log = resolved.logger ?? createLogger();
    try {
      const cache = await ImageCache.opened(resolved, log, engine);
      log.info({ driver: cache.driver.name, dir: resolved.imageCacheDir }, 'image cache driver loaded');
      return cache;
    } catch (err) {
      if (!(err instanceof BadDriverConfiguration) || resolved.imageCacheDriver === 'sqlite' || engine.fallbackToSqlite === false) throw err;
      log.warn({ driver: resolved.imageCacheDriver, err }, 'image cache driver failed to configure; falling back to sqlite');
    }
    return ImageCache.opened({ ...resolved, imageCacheDriver: 'sqlite' }, log, engine);
  }

  private static async opened(options: ResolvedOptions, log: Logger, engine: EngineOptions): Promise<ImageCache> {
    const dir = options.imageCacheDir;
    if (typeof dir !== 'string' || dir.length === 0) throw new BadDriverConfiguration(options.imageCacheDriver, 'image_cache_dir is not set');
    const cache = new ImageCache(options, log, engine, await loadIndex(options.imageCacheDriver));
    await cache.configure();
    return cache;
  }

  private newRecovery(): StoreRecovery {
    return new StoreRecovery(() => this.driver.repair(), this.log, () => this.driver.name);
  }

  /** Opens the directory and the index (ImageCache.create does; again after close()). */
  async configure(): Promise<void> {
    if (this.open) return;
    await this.store.open(this.driver.name);
    try {
      await this.driver.open();
    } catch (err) {
      // Not configured: let go of the directory (create() may fall back to another driver on it).
      await this.store.close();
      throw err;
    }
    this.recovery = this.newRecovery();
    this.maintenance.reopen();
    this.open = true;
  }

  /**
   * Waits for the commits in flight (nothing is published after this is
   * called) and for the prunes they owe, writes the reads recorded so far,
   * and lets go of the index's store (with it unavailable, what it missed is
   * left to verify()).
   */
  async close(): Promise<void> {
    if (!this.open) return;
    await this.store.close();
    await this.maintenance.close();
    this.open = false;
    await this.reads.flush();
    this.reads.close();
    await this.recovery.close();
    await this.driver.close();
  }

  /** Told of every image prune evicts (the node counts them); returns the unsubscribe. */
  addEvictionListener(listener: (eviction: Eviction) => void): () => void {
    this.evictionListeners.add(listener);
    return () => this.evictionListeners.delete(listener);
  }

  // ---- prune, clean, recover, verify --------------------------------------------------

  /**
   * Evicts least recently accessed images until the cache is at or below
   * image_cache_max_size: one ordered listing, then one batch of deletions.
   * (Maintenance runs it under the directory lock; so do the node's and the
   * CLI's prune.)
   */
  async prune(): Promise<PruneResult> {
    const maxSize = this.options.imageCacheMaxSize;
    const entries = await this.listLeastRecentlyAccessed();
    let current = 0;
    for (const entry of entries) current += entry.size;
    const victims: string[] = [];
    let totalBytesPruned = 0;
    for (const entry of entries) {
      if (current <= maxSize) break;
      victims.push(entry.imageId);
      current -= entry.size;
      totalBytesPruned += entry.size;
    }
    if (victims.length === 0) return { totalFilesPruned: 0, totalBytesPruned: 0 };
    await this.deleteCachedImages(victims);
    this.log.info({ files: victims.length, bytes: totalBytesPruned, maxSize }, 'pruned image cache');
    const eviction: Eviction = { reason: 'prune', imageIds: victims, bytes: totalBytesPruned };
    for (const listener of this.evictionListeners) listener(eviction);
    return { totalFilesPruned: victims.length, totalBytesPruned };
  }

  /**
   * The cleaner's pass (Glance's glance-cache-cleaner): removes invalid/ and
   * abandoned incomplete/ files older than `stallTime` (default
   * image_cache_stall_time), then runs verify() to repair the metadata.
   */
  async clean(stallTime?: number): Promise<CleanReport> {
    const cleaned = await this.store.clean(stallTime ?? this.options.imageCacheStallTime);
    if (cleaned.invalid + cleaned.stalled > 0) this.log.info({ driver: this.driver.name, ...cleaned }, 'cleaned cache');
    return { ...cleaned, ...(await this.verify()) };
  }

  /**
   * What a process starting on the directory does before it serves (the node
   * runs it at start): the files of writers that died go to invalid/ whatever
   * their age, and verify() brings the metadata back into agreement with the
   * files: a record whose file is gone is dropped, a file without a record is
   * adopted (a file reaches an image's name only by the rename at the end of
   * a commit, after its fsync, so it is whole).
   */
  async recover(): Promise<RecoverReport> {
    const abandonedWrites = await this.store.quarantineAbandonedWrites();
    if (abandonedWrites > 0) this.log.info({ driver: this.driver.name, abandonedWrites }, 'moved the files of writers that died to invalid/');
    return { abandonedWrites, ...(await this.verify()) };
  }

  /**
   * Brings metadata and files back into agreement, in named steps, and counts
   * what each step did: the index's repair, then the queue's. Listings never
   * write; this is where repair happens (the cleaner runs it too).
   */
  async verify(): Promise<VerifyResult> {
    await this.reads.flush();
    const repairs = await this.driver.repair();
    const queueMarkersDropped = await this.store.queue.dropMarkersOfCachedImages();
    const result: VerifyResult = { ...repairs, queueMarkersDropped };
    if (Object.values(result).some((n) => n > 0)) this.log.info({ driver: this.driver.name, ...result }, 'verified cache');
    return result;
  }

  // ---- caching --------------------------------------------------------------------------

  /**
   * The source's bytes, tee'd into the cache when the image is cacheable and
   * verified against `expected` at the end (a mismatch errors the stream and
   * caches nothing).
   */
  getCachingStream(imageId: string, expected: ExpectedChecksum | undefined | null, source: ImageBytes): Readable {
    return createCachingStream(this, imageId, expected, source, this.log);
  }

  /** Caches from a stream with nobody reading; false when not cacheable. */
  cacheImageStream(imageId: string, source: ImageBytes, expected?: ExpectedChecksum | null): Promise<boolean> {
    return cacheFromSource(this, imageId, () => source, expected);
  }

  /** Caches a file (by path, opened only if the image is cacheable) or a stream. */
  cacheImageFile(imageId: string, file: string | ImageBytes, expected?: ExpectedChecksum | null): Promise<boolean> {
    return cacheFromSource(this, imageId, () => (typeof file === 'string' ? fs.createReadStream(file) : file), expected);
  }

  /**
   * A Writable onto incomplete/<id>: end() commits (content/writer.ts),
   * destroy() or abandonment moves the partial file to invalid/. Rejects with
   * ImageAlreadyCached for a cached image and with ImageBeingCached while a
   * live writer holds it. A commit that takes the cache past its limit prunes.
   */
  async openForWrite(imageId: string): Promise<CacheWriter> {
    this.validate(imageId);
    this.driver.checkWritable(imageId);
    if (!this.open) throw new CacheNotConfigured(`the ${this.driver.name} driver`);
    return this.store.openForWrite(imageId, this.driver.commitMetadata(imageId));
  }

  /**
   * Opens the active file for a read of [start, end] (the whole file, or the
   * inclusive range): its descriptor, for a caller that reads it its own way
   * (the node sends it with reused buffers). close() closes it and records
   * the read (hits, last access); call it once, however the read ended.
   */
  async openFile(imageId: string, range?: ByteRange): Promise<OpenImageFile> {
    return this.store.openFile(imageId, range);
  }

  /** Streams the active file, or the inclusive byte range of it; when the stream closes, the read is recorded. */
  async openForRead(imageId: string, range?: ByteRange): Promise<CacheReadStream> {
    return streamImageFile(this.store.openFile(imageId, range));
  }

  // ---- deleting -----------------------------------------------------------------------

  async deleteCachedImage(imageId: string): Promise<void> {
    await this.deleteCachedImages([this.validate(imageId)]);
  }

  /** Removes these images' files, then their records; returns how many files were removed. */
  async deleteCachedImages(imageIds: readonly string[]): Promise<number> {
    const removed = await this.store.deleteFiles(imageIds);
    for (const id of imageIds) this.reads.forget(id);
    await this.driver.forget(imageIds);
    return removed.length;
  }

  async deleteAllCachedImages(): Promise<number> {
    return this.deleteCachedImages([...(await this.store.layout.activeImageIds())]);
  }

  // ---- the queue ------------------------------------------------------------------------

  /** Queues an image for prefetching; false when it is cached, being cached by a live writer, or queued already. */
  async queueImage(imageId: string): Promise<boolean> { return this.store.queue.queue(imageId); }
  async isQueued(imageId: string): Promise<boolean> { return this.store.queue.isQueued(imageId); }
  /** The queued images, in queue order. */
  getQueuedImages(): Promise<string[]> { return this.store.queue.list(); }
  async deleteQueuedImage(imageId: string): Promise<void> { this.store.queue.remove(imageId); }
  deleteAllQueuedImages(): Promise<number> { return this.store.queue.removeAll(); }

  // ---- state and listings -----------------------------------------------------------------

  validate(imageId: string): string { return this.store.layout.validate(imageId); }
  /** Whether the ID can name an image in this cache: one that cannot is never cached (nor served from it). */
  isValidImageId(imageId: string): boolean { return this.store.layout.isValidImageId(imageId); }
  getImageFilepath(imageId: string, cacheStatus: CacheStatus = 'active'): string { return this.store.layout.imagePath(imageId, cacheStatus); }
  async isCached(imageId: string): Promise<boolean> { return this.store.isCached(imageId); }
  async isCacheable(imageId: string): Promise<boolean> { return this.store.isCacheable(imageId); }
  /** A live writer (in any process) holds the image. A dead writer's leftover file does not count. */
  async isBeingCached(imageId: string): Promise<boolean> { return this.store.isBeingCached(imageId); }
  async getImageSize(imageId: string): Promise<number> { return this.store.imageSize(imageId); }

  async getCachedImages(): Promise<CachedImage[]> {
    await this.reads.flush();
    return this.driver.getCachedImages();
  }

  getCacheSize(): Promise<number> {
    return this.driver.getCacheSize();
  }

  /** The image's hits; 0 when it is not cached. */
  async getHitCount(imageId: string): Promise<number> {
    if (!this.store.isCached(imageId)) return 0;
    await this.reads.flush();
    return this.driver.getHitCount(imageId);
  }

  /** Every active image, least recently accessed first: the order prune evicts in. */
  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> {
    await this.reads.flush();
    return this.driver.listLeastRecentlyAccessed();
  }

  async getLeastRecentlyAccessed(): Promise<CacheEntry | null> {
    return (await this.listLeastRecentlyAccessed())[0] ?? null;
  }

  /** The URLs of the nodes that hold the image (centralized_db only; NotSupported otherwise). */
  async getCachedNodes(imageId: string): Promise<string[]> {
    if (this.driver.getCachedNodes === undefined) throw new NotSupported('getCachedNodes', this.driver.name);
    return this.driver.getCachedNodes(this.validate(imageId));
  }

  /** The URLs of every other node on the same database (centralized_db only; NotSupported otherwise). */
  async getClusterNodes(): Promise<string[]> {
    if (this.driver.getClusterNodes === undefined) throw new NotSupported('getClusterNodes', this.driver.name);
    return this.driver.getClusterNodes();
  }
}
