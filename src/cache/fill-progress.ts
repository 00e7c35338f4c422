import fs from 'node:fs';
import { CacheWriteFailed, FillAbandoned, SourceStalled } from '../errors.js';
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

/**
 * Resolves once the fill has more than `bytes` bytes on disk, or has
 * committed; rejects with the fill's error if it fails first. The one wait
 * for a fill: a response waits for its first byte before it sends its
 * headers (so a fill that fails at once is answered with a clean 502), a
 * reader that has caught up waits for the next ones, and a prefetch waits
 * (with `bytes` = Infinity) for the commit.
 */
export async function untilWritten(progress: FillProgress, bytes: number): Promise<void> {
  for (;;) {
    const { outcome, written } = progress;
    if (outcome instanceof Error) throw outcome;
    if (outcome === 'committed' || written > bytes) return;
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
        ? new CacheWriteFailed(this.imageId, 'the disk ran out of room under the fill of another process')
        : new FillAbandoned(this.imageId);
    } else if (Date.now() - this.lastGrowth > this.stallMs) {
      // The same error as a stall of our own fill's source: to the client, the image's bytes stopped coming either way.
      this.settled = new SourceStalled(this.imageId, this.stallMs / 1000, 'the writer of its fill in another process');
    }
  }
}
