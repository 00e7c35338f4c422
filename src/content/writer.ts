import fs from 'node:fs';
import { channel } from 'node:diagnostics_channel';
import { Writable } from 'node:stream';
import { nowSeconds } from '../clock.js';
import { CacheClosed, ClaimLost, ImageAlreadyCached, ImageBeingCached, WriterClosed } from '../errors.js';
import type { Logger } from '../log.js';
import { claimIncomplete, claimIntact, isAt, type Claim } from './claim.js';
import type { DirectorySync } from '../fs/directory-sync.js';
import { errorCode, isOutOfSpace, unlinkIfExistsSync } from '../fs/files.js';
import type { CacheIo } from '../fs/io.js';

/** Where a driver keeps an image's metadata, as a commit needs it. */
export interface CommitMetadata {
  /**
   * Before the publish, on the incomplete file, so that the active file never
   * exists without it (the xattr driver's attributes). A failure aborts the commit.
   */
  beforePublish(incompletePath: string, now: number): void | Promise<void>;
  /**
   * The record of the new image (size, both times now, hits 0), begun when the
   * commit begins so that a store with round trips (PostgreSQL) can stage it
   * while the file is fsynced, and made visible by commit() after the publish:
   * no record exists before its file does. A failure is logged, not raised:
   * the image is cached either way, listings show an unrecorded file from its
   * stat, and verify() records it.
   */
  record(size: number, now: number): PendingRecord;
  /**
   * Withdraw that record (only if it is still the one written at `now`): the
   * image was deleted between the publish and the record, and a record that
   * outlived its copy would describe the next one.
   */
  unrecord(now: number): void | Promise<void>;
}

/** A record begun by CommitMetadata.record: committed after the publish, or abandoned if there is none. */
export interface PendingRecord {
  commit(): void | Promise<void>;
  abandon(): void | Promise<void>;
}

export interface WriterPaths {
  incomplete: string;
  invalid: string;
  active: string;
  queueMarker: string;
}

/** Everything a writer needs from its cache, given by the content store. */
export interface WriterContext {
  imageId: string;
  paths: WriterPaths;
  io: CacheIo;
  directory: DirectorySync;
  metadata: CommitMetadata;
  commits: CommitTracker;
  log: Logger;
  /** Told once the commit is complete (published, recorded, marker popped), before 'finish': maintenance's cue. */
  committed?: (size: number) => void;
}

/**
 * The commits in flight of one cache, so that close() can wait for them and
 * nothing is published after it.
 */
export class CommitTracker {
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;

  /** Runs a commit; rejects with CacheClosed once close() has been called. */
  run(commit: () => Promise<void>): Promise<void> {
    if (this.closed) return Promise.reject(new CacheClosed('commit an image'));
    const running = commit().finally(() => this.inFlight.delete(running));
    this.inFlight.add(running);
    return running;
  }

  /** Refuses new commits and resolves once those in flight have settled. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inFlight]);
  }
}

/** What an abandoned writer leaves for the finalizer: enough to give its file up, nothing that keeps the writer alive. */
interface Held {
  imageId: string;
  claim: Claim;
  paths: WriterPaths;
  io: CacheIo;
}

/**
 * Published on when a writer dropped without end() or destroy() has been
 * collected and its file moved to invalid/ (message: { imageId }).
 */
export const abandonedWriterChannel = channel('image-cache:writer-abandoned');

/**
 * A Writable onto incomplete/<id>, which the writer holds under its claim
 * (claim.ts) from open() until its file is published or discarded.
 *
 * Ending it commits, and the whole commit is commit() below: begin the
 * record, fsync (and run the verifyBeforePublish check), check the file is still ours, refuse if the image got cached
 * meanwhile, publish (rename into place), then make the rename durable and
 * commit the record together (withdrawing it if a delete got in between), pop
 * the queue marker, release the claim, tell the cache (which prunes if the
 * commit took it past its limit) and only then emit 'finish'. Once
 * the file is published the writer reports success whatever follows, because
 * readers may already be reading it.
 *
 * Destroying it, or dropping it unfinished (garbage collection), moves the
 * partial file to invalid/ (removes it, when the disk is full) and records nothing.
 */
export class CacheWriter extends Writable {
  readonly imageId: string;
  /** The claim took over the file of a writer that had died. */
  readonly tookOver: boolean;
  /** Bytes written to disk so far; 'progress' is emitted each time it grows. */
  bytesWritten = 0;
  private claim: Claim | undefined;
  private committing: Promise<void> | undefined;
  private published = false;
  private check: (() => Promise<void>) | undefined;
  private readonly ctx: WriterContext;

