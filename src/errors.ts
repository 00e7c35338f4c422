/**
 * Every error this library throws on purpose is an ImageCacheError with a
 * stable `code`, so callers (and the HTTP layer) can branch on the code rather
 * than on message text.
 */
export class ImageCacheError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A driver could not be set up (Glance's exception.BadDriverConfiguration). */
export class BadDriverConfiguration extends ImageCacheError {
  readonly driverName: string;
  readonly reason: string;
  constructor(driverName: string, reason: string, options?: { cause?: unknown }) {
    super('ERR_BAD_DRIVER_CONFIGURATION', `Image cache driver '${driverName}' could not be configured: ${reason}`, options);
    this.driverName = driverName;
    this.reason = reason;
  }
}

/** An image ID that must never become a file name. */
export class InvalidImageId extends ImageCacheError {
  readonly imageId: unknown;
  constructor(imageId: unknown, reason: string) {
    super('ERR_INVALID_IMAGE_ID', `Invalid image ID ${describe(imageId)}: ${reason}`);
    this.imageId = imageId;
  }
}

/** The driver does not offer this operation (e.g. getCachedNodes outside centralized_db). */
export class NotSupported extends ImageCacheError {
  constructor(operation: string, driverName: string) {
    super('ERR_NOT_SUPPORTED', `${operation} is not supported by the '${driverName}' image cache driver`);
  }
}

/** Another writer, in this process or another, holds incomplete/<id>. */
export class ImageBeingCached extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string) {
    super('ERR_IMAGE_BEING_CACHED', `Image '${imageId}' is already being written to the cache`);
    this.imageId = imageId;
  }
}

/** openForWrite on an image that is cached already: cached bytes are never replaced under their readers. */
export class ImageAlreadyCached extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string) {
    super('ERR_IMAGE_ALREADY_CACHED', `Image '${imageId}' is already cached; read it, or delete it before caching it again`);
    this.imageId = imageId;
  }
}

/**
 * A writer's incomplete file was removed or replaced by a process that does
 * not take the claim's lock (an operator, Glance's own cleaner): what is there
 * now is not what the writer wrote, so it is not published.
 */
export class ClaimLost extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string, what: string) {
    super('ERR_CLAIM_LOST', `The incomplete file of image '${imageId}' ${what} by a process outside the cache while it was being written; nothing was published`);
    this.imageId = imageId;
  }
}

/** The cache was closed: nothing more is published or recorded through it. */
export class CacheClosed extends ImageCacheError {
  constructor(operation: string) {
    super('ERR_CACHE_CLOSED', `Cannot ${operation}: the image cache is closed`);
  }
}

/** openForRead / getImageSize on an image that has no active file. */
export class ImageNotCached extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string) {
    super('ERR_IMAGE_NOT_CACHED', `Image '${imageId}' is not cached`);
    this.imageId = imageId;
  }
}

/** A byte range that does not fit the cached file (HTTP 416). */
export class RangeNotSatisfiable extends ImageCacheError {
  readonly size: number;
  constructor(start: number, end: number | undefined, size: number) {
    super('ERR_RANGE_NOT_SATISFIABLE', `Byte range ${start}-${end ?? ''} is not satisfiable for an image of ${size} bytes`);
    this.size = size;
  }
}

/** The bytes did not hash to what the image metadata promised. */
export class ChecksumMismatch extends ImageCacheError {
  readonly algorithm: string;
  readonly expected: string;
  readonly actual: string;
  constructor(algorithm: string, expected: string, actual: string) {
    super('ERR_CHECKSUM_MISMATCH', `Image data ${algorithm} is ${actual}, expected ${expected}`);
    this.algorithm = algorithm;
    this.expected = expected;
    this.actual = actual;
  }
}

/** An option value that cannot be used, named precisely. */
export class InvalidOption extends ImageCacheError {
  readonly option: string;
  constructor(option: string, reason: string) {
    super('ERR_INVALID_OPTION', `Option '${option}' ${reason}`);
    this.option = option;
  }
}

