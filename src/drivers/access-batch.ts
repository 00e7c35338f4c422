import fs from 'node:fs';
import type { Logger } from '../log.js';

/** Reads of one image not yet written to the metadata store. */
export interface PendingAccess {
  hits: number;
  lastAccessed: number;
  /**
   * The file read (inode, size, mtime), for an image that has no record yet:
   * it gets one, but only if that same file is still the image (a read of an
   * earlier copy must not describe a newer one).
   */
  ino: number;
  size: number;
  lastModified: number;
}

/** One completed read, as openForRead reports it. */
export interface Access {
  at: number;
  ino: number;
  size: number;
  lastModified: number;
}

export type WriteAccesses = (entries: Map<string, PendingAccess>) => void | Promise<void>;

/**
 * Reads recorded in memory and written together: one transaction (or one pass
 * over the files) for however many reads closed meanwhile, instead of one per
 * read. Every driver records its reads through one.
 *
 * One write runs at a time, and at most one more waits behind it, taking
 * whatever reads have gathered by the time it starts: under a steady stream of
 * reads the queue never grows, each write just gets bigger. flush() resolves
 * once the reads added before it was called are written, so it finishes under
 * any load: at worst it waits for the write in flight and the one after.
 */
export class AccessBatch {
  private pending = new Map<string, PendingAccess>();
  private scheduled: NodeJS.Immediate | undefined;
  private inFlight: Promise<void> | undefined;
  /** The write that starts when the one in flight ends. */
  private next: Promise<void> | undefined;

  constructor(
    private readonly write: WriteAccesses,
    private readonly log: Logger,
    private readonly driverName: () => string,
  ) {}

  add(imageId: string, access: Access): void {
    const entry = this.pending.get(imageId);
    if (entry) {
      entry.hits += 1;
      entry.lastAccessed = Math.max(entry.lastAccessed, access.at);
      entry.ino = access.ino;
      entry.size = access.size;
      entry.lastModified = access.lastModified;
    } else {
      this.pending.set(imageId, { hits: 1, lastAccessed: access.at, ino: access.ino, size: access.size, lastModified: access.lastModified });
    }
    this.scheduled ??= setImmediate(() => {
      this.scheduled = undefined;
      void this.flush();
    });
  }

  /** Drops the unwritten reads of an image whose record is being replaced or removed. */
  forget(imageId: string): void {
    this.pending.delete(imageId);
  }

  /**
   * Writes the reads added so far. Resolves when they are written (a failed
   * write is logged: hits are statistics, and retrying them forever would
   * hold every later batch back).
   */
  flush(): Promise<void> {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    if (this.pending.size === 0) return this.settled();
    if (this.inFlight === undefined) return this.start();
    this.next ??= this.inFlight.then(() => {
      this.next = undefined;
      return this.start();
    });
    return this.next;
  }

  /** Resolves once the writes already under way or queued have settled, without queueing one for newer reads. */
  settled(): Promise<void> {
    return this.next ?? this.inFlight ?? Promise.resolve();
  }

  private start(): Promise<void> {
    const taken = this.pending;
    this.pending = new Map();
    if (taken.size === 0) return Promise.resolve();
    const running: Promise<void> = this.writeLogged(taken).finally(() => {
      if (this.inFlight === running) this.inFlight = undefined;
    });
    this.inFlight = running;
    return running;
  }

  private async writeLogged(entries: Map<string, PendingAccess>): Promise<void> {
    try {
      await this.write(entries);
    } catch (err) {
      this.log.error({ driver: this.driverName(), err, images: entries.size }, 'could not record image reads');
    }
  }
}

/** The image's file is still the one these reads read (same inode and size): only then may they create its record. */
export function stillTheFileRead(filePath: string, read: PendingAccess): boolean {
  const st = fs.statSync(filePath, { throwIfNoEntry: false });
  return st !== undefined && st.ino === read.ino && st.size === read.size;
}