  private constructor(ctx: WriterContext, claim: Claim) {
    super({ highWaterMark: 1024 * 1024 });
    this.ctx = ctx;
    this.imageId = ctx.imageId;
    this.claim = claim;
    this.tookOver = claim.tookOver;
    abandoned.register(this, { imageId: ctx.imageId, claim, paths: ctx.paths, io: ctx.io }, this);
  }

  /**
   * Claims the image. Rejects with ImageAlreadyCached when it is cached, and
   * with ImageBeingCached while a live writer (in any process) holds it.
   */
  static open(ctx: WriterContext): CacheWriter {
    const { paths, imageId } = ctx;
    if (fs.existsSync(paths.active)) throw new ImageAlreadyCached(imageId);
    const claim = claimIncomplete(paths, ctx.io);
    if (claim === undefined) throw new ImageBeingCached(imageId);
    // Checked again under the claim: a writer that committed just before we
    // claimed published before it let go, so its file is visible now.
    if (fs.existsSync(paths.active)) {
      discard({ imageId, claim, paths, io: ctx.io });
      throw new ImageAlreadyCached(imageId);
    }
    if (claim.tookOver) ctx.log.info({ imageId }, 'took over the incomplete file of a writer that died');
    return new CacheWriter(ctx, claim);
  }

