export { ImageCache } from './cache/image-cache.js';
export { ChecksumVerifier, checksumRule, type ChecksumRule } from './cache/checksum.js';
export type { ImageBytes } from './cache/caching-stream.js';
export type { ImageSource, ImageMetadata, MetadataResult, SourceAnswer, SourceResponse } from './sources/source.js';
export { GlanceSource } from './sources/glance.js';
export { Upstream } from './sources/upstream.js';
export { LocalDirectorySource, importImage } from './sources/local-directory.js';
export { startNode, type RunningNode } from './server/node.js';
export { loadServeConfig, ConfigurationError, type ServeConfig, type ServerOptions } from './server/config.js';
export { Driver, type CacheReadStream, type OpenImageFile } from './drivers/driver.js';
export { SqliteDriver } from './drivers/sqlite.js';
export { XattrDriver } from './drivers/xattr.js';
export { CentralizedDbDriver } from './drivers/centralized-db.js';
export { createDriver } from './drivers/registry.js';
export { CacheWriter, abandonedWriterChannel, type CommitMetadata, type PendingRecord } from './fs/cache-writer.js';
export { systemIo, type CacheIo } from './fs/io.js';
export {
  ImageCacheError,
  BadDriverConfiguration,
  InvalidImageId,
  NotSupported,
  ImageBeingCached,
  ImageAlreadyCached,
  ClaimLost,
  CacheClosed,
  ImageNotCached,
  RangeNotSatisfiable,
  ChecksumMismatch,
  InvalidOption,
  SourceUnavailable,
  SourceStalled,
  WrongImageLength,
  CacheWriteFailed,
  MetadataStoreUnavailable,
  FillAbandoned,
  ImageExists,
} from './errors.js';
export { validateImageId } from './image-id.js';
export {
  DRIVER_NAMES,
  DEFAULTS,
  resolveOptions,
  optionsFromEnv,
  optionsFromGlanceSettings,
  parseGlanceConfig,
  type DriverName,
  type ImageCacheOptions,
  type ResolvedOptions,
} from './config.js';
export { createLogger, silentLogger, type Logger, type LogLevel } from './log.js';
export type { ByteRange, CacheEntry, CachedImage, CacheStatus, CleanReport, CleanResult, ExpectedChecksum, PruneResult, VerifyResult } from './types.js';
