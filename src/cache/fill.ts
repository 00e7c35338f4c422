import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { CacheWriteFailed } from '../errors.js';
import { isStorageFault } from '../fs/files.js';
import type { CacheWriter } from '../content/writer.js';
import type { ExpectedChecksum } from '../types.js';
import type { BytesFrom, FillOpening } from './fill-source.js';
import type { FillProgress } from './fill-progress.js';
import { imageCheck, pipeImage } from './image-pipeline.js';

/** What a fill reports as it goes (metrics). */
export interface FillEvents {
  fillBytes(from: BytesFrom, n: number): void;
}

/**
 * One image being fetched from its source into the cache, in this process:
 * source → length and stall guard → checksum → the cache writer (pipeImage). It runs to
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
  private opening: FillOpening | undefined;

  constructor(
    readonly imageId: string,
    readonly size: number,
    private readonly expected: ExpectedChecksum,
    private readonly writer: CacheWriter,
    private readonly incompletePath: string,
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

  /** Where the bytes have come from, in order (the request log's bytesFrom). */
  get sources(): readonly string[] {
    return this.opening?.sources ?? [];
  }

  /** Streams the opening's body (a 200) into the cache; the outcome is set when it ends. */
  start(opening: FillOpening, stallMs: number, events: FillEvents): void {
    const source = opening.response.body;
    this.source = source;
    this.opening = opening;
    let onBytes: ((bytes: number) => void) | undefined;
    if (opening.countBytes !== undefined) opening.countBytes((from, bytes) => events.fillBytes(from, bytes));
    else onBytes = (bytes) => events.fillBytes('upstream', bytes);
    const check = imageCheck(this.imageId, this.expected, { size: this.size, stallMs: opening.guardsStalls ? undefined : stallMs, onBytes });
    pipeImage(source, { writer: this.writer, incompletePath: this.incompletePath }, check).then(
      () => this.settle('committed'),
      // The disk's failures apart from the source's: the bytes written so far are right, and readers may take the rest from the source.
      (err: Error) => this.settle(isStorageFault(err) ? new CacheWriteFailed(this.imageId, err) : err),
    );
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
    this.opening?.ended(outcome);
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
