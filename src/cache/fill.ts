import fs from 'node:fs';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CacheWriteFailed, ChecksumMismatch, SourceStalled, WrongImageLength } from '../errors.js';
import { isStorageFault } from '../fs/files.js';
import type { CacheWriter } from '../content/writer.js';
import type { ExpectedChecksum } from '../types.js';
import { checksumRule, ChecksumVerifier, type ChecksumRule } from './checksum.js';
import { FileHasher } from './file-hasher.js';
import type { FillProgress } from './fill-progress.js';

/** Images this large are hashed on a hash thread; smaller ones inline, where a thread's round trip would cost more than it saves. */
const HASH_OFF_THREAD_FROM = 4 * 1024 * 1024;

/** What a fill reports as it goes (metrics). */
export interface FillEvents {
  upstreamBytes(n: number): void;
}

/**
 * One image being fetched from its source into the cache, in this process:
 * source → length and stall guard → checksum → the cache writer. It runs to
 * its end whoever reads it: readers follow it from disk (GrowingFileReader),
 * at their own pace, and a reader that goes away changes nothing.
 *
 * The descriptor readers share is opened on the incomplete file while we hold
 * its claim, so it is ours; it stays valid through the publish (a rename) and
 * is closed when the fill and every reader are done with it.
 */
export class Fill implements FillProgress {
  written = 0;
  outcome: 'committed' | Error | undefined;
  readonly readFd: number;
  private users = 1;
  private waiters: Array<() => void> = [];
  /** Settles with the outcome; never rejects. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private source: Readable | undefined;

  constructor(
    readonly imageId: string,
    readonly size: number,
    private readonly expected: ExpectedChecksum,
    private readonly writer: CacheWriter,
    incompletePath: string,
  ) {
    this.readFd = fs.openSync(incompletePath, 'r');
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    writer.on('progress', (bytes: number) => {
      this.written = bytes;
      this.wake();
    });
  }

  changed(seen: number): Promise<void> {
    if (this.outcome !== undefined || this.written !== seen) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Another reader of the shared descriptor; call the returned function once when done. */
  acquire(): () => void {
    this.users++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.unuse();
    };
  }

  /** Streams `source` (a 200 body) into the cache; the outcome is set when it ends. */
  start(source: Readable, stallMs: number, events: FillEvents): void {
    this.source = source;
    const rule = checksumRule(this.expected);
    const guard = new LengthGuard(this.imageId, this.size, stallMs, events);
    const hasher = rule !== undefined && this.size >= HASH_OFF_THREAD_FROM ? FileHasher.tryStart(this.readFd, rule.algorithm) : undefined;
    let done: Promise<void>;
    if (rule === undefined) done = pipeline(source, guard, this.writer);
    else if (hasher === undefined) done = pipeline(source, guard, new ChecksumVerifier(rule), this.writer);
    else done = this.hashedOffThread(rule, hasher, pipeline(source, guard, this.writer));
    done.then(
      () => this.settle('committed'),
      // The disk's failures apart from the source's: the bytes written so far are right, and readers may take the rest from the source.
      (err: Error) => this.settle(isStorageFault(err) ? new CacheWriteFailed(this.imageId, err) : err),
    );
  }

  /**
   * The checksum computed on a hash thread from the file as it is written,
   * and checked by the commit before it publishes: the main thread only
   * receives, writes and sends. The thread holds the shared descriptor
   * until it has stopped reading.
   */
  private async hashedOffThread(rule: ChecksumRule, hasher: FileHasher, written: Promise<void>): Promise<void> {
    const release = this.acquire();
    this.writer.on('progress', (bytes: number) => hasher.written(bytes));
    let digested = false;
    this.writer.verifyBeforePublish(async () => {
      const actual = await hasher.digest(this.writer.bytesWritten);
      digested = true;
      if (actual !== rule.expected) throw new ChecksumMismatch(rule.algorithm, rule.expected, actual);
    });
    try {
      await written;
    } finally {
      if (!digested) await hasher.cancel();
      release();
    }
  }

  /** Ends the fill before its source has answered (or to shut down): nothing is cached. */
  fail(err: Error): void {
    if (this.source !== undefined) {
      this.source.destroy(err);
      return;
    }
    // Without an error: nobody listens to the writer's, and destroying it is what discards the file.
    this.writer.destroy();
    this.settle(err);
  }

  private settle(outcome: 'committed' | Error): void {
    if (this.outcome !== undefined) return;
    this.outcome = outcome;
    this.wake();
    this.unuse();
    this.resolveDone();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private unuse(): void {
    if (--this.users === 0) fs.closeSync(this.readFd);
  }
}

/**
 * Fails the fill when the source sends more or fewer bytes than the image's
 * size, or nothing for `stallMs` (upstream_timeout). A short body must never
 * be cached or end a response as if it were whole.
 */
class LengthGuard extends Transform {
  private received = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly imageId: string,
    private readonly size: number,
    private readonly stallMs: number,
    private readonly events: FillEvents,
  ) {
    super();
    this.arm();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.arm();
    this.received += chunk.length;
    this.events.upstreamBytes(chunk.length);
    if (this.received > this.size) {
      callback(new WrongImageLength(this.imageId, this.received, this.size));
      return;
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.disarm();
    callback(this.received === this.size ? null : new WrongImageLength(this.imageId, this.received, this.size));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.disarm();
    callback(error);
  }

  private arm(): void {
    if (this.timer !== undefined) this.timer.refresh();
    else this.timer = setTimeout(() => this.destroy(new SourceStalled(this.imageId, this.stallMs / 1000)), this.stallMs);
  }

  private disarm(): void {
    clearTimeout(this.timer);
  }
}
