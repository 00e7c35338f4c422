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

/**
 * An image's bytes stopped coming for upstream_timeout: its source sent
 * nothing for that long, or, seen from a follower in another process, the
 * writer of its fill wrote nothing (the node answers 502 either way).
 * `sender` says which, for the log: 'the source' unless given.
 */
export class SourceStalled extends ImageCacheError {
  constructor(imageId: string | undefined, seconds: number, sender = 'the source') {
    super('ERR_SOURCE_STALLED', `${imageId === undefined ? '' : `Image '${imageId}': `}${sender} sent nothing for ${seconds} s`);
  }
}

/**
 * The cache's disk failed a fill's write (full, over quota, read-only, I/O
 * error): a fault of this node, not of the image's bytes. Nothing is cached;
 * readers of the fill may take the rest of the image from its source.
 */
export class CacheWriteFailed extends ImageCacheError {
  readonly imageId: string;
  /** `cause`: the disk's error, or what is known of it when it happened elsewhere (in another process). */
  constructor(imageId: string, cause: Error | string) {
    super('ERR_CACHE_WRITE_FAILED', `could not write image '${imageId}' to the cache: ${typeof cause === 'string' ? cause : cause.message}`, typeof cause === 'string' ? undefined : { cause });
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

/** A fill was given up without a publish by a writer in another process (it aborted or died). */
export class FillAbandoned extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string) {
    super('ERR_FILL_ABANDONED', `the fill of image '${imageId}' in another process ended without caching it`);
    this.imageId = imageId;
  }
}

/** importImage with an ID the store already holds: stored images are never replaced. */
export class ImageExists extends ImageCacheError {
  readonly imageId: string;
  constructor(imageId: string, dir: string) {
    super('ERR_IMAGE_EXISTS', `Image '${imageId}' already exists in ${dir}; delete it there before importing it again`);
    this.imageId = imageId;
  }
}

/**
 * A request failed on a reused keep-alive connection before any answer (the
 * upstream had just closed it); the upstream client sends it again on a new
 * connection, so this does not leave it.
 */
export class StaleConnection extends ImageCacheError {
  constructor(what: string) {
    super('ERR_STALE_CONNECTION', `${what}: the kept-alive connection was closed by the upstream before it answered`);
  }
}

/** An answer of the upstream (a document, a token) longer than the node reads. */
export class AnswerTooLong extends ImageCacheError {
  constructor(limit: number) {
    super('ERR_ANSWER_TOO_LONG', `the answer is longer than ${limit} bytes`);
  }
}

/** A cache file held fewer bytes than its image (or its fill) said: what was sent of it stops there. */
export class CacheFileShort extends ImageCacheError {
  constructor(position: number, expected: number) {
    super('ERR_CACHE_FILE_SHORT', `the cache file ended at byte ${position} of ${expected}`);
  }
}

/** The source sent more or fewer bytes than the range asked of it (the rest of an image, after the cache's disk failed). */
export class WrongRangeLength extends ImageCacheError {
  constructor(received: number, wanted: number) {
    super('ERR_WRONG_RANGE_LENGTH', received > wanted ? `the source sent more than the ${wanted} bytes asked for` : `the source sent ${received} of the ${wanted} bytes asked for`);
  }
}

/** The reader of a caching stream stopped before the end of the image: nothing of it is cached. */
export class ReaderStopped extends ImageCacheError {
  constructor(imageId: string) {
    super('ERR_READER_STOPPED', `the reader of image '${imageId}' stopped before its end; nothing was cached`);
  }
}

/** The hash thread could not hash a fill's file (or was stopped): its checksum is unknown, and nothing is published. */
export class HashingFailed extends ImageCacheError {
  constructor(reason: string) {
    super('ERR_HASHING_FAILED', `hashing the image failed: ${reason}`);
  }
}

/**
 * A bad value in the configuration of a command or the node: names the
 * option and where it was set (a file, an environment variable, a flag), so
 * that the operator knows what to change. `origin` is undefined where the
 * option itself says where (`--config-file FILE cannot be read`).
 */
export class ConfigurationError extends ImageCacheError {
  readonly option: string;
  readonly origin: string | undefined;
  constructor(option: string, origin: string | undefined, reason: string) {
    super('ERR_CONFIGURATION', `${option}${origin === undefined ? '' : ` (${origin})`} ${reason}`);
    this.option = option;
    this.origin = origin;
  }
}

/** Wrong usage of a command, found by its own checks (after commander's): exit 2, and nothing has been opened or created. */
export class UsageError extends ImageCacheError {
  constructor(message: string) {
    super('ERR_USAGE', message);
  }
}

/**
 * A node's cache API answered with an error status (`status`; its message is
 * Glance's `{"message": ...}` when it sent one), or could not be reached or
 * did not answer in time (`status` undefined).
 */
export class RemoteError extends ImageCacheError {
  readonly status: number | undefined;
  constructor(status: number | undefined, message: string) {
    super('ERR_REMOTE', message);
    this.status = status;
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

/** A connection that was not established within its connect timeout (peer_connect_timeout for another node). */
export class ConnectTimedOut extends ImageCacheError {
  constructor(what: string, ms: number) {
    super('ERR_CONNECT_TIMEOUT', `${what}: no connection within ${ms / 1000} s`);
  }
}

/**
 * Another node could not give this node an image's bytes: it refused (busy,
 * not holding the image), could not be reached, or its stream failed. The
 * node asks another one, or the upstream; a client never sees this error.
 */
export class PeerFailed extends ImageCacheError {
  readonly peerUrl: string;
  /** The metrics' reason: not_cached, busy, connect, reset, stall, wrong_bytes, refused, error. */
  readonly reason: string;
  constructor(peerUrl: string, reason: string, detail: string, options?: { cause?: unknown }) {
    super('ERR_PEER_FAILED', `node ${peerUrl} (${reason}): ${detail}`, options);
    this.peerUrl = peerUrl;
    this.reason = reason;
  }
}

/** A message on the notifications queue that is not an oslo.messaging notification of an image. */
export class MalformedNotification extends ImageCacheError {
  readonly reason: string;
  constructor(reason: string) {
    super('ERR_MALFORMED_NOTIFICATION', `Not a Glance notification: ${reason}`);
    this.reason = reason;
  }
}
