import fs from 'node:fs';
import { CacheWriteFailed } from '../errors.js';
import { writerOutcome } from '../content/claim.js';

/**
 * How far a fill has got, as its followers see it: the bytes on disk they
 * may read, and whether it ended (committed, or failed with an error).
 */
export interface FillProgress {
  /** Bytes written to the file so far. */
  readonly written: number;
  /** Undefined while the fill runs. */
  readonly outcome: 'committed' | Error | undefined;
  /** Resolves once `written` differs from `seen` or the outcome is known. */
  changed(seen: number): Promise<void>;
}

/** A fill was given up without a publish by a writer in another process (it aborted or died). */
export class FillAbandoned extends Error {
  readonly code = 'ERR_FILL_ABANDONED';
  constructor(imageId: string) {
    super(`the fill of image '${imageId}' in another process ended without caching it`);
    this.name = 'FillAbandoned';
  }
}

/**
 * Resolves once the fill has bytes at `start` (or has committed); rejects with
 * the fill's error if it fails first. A response waits for this before it
 * sends its headers, so a fill that fails at once is answered with a clean 502.
 */
export async function untilReadable(progress: FillProgress, start: number): Promise<void> {
  for (;;) {
    const { outcome, written } = progress;
    if (outcome instanceof Error) throw outcome;
    if (outcome === 'committed' || written > start) return;
    await progress.changed(written);
  }
}

/**
 * The progress of a fill that another process runs, seen through our own
 * descriptor on its incomplete/ file: the size says how much is written, the
 * writer's lock says whether it is still writing, and where the file ended up
 * says how it ended (published at the image's path, or not). Polled: no
 * notification crosses processes, and a poll is an fstat and a lock attempt.
 */
export class ForeignFillProgress implements FillProgress {
  private lastSize = 0;
  private lastGrowth = Date.now();
  private settled: 'committed' | Error | undefined;

  constructor(
    private readonly fd: number,
    private readonly imageId: string,
    private readonly activePath: string,
    private readonly expectedSize: number,
    /** How long the other writer may write nothing before its followers give up (it should time out by itself first). */
    private readonly stallMs: number,
    private readonly pollMs = 10,
  ) {
    this.poll();
  }

  // The getters tell what the last poll saw; a reader polls (through changed()) only once it has caught up.
  get written(): number {
    return this.lastSize;
  }

  get outcome(): 'committed' | Error | undefined {
    return this.settled;
  }

  async changed(seen: number): Promise<void> {
    let interval = this.pollMs;
    for (;;) {
      this.poll();
      if (this.settled !== undefined || this.lastSize !== seen) return;
      await new Promise((resolve) => setTimeout(resolve, interval));
      // A writer that sends nothing for a while is waiting on its source: poll it less often.
      interval = Math.min(interval * 2, 100);
    }
  }

  private poll(): void {
    if (this.settled !== undefined) return;
    // The outcome first: a size read after it could miss the last bytes of a writer that just finished.
    const state = writerOutcome(this.fd, this.activePath);
    const size = fs.fstatSync(this.fd).size;
    if (size !== this.lastSize) {
      this.lastSize = size;
      this.lastGrowth = Date.now();
    }
    if (state === 'published') {
      this.settled = size === this.expectedSize ? 'committed' : new FillAbandoned(this.imageId);
    } else if (state === 'abandoned') {
      // A writer removes its file (rather than quarantine it) only when the disk ran out of room:
      // its bytes were right, and the follower may take the rest from the source, as one in its process would.
      this.settled = fs.fstatSync(this.fd).nlink === 0
        ? new CacheWriteFailed(this.imageId, new Error('the disk ran out of room under the fill of another process'))
        : new FillAbandoned(this.imageId);
    } else if (Date.now() - this.lastGrowth > this.stallMs) {
      this.settled = new Error(`the fill of image '${this.imageId}' in another process wrote nothing for ${Math.round(this.stallMs / 1000)} s`);
    }
  }
}