function describe(value: unknown): string {
  if (typeof value !== 'string') return `of type ${value === null ? 'null' : typeof value}`;
  const shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
  return JSON.stringify(shown);
}

/** An image source (upstream Glance, ...) could not be reached or broke off; the node answers 502. */
export class SourceUnavailable extends ImageCacheError {
  readonly source: string;
  constructor(source: string, reason: string, options?: { cause?: unknown }) {
    super('ERR_SOURCE_UNAVAILABLE', `Image source '${source}' is unavailable: ${reason}`, options);
    this.source = source;
  }
}

/** The source sent fewer bytes than the image's size (it ended early), or more. */
export class WrongImageLength extends ImageCacheError {
  constructor(imageId: string, received: number, expected: number) {
    super('ERR_WRONG_IMAGE_LENGTH', `Image '${imageId}': the source sent ${received > expected ? 'more than' : 'only'} ${received} bytes of an image of ${expected}`);
  }
}

/** The source sent nothing for upstream_timeout seconds. */
export class SourceStalled extends ImageCacheError {
  constructor(imageId: string, seconds: number) {
    super('ERR_SOURCE_STALLED', `Image '${imageId}': the source sent nothing for ${seconds} s`);
  }
}

/**
 * The cache's disk failed a fill's write (full, over quota, read-only, I/O
 * error): a fault of this node, not of the image's bytes. Nothing is cached;
 * readers of the fill may take the rest of the image from its source.
 */
export class CacheWriteFailed extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string, cause: Error) {
    super('ERR_CACHE_WRITE_FAILED', `could not write image '${imageId}' to the cache: ${cause.message}`, { cause });
    this.imageId = imageId;
  }
}

/**
 * The metadata store (PostgreSQL for the centralized_db driver) cannot be
 * reached: what needs it fails with this until it is back; what only needs
 * the files (serving a cached image) goes on.
 */
export class MetadataStoreUnavailable extends ImageCacheError {
  constructor(driverName: string, cause: Error) {
    super('ERR_METADATA_STORE_UNAVAILABLE', `the ${driverName} driver's metadata store is unavailable: ${cause.message}`, { cause });
  }
}

/** The cache (or one of its parts) was used before configure() finished, or after close(). */
export class CacheNotConfigured extends ImageCacheError {
  constructor(what: string) {
    super('ERR_CACHE_NOT_CONFIGURED', `${what} is not open: create the cache with ImageCache.create (or call configure() first), and do not use it after close()`);
  }
}

/**
 * A driver could not write an image's metadata where it keeps it (the xattr
 * driver's attributes on the incomplete file, a record it refuses to build).
 */
export class MetadataWriteFailed extends ImageCacheError {
  readonly imageId: string;
  constructor(driverName: string, imageId: string, reason: string, options?: { cause?: unknown }) {
    super('ERR_METADATA_WRITE_FAILED', `the ${driverName} driver could not write the metadata of image '${imageId}': ${reason}`, options);
    this.imageId = imageId;
  }
}

/** Another process kept the cache directory's maintenance lock longer than a prune, clean or recovery waits for it. */
export class MaintenanceLockTimeout extends ImageCacheError {
  constructor(dir: string, seconds: number) {
    super('ERR_MAINTENANCE_LOCK_TIMEOUT', `another process has held the maintenance lock of the cache directory ${dir} for ${seconds} s`);
  }
}

/** A cache writer used after it committed, aborted or was destroyed. */
export class WriterClosed extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string) {
    super('ERR_WRITER_CLOSED', `the cache writer of image '${imageId}' is closed`);
    this.imageId = imageId;
  }
}

/** A worker of `image-cache serve` died before the cluster was serving: it could not start, and the next would fail the same way. */
export class WorkerStartFailed extends ImageCacheError {
  constructor(workers: number) {
    super('ERR_WORKER_START_FAILED', `a worker failed to start (its reason is above), so the ${workers} workers are stopped instead of being restarted`);
  }
}
