import fs from 'node:fs';
import { Writable } from 'node:stream';
import { ImageBeingCached } from '../errors.js';
import { errorCode, fsyncFd } from './files.js';

/** What a driver does around the file work of a commit. */
export interface CommitHooks {
  /** Record the image (size, times, hits 0) before its file becomes visible. */
  record(size: number): Promise<void> | void;
  /** Undo `record` when publishing the file failed. */
  unrecord(): Promise<void> | void;
  /** After the rename: make it durable and pop the queue marker. */
  published(): Promise<void>;
}

export interface CacheWriterPaths {
  incomplete: string;
  invalid: string;
  active: string;
}

interface OpenFile {
  fd: number;
  ino: number;
  dev: number;
  paths: CacheWriterPaths;
  heartbeat?: NodeJS.Timeout;
}

/**
 * A Writable onto incomplete/<id>. Ending it commits (fsync, record, atomic
 * rename into place, directory fsync, queue marker popped) and 'finish' is
 * emitted only once all of that is done. Destroying it, or dropping it
 * unfinished (garbage collection), moves the partial file to invalid/ and
 * leaves no record.
 *
 * The claim on the image is the exclusive creation of incomplete/<id>, which
 * works across processes. A live writer keeps the file's mtime fresh (writes do,
 * and a heartbeat does while the source is idle), so a file whose mtime is older
 * than the lease belongs to a dead writer and may be taken over.
 */
export class CacheWriter extends Writable {
  readonly imageId: string;
  /** Bytes written to disk so far; 'progress' is emitted each time it grows. */
  bytesWritten = 0;
  private file: OpenFile | undefined;
  private readonly hooks: CommitHooks;
  private settled = false;

  private constructor(imageId: string, file: OpenFile, hooks: CommitHooks, leaseMs: number) {
    super({ highWaterMark: 1024 * 1024 });
    this.imageId = imageId;
    this.file = file;
    this.hooks = hooks;
    // The timer holds the writer only weakly, so that an abandoned writer can
    // be collected; the registry then stops the timer and discards the file.
    const self = new WeakRef(this);
    file.heartbeat = setInterval(() => self.deref()?.touch(), Math.max(10, Math.floor(leaseMs / 3)));
    file.heartbeat.unref();
    abandoned.register(this, file, this);
  }

  /** Claims incomplete/<id> exclusively; rejects with ImageBeingCached while a live writer holds it. */
  static open(imageId: string, paths: CacheWriterPaths, hooks: CommitHooks, leaseMs: number): CacheWriter {
    const file = claim(imageId, paths, leaseMs);
    return new CacheWriter(imageId, file, hooks, leaseMs);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.writeChunks([chunk], callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.writeChunks(chunks.map((c) => c.chunk), callback);
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

  override _final(callback: (error?: Error | null) => void): void {
    this.commit().then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.settled) {
      callback(error);
      return;
    }
    this.abort().then(
      () => callback(error),
      (abortError: Error) => callback(error ?? abortError),
    );
  }

  /**
   * Blocking writes, like nginx's cache writes: they land in the page cache in
   * microseconds, less than a thread-pool hop costs. Durability comes from the
   * fsync at commit, which is asynchronous because its latency has no bound.
   */
  private writeAll(chunks: Buffer[]): void {
    const file = this.requireFile();
    for (const chunk of chunks) {
      let offset = 0;
      while (offset < chunk.length) {
        const written = fs.writeSync(file.fd, chunk, offset, chunk.length - offset, this.bytesWritten);
        offset += written;
        this.bytesWritten += written;
      }
    }
    this.emit('progress', this.bytesWritten);
  }

  private async commit(): Promise<void> {
    const file = this.requireFile();
    this.stopHeartbeat();
    // The record is written while the thread pool runs the fsync; the rename,
    // which makes the file visible, waits for both. A record without its
    // active file is never reported, so recording first is safe.
    const synced = fsyncFd(file.fd);
    let recorded = false;
    try {
      await this.hooks.record(this.bytesWritten);
      recorded = true;
      await synced;
      assertStillOurs(file);
      fs.renameSync(file.paths.incomplete, file.paths.active);
    } catch (err) {
      await synced.catch(() => {});
      if (recorded) await this.hooks.unrecord();
      throw err;
    }
    this.settle();
    fs.closeSync(file.fd);
    await this.hooks.published();
  }

  private async abort(): Promise<void> {
    const file = this.file;
    this.settle();
    if (file !== undefined) discard(file);
  }

  private settle(): void {
    this.settled = true;
    this.stopHeartbeat();
    abandoned.unregister(this);
  }

  private stopHeartbeat(): void {
    if (this.file?.heartbeat !== undefined) clearInterval(this.file.heartbeat);
  }

  private touch(): void {
    const file = this.file;
    if (file === undefined || this.settled) return;
    const now = new Date();
    fs.futimes(file.fd, now, now, () => {});
  }

  private requireFile(): OpenFile {
    if (this.file === undefined || this.settled) throw new Error(`cache writer for '${this.imageId}' is closed`);
    return this.file;
  }
}

function claim(imageId: string, paths: CacheWriterPaths, leaseMs: number): OpenFile {
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL;
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = fs.openSync(paths.incomplete, flags, 0o644);
      const st = fs.fstatSync(fd);
      return { fd, ino: st.ino, dev: st.dev, paths };
    } catch (err) {
      if (errorCode(err) !== 'EEXIST' || attempt > 0 || !takeOverStale(paths, leaseMs)) {
        if (errorCode(err) === 'EEXIST') throw new ImageBeingCached(imageId);
        throw err;
      }
    }
  }
}

/**
 * A leftover incomplete file whose mtime is older than the lease belongs to a
 * writer that died: move it to invalid/ (rename is atomic, so of several
 * processes trying, one wins) and let the caller claim again.
 */
function takeOverStale(paths: CacheWriterPaths, leaseMs: number): boolean {
  try {
    const st = fs.statSync(paths.incomplete);
    if (Date.now() - st.mtimeMs < leaseMs) return false;
    fs.renameSync(paths.incomplete, paths.invalid);
    return true;
  } catch (err) {
    return errorCode(err) === 'ENOENT';
  }
}

/**
 * clean() may have removed our incomplete file, or a new writer may have taken
 * it over after we stalled: never publish a file that is not the one we wrote.
 */
function assertStillOurs(file: OpenFile): void {
  const st = fs.statSync(file.paths.incomplete, { throwIfNoEntry: false });
  if (st === undefined || st.ino !== file.ino || st.dev !== file.dev) {
    throw new Error(`incomplete file ${file.paths.incomplete} was removed or replaced while it was being written`);
  }
}

/** Closes the file and moves it to invalid/ (only if it is still ours). */
function discard(file: OpenFile): void {
  if (file.heartbeat !== undefined) clearInterval(file.heartbeat);
  try {
    fs.closeSync(file.fd);
  } catch {
    // already closed
  }
  const st = fs.statSync(file.paths.incomplete, { throwIfNoEntry: false });
  if (st !== undefined && st.ino === file.ino && st.dev === file.dev) {
    try {
      fs.renameSync(file.paths.incomplete, file.paths.invalid);
    } catch (err) {
      if (errorCode(err) !== 'ENOENT') throw err;
    }
  }
}

/** A writer dropped without end() or destroy() still gives its file up. */
const abandoned = new FinalizationRegistry<OpenFile>((file) => {
  try {
    discard(file);
  } catch {
    // nothing to report to: the writer is gone
  }
});