  /**
   * A check the commit runs beside its fsync, before it publishes: if it
   * rejects, nothing is published and the file goes to invalid/. For a
   * verification that runs apart from the writes (a checksum computed on
   * another thread as the file grows).
   */
  verifyBeforePublish(check: () => Promise<void>): void {
    this.check = check;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.writeChunks([chunk], callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.writeChunks(chunks.map((c) => c.chunk), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.committing = this.ctx.commits.run(() => this.commit());
    this.committing.then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // A commit under way decides the file's fate; once it has, give up what is left.
    const settled = this.committing?.catch(() => {}) ?? Promise.resolve();
    settled.then(() => {
      if (!this.published) this.abort(error);
      callback(error);
    }, callback);
  }

  private writeChunks(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    try {
      this.writeAll(chunks);
    } catch (err) {
      callback(err as Error);
      return;
    }
    callback();
  }

  /**
   * Blocking writes, like nginx's cache writes: they land in the page cache in
   * microseconds, less than a thread-pool hop costs. Durability comes from the
   * fsync at commit, which is asynchronous because its latency has no bound.
   */
  private writeAll(chunks: Buffer[]): void {
    const { fd } = this.requireClaim();
    for (const chunk of chunks) {
      let offset = 0;
      while (offset < chunk.length) {
        const written = fs.writeSync(fd, chunk, offset, chunk.length - offset, this.bytesWritten);
        offset += written;
        this.bytesWritten += written;
      }
    }
    this.emit('progress', this.bytesWritten);
  }

  /** The whole commit, in order. Throws (and the file goes to invalid/) only before the publish. */
  private async commit(): Promise<void> {
    const { paths, io, metadata, log, directory } = this.ctx;
    const size = this.bytesWritten;
    const claim = this.requireClaim();
    const now = nowSeconds();
    const record = startRecord(metadata, size, now);
    try {
      // Both settle before either counts, and a failed check counts first: a wrong file is never
      // reported as a disk failure (whose bytes a reader may trust).
      const [synced, checked] = await Promise.allSettled([io.fsync(claim.fd), this.check?.()]);
      if (checked.status === 'rejected') throw checked.reason;
      if (synced.status === 'rejected') throw synced.reason;
      if (!claimIntact(claim)) throw new ClaimLost(this.imageId, 'was removed or replaced');
      // Only a process outside the cache can have published the image meanwhile (we hold the claim).
      if (fs.existsSync(paths.active)) throw new ImageAlreadyCached(this.imageId);
      await metadata.beforePublish(paths.incomplete, now);
      // We hold the claim, so no cache process can have changed incomplete/<id>
      // since the check: the rename publishes our file. (Nothing is checked
      // after it: from this instant the image is public, and a delete and a
      // new copy by other processes may legitimately follow at once.)
      io.rename(paths.incomplete, paths.active);
    } catch (err) {
      this.abort(err);
      await attempt(() => record.abandon()).catch((abandonError: unknown) => log.error({ imageId: this.imageId, err: abandonError }, 'could not abandon the record of an image that was not published'));
      throw err;
    }

    // Published: readers may open it now. Nothing below fails the writer.
    this.published = true;
    abandoned.unregister(this);
    const [synced, recorded] = await Promise.allSettled([directory.sync(), attempt(() => record.commit())]);
    if (synced.status === 'rejected') log.error({ imageId: this.imageId, err: synced.reason }, 'could not fsync the cache directory after publishing an image; it may not survive a power failure');
    if (recorded.status === 'rejected') log.error({ imageId: this.imageId, err: recorded.reason }, 'could not record a cached image; verify() will record it from its file');
    // A delete (or prune) in another process may have come between the publish and the record:
    // then the record describes a copy that is gone, and must go too.
    else if (!isAt(paths.active, claim)) {
      try {
        await metadata.unrecord(now);
      } catch (err) {
        log.error({ imageId: this.imageId, err }, 'could not withdraw the record of an image deleted while it was committed; verify() will drop it');
      }
    }
    try {
      unlinkIfExistsSync(paths.queueMarker);
    } catch (err) {
      log.error({ imageId: this.imageId, err }, 'could not remove the queue marker of a cached image');
    }
    this.release();
    try {
      this.ctx.committed?.(size);
    } catch (err) {
      log.error({ imageId: this.imageId, err }, 'a listener of a cached image\'s commit failed');
    }
  }

  /**
   * Gives the file up, if it is still ours: to invalid/, or removed when the
   * disk ran out of room (`cause`). Such a file holds right bytes, so there
   * is nothing in it to inspect, and kept in invalid/ it would keep a full
   * disk full until the next clean. (After an I/O error it is kept: its
   * bytes are suspect.) The claim is released.
   * Idempotent.
   */
  private abort(cause?: unknown): void {
    const claim = this.claim;
    if (claim === undefined) return;
    this.claim = undefined;
    abandoned.unregister(this);
    try {
      discard({ imageId: this.imageId, claim, paths: this.ctx.paths, io: this.ctx.io }, isOutOfSpace(cause) ? 'remove' : 'quarantine');
    } catch (err) {
      this.ctx.log.error({ imageId: this.imageId, err }, 'could not give up an unfinished cache file');
    }
  }

  private release(): void {
    const claim = this.claim;
    this.claim = undefined;
    if (claim !== undefined) fs.closeSync(claim.fd);
  }

  private requireClaim(): Claim {
    if (this.claim === undefined) throw new WriterClosed(this.imageId);
    return this.claim;
  }
}

/** Runs a step that may be synchronous (and throw) or asynchronous, as a promise that rejects instead of throwing. */
async function attempt(step: () => void | Promise<void>): Promise<void> {
  await step();
}

/** Begins the record; a failure to begin is kept for commit() or abandon() to report, like any other. */
function startRecord(metadata: CommitMetadata, size: number, now: number): PendingRecord {
  try {
    return metadata.record(size, now);
  } catch (err) {
    const fail = (): never => {
      throw err;
    };
    return { commit: fail, abandon: () => {} };
  }
}

/** Moves a claimed file to invalid/, or removes it (if it is still at its path), and releases the claim. */
function discard({ claim, paths, io }: Held, how: 'quarantine' | 'remove' = 'quarantine'): void {
  try {
    if (!claimIntact(claim)) return;
    if (how === 'remove') fs.unlinkSync(paths.incomplete);
    else io.rename(paths.incomplete, paths.invalid);
  } catch (err) {
    if (errorCode(err) !== 'ENOENT') throw err;
  } finally {
    fs.closeSync(claim.fd);
  }
}

/** A writer dropped without end() or destroy() still gives its file up. */
const abandoned = new FinalizationRegistry<Held>((held) => {
  try {
    discard(held);
  } catch {
    // nothing to report to: the writer is gone
  }
  abandonedWriterChannel.publish({ imageId: held.imageId });
});
