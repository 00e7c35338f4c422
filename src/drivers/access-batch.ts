/** Reads of one image not yet written to the metadata store. */
export interface PendingAccess {
  hits: number;
  lastAccessed: number;
}

/**
 * Reads recorded in memory and handed to `write` together, once per turn of
 * the event loop: one transaction (or one pass over the files) for however
 * many reads closed meanwhile, instead of one per read. A driver calls
 * flush() before each of its queries, so that what it reports already
 * includes every read it was told of.
 */
export class AccessBatch {
  private pending = new Map<string, PendingAccess>();
  private scheduled: NodeJS.Immediate | undefined;

  constructor(private readonly write: (entries: Map<string, PendingAccess>) => void | Promise<void>) {}

  add(imageId: string, now: number): void {
    const entry = this.pending.get(imageId);
    if (entry) {
      entry.hits += 1;
      entry.lastAccessed = Math.max(entry.lastAccessed, now);
    } else {
      this.pending.set(imageId, { hits: 1, lastAccessed: now });
    }
    this.scheduled ??= setImmediate(() => void this.flush());
  }

  /** Drops the reads of an image whose record is being replaced or removed. */
  forget(imageId: string): void {
    this.pending.delete(imageId);
  }

  flush(): void | Promise<void> {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    if (this.pending.size === 0) return;
    const entries = this.pending;
    this.pending = new Map();
    return this.write(entries);
  }
}
