import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { resolveOptions, type ImageCacheOptions, type ResolvedOptions } from '../config.js';
import type { CacheReadStream, Driver, OpenImageFile } from '../drivers/driver.js';
import { createDriver } from '../drivers/registry.js';
import { BadDriverConfiguration } from '../errors.js';
import type { CacheWriter } from '../fs/cache-writer.js';
import { createLogger, type Logger } from '../log.js';
import type { ByteRange, CacheEntry, CachedImage, CacheStatus, CleanReport, ExpectedChecksum, PruneResult, RecoverReport, VerifyResult } from '../types.js';
import { cacheFromSource, createCachingStream, type ImageBytes } from './caching-stream.js';

/**
 * The LRU image cache (Glance's glance.image_cache.ImageCache): a driver plus
 * prune, caching streams and cache-without-reader.
 */
export class ImageCache {
  readonly driver: Driver;
  readonly options: ResolvedOptions;
  private readonly log: Logger;

  private constructor(driver: Driver, options: ResolvedOptions, log: Logger) {
    this.driver = driver;
    this.options = options;
    this.log = log;
  }

  /**
   * Loads and configures the named driver. When it reports
   * BadDriverConfiguration, falls back to sqlite with a warning, as Glance does.
   */
  static async create(options: ImageCacheOptions): Promise<ImageCache> {
    const resolved = resolveOptions(options);
    const log = resolved.logger ?? createLogger();
    try {
      const driver = await createDriver(resolved.imageCacheDriver, resolved);
      await driver.configure();
      log.info({ driver: driver.name, dir: resolved.imageCacheDir }, 'image cache driver loaded');
      return new ImageCache(driver, resolved, log);
    } catch (err) {
      if (!(err instanceof BadDriverConfiguration) || resolved.imageCacheDriver === 'sqlite') throw err;
      log.warn({ driver: resolved.imageCacheDriver, err }, 'image cache driver failed to configure; falling back to sqlite');
    }
    const fallbackOptions = { ...resolved, imageCacheDriver: 'sqlite' as const };
    const fallback = await createDriver('sqlite', fallbackOptions);
    await fallback.configure();
    return new ImageCache(fallback, fallbackOptions, log);
  }

  /**
   * Evicts least recently accessed images until the cache is at or below
   * image_cache_max_size: one ordered listing, then one batch of deletions.
   */
  async prune(): Promise<PruneResult> {
    const maxSize = this.options.imageCacheMaxSize;
    const entries = await this.driver.listLeastRecentlyAccessed();
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
    await this.driver.deleteCachedImages(victims);
    this.log.info({ files: victims.length, bytes: totalBytesPruned, maxSize }, 'pruned image cache');
    return { totalFilesPruned: victims.length, totalBytesPruned };
  }

  /**
   * The source's bytes, tee'd into the cache when the image is cacheable and
   * verified against `expected` at the end (a mismatch errors the stream and
   * caches nothing).
   */
  getCachingStream(imageId: string, expected: ExpectedChecksum | undefined | null, source: ImageBytes): Readable {
    return createCachingStream(this.driver, imageId, expected, source, this.log);
  }

  /**
   * The cleaner's pass (Glance's glance-cache-cleaner): removes invalid/ and
   * abandoned incomplete/ files older than `stallTime` (default
   * image_cache_stall_time), then runs verify() to repair the metadata.
   */
  async clean(stallTime?: number): Promise<CleanReport> {
    const cleaned = await this.driver.clean(stallTime);
    return { ...cleaned, ...(await this.driver.verify()) };
  }

  /** What a process starting on the directory does before it serves (see Driver.recover). */
  recover(): Promise<RecoverReport> {
    return this.driver.recover();
  }

  /** Repairs metadata against the files, counting each fix (see Driver.verify). */
  verify(): Promise<VerifyResult> {
    return this.driver.verify();
  }

  /** Caches from a stream with nobody reading; false when not cacheable. */
  cacheImageStream(imageId: string, source: ImageBytes, expected?: ExpectedChecksum | null): Promise<boolean> {
    return cacheFromSource(this.driver, imageId, () => source, expected);
  }

  /** Caches a file (by path, opened only if the image is cacheable) or a stream. */
  cacheImageFile(imageId: string, file: string | ImageBytes, expected?: ExpectedChecksum | null): Promise<boolean> {
    return cacheFromSource(this.driver, imageId, () => (typeof file === 'string' ? fs.createReadStream(file) : file), expected);
  }

  // ---- the driver's methods ----------------------------------------------------------

  /** Whether the ID can name an image in this cache: one that cannot is never cached (nor served from it). */
  isValidImageId(imageId: string): boolean { return this.driver.isValidImageId(imageId); }
  configure(): Promise<void> { return this.driver.configure(); }
  close(): Promise<void> { return this.driver.close(); }
  getCachedImages(): Promise<CachedImage[]> { return this.driver.getCachedImages(); }
  isCached(imageId: string): Promise<boolean> { return this.driver.isCached(imageId); }
  isCacheable(imageId: string): Promise<boolean> { return this.driver.isCacheable(imageId); }
  isQueued(imageId: string): Promise<boolean> { return this.driver.isQueued(imageId); }
  isBeingCached(imageId: string): Promise<boolean> { return this.driver.isBeingCached(imageId); }
  deleteAllCachedImages(): Promise<number> { return this.driver.deleteAllCachedImages(); }
  deleteCachedImage(imageId: string): Promise<void> { return this.driver.deleteCachedImage(imageId); }
  deleteAllQueuedImages(): Promise<number> { return this.driver.deleteAllQueuedImages(); }
  deleteQueuedImage(imageId: string): Promise<void> { return this.driver.deleteQueuedImage(imageId); }
  queueImage(imageId: string): Promise<boolean> { return this.driver.queueImage(imageId); }
  getLeastRecentlyAccessed(): Promise<CacheEntry | null> { return this.driver.getLeastRecentlyAccessed(); }
  listLeastRecentlyAccessed(): Promise<CacheEntry[]> { return this.driver.listLeastRecentlyAccessed(); }
  openForWrite(imageId: string): Promise<CacheWriter> { return this.driver.openForWrite(imageId); }
  openForRead(imageId: string, range?: ByteRange): Promise<CacheReadStream> { return this.driver.openForRead(imageId, range); }
  openFile(imageId: string, range?: ByteRange): Promise<OpenImageFile> { return this.driver.openFile(imageId, range); }
  getImageFilepath(imageId: string, cacheStatus: CacheStatus = 'active'): string { return this.driver.getImageFilepath(imageId, cacheStatus); }
  getImageSize(imageId: string): Promise<number> { return this.driver.getImageSize(imageId); }
  getQueuedImages(): Promise<string[]> { return this.driver.getQueuedImages(); }
  getCacheSize(): Promise<number> { return this.driver.getCacheSize(); }
  getHitCount(imageId: string): Promise<number> { return this.driver.getHitCount(imageId); }
  getCachedNodes(imageId: string): Promise<string[]> { return this.driver.getCachedNodes(imageId); }
}
