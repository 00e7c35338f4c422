export { ImageCache, type EngineOptions, type Eviction } from './cache/image-cache.js';
export { ChecksumVerifier, checksumRule, type ChecksumRule } from './cache/checksum.js';
export type { ImageBytes } from './cache/caching-stream.js';
export type { ImageSource, ImageMetadata, MetadataResult, SourceAnswer, SourceResponse } from './sources/source.js';
export { GlanceSource } from './sources/glance.js';
export { Upstream } from './sources/upstream.js';
export { LocalDirectorySource, importImage } from './sources/local-directory.js';
export { startNode, type RunningNode } from './server/node.js';
export { loadServeConfig, ConfigurationError, type ServeConfig, type ServerOptions } from './server/config.js';
// The drivers' indexes are loaded by ImageCache.create when their driver is asked for, never from
// here: importing the package loads neither pg, nor better-sqlite3, nor the xattr binding
// (test/metadata/lazy-drivers.test.ts). Their types cost nothing at run time.
export type { MetadataIndex, IndexContext, MetadataRepairs } from './metadata/metadata-index.js';
export type { SqliteIndex } from './metadata/sqlite.js';
export type { XattrIndex } from './metadata/xattr.js';
export type { CentralizedDbIndex } from './metadata/centralized-db.js';
export type { CacheReadStream, OpenImageFile } from './content/read.js';
export { CacheWriter, abandonedWriterChannel, type CommitMetadata, type PendingRecord } from './content/writer.js';
export { Maintenance, type MaintenanceOptions } from './cache/maintenance.js';
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
  CacheNotConfigured,
  MetadataWriteFailed,
  MaintenanceLockTimeout,
  WriterClosed,
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
