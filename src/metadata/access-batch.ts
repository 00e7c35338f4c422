import fs from 'node:fs';
import type { FileRead } from '../content/read.js';
import { MetadataStoreUnavailable } from '../errors.js';
import type { Logger } from '../log.js';
import { outageRetryDelay } from './store-recovery.js';

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

/** One completed read, as the content store reports it. */
export type Access = FileRead;

/**
 * Writes reads. One that fails part-way deletes from `entries` the reads it
 * did write, so that only the others are kept for another try.
 */
export type WriteAccesses = (entries: Map<string, PendingAccess>) => void | Promise<void>;

/**
 * How many images' reads are kept while the metadata store is unavailable:
 * an entry per image, however many times it is read, so only an outage over
 * which this many different images are read reaches it; the reads of further
 * images are then dropped (and counted in the log).
 */
export const MAX_KEPT_IMAGES = 10_000;

/**
 * Reads recorded in memory and written together: one transaction (or one pass
 * over the files) for however many reads closed meanwhile, instead of one per
 * read. ImageCache records every driver's reads through one.
 *
 * One write runs at a time, and at most one more waits behind it, taking
 * whatever reads have gathered by the time it starts: under a steady stream of
 * reads the queue never grows, each write just gets bigger. flush() resolves
 * once the reads added before it was called are written, so it finishes under
 * any load: at worst it waits for the write in flight and the one after.
 *
 * A write that fails because the metadata store is unavailable
 * (MetadataStoreUnavailable) loses nothing: its reads go back into the
 * pending ones and are written with them once the store answers, tried again
 * on a backoff timer meanwhile (reads that arrive then wait for it rather than
 * each trying the store). Any other failure is logged and its reads dropped:
 * hits are statistics, and retrying a write the store refuses would hold
 * every later batch back.
 */
export class AccessBatch {
  private pending = new Map<string, PendingAccess>();
  /** The write scheduled for the reads gathering now: its cancel. */
  private scheduled: (() => void) | undefined;
  private inFlight: Promise<void> | undefined;
  /** The write that starts when the one in flight ends. */
  private next: Promise<void> | undefined;
  /** Images forgotten while the write in flight ran: if it fails, their reads are not kept. */
  private forgottenInFlight = new Set<string>();
  /** The next try at a store found unavailable; reads wait for it instead of flushing at once. */
  private retry: NodeJS.Timeout | undefined;
  private failedWrites = 0;

  constructor(
    private readonly write: WriteAccesses,
    private readonly log: Logger,
    private readonly driverName: () => string,
    /**
     * How long reads gather before they are written, ms: 0 writes them on the
     * next turn of the event loop (a local store); a store shared by many
     * nodes gets one write per node per interval, however many reads.
     */
    private readonly gatherMs: () => number = () => 0,
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
    if (this.retry === undefined) this.scheduleFlush();
  }

  /** Drops the unwritten reads of an image whose record is being replaced or removed. */
  forget(imageId: string): void {
    this.pending.delete(imageId);
    if (this.inFlight !== undefined) this.forgottenInFlight.add(imageId);
  }

  /**
   * Writes the reads added so far. Resolves when they are written, or kept
   * for later because the store is unavailable, or dropped after another
   * failure (logged).
   */
  flush(): Promise<void> {
    this.unschedule();
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

  /** Stops retrying; reads still kept for an unavailable store are given up (and counted in the log). */
  close(): void {
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.retry = undefined;
    this.unschedule();
    if (this.pending.size > 0) {
      this.log.warn({ driver: this.driverName(), images: this.pending.size, hits: hitsOf(this.pending.values()) }, 'closing with image reads the metadata store could not take; they are not recorded');
    }
    this.pending = new Map();
  }

  private scheduleFlush(): void {
    if (this.scheduled !== undefined) return;
    const flush = (): void => {
      this.scheduled = undefined;
      void this.flush();
    };
    const gatherMs = this.gatherMs();
    if (gatherMs <= 0) {
      const immediate = setImmediate(flush);
      this.scheduled = () => clearImmediate(immediate);
      return;
    }
    const timer = setTimeout(flush, gatherMs);
    timer.unref();
    this.scheduled = () => clearTimeout(timer);
  }

  private unschedule(): void {
    this.scheduled?.();
    this.scheduled = undefined;
  }

  private start(): Promise<void> {
    const taken = this.pending;
    this.pending = new Map();
    if (taken.size === 0) return Promise.resolve();
    this.forgottenInFlight = new Set();
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
      if (err instanceof MetadataStoreUnavailable) this.keep(entries, err);
      else this.log.error({ driver: this.driverName(), err, images: entries.size }, 'could not record image reads');
      return;
    }
    if (this.failedWrites > 0) this.recovered();
  }

  /** A write the store could not take: its reads join the pending ones (newer reads of an image keep describing its file). */
  private keep(entries: Map<string, PendingAccess>, err: MetadataStoreUnavailable): void {
    let dropped = 0;
    for (const [imageId, read] of entries) {
      if (this.forgottenInFlight.has(imageId)) continue;
      const newer = this.pending.get(imageId);
      if (newer !== undefined) {
        newer.hits += read.hits;
        newer.lastAccessed = Math.max(newer.lastAccessed, read.lastAccessed);
      } else if (this.pending.size < MAX_KEPT_IMAGES) {
        this.pending.set(imageId, read);
      } else {
        dropped += read.hits;
      }
    }
    this.failedWrites++;
    const delay = outageRetryDelay(this.failedWrites);
    const fields = { driver: this.driverName(), err, images: this.pending.size, retryInMs: Math.round(delay) };
    if (dropped > 0) this.log.error({ ...fields, dropped }, `could not record image reads; keeping those of ${MAX_KEPT_IMAGES} images for later, dropping the rest`);
    else this.log.warn(fields, 'could not record image reads; keeping them for later');
    if (this.retry !== undefined) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.flush();
    }, delay);
    this.retry.unref();
  }

  /** The store took a write again: reads flush as they come, and those that waited for the retry go now. */
  private recovered(): void {
    this.failedWrites = 0;
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.retry = undefined;
    if (this.pending.size > 0) this.scheduleFlush();
  }
}

function hitsOf(reads: Iterable<PendingAccess>): number {
  let hits = 0;
  for (const read of reads) hits += read.hits;
  return hits;
}

/** The image's file is still the one these reads read (same inode and size): only then may they create its record. */
export function stillTheFileRead(filePath: string, read: PendingAccess): boolean {
  const st = fs.statSync(filePath, { throwIfNoEntry: false });
  return st !== undefined && st.ino === read.ino && st.size === read.size;
}
