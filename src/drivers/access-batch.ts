/** Reads of one image not yet written to the metadata store. */
export interface PendingAccess {
  hits: number;
  lastAccessed: number;
}

/**
 * Reads recorded in memory and written together, once per turn of the event
 * loop: one transaction (or one pass over the files) for however many reads
 * closed meanwhile, instead of one per read. `onDue` runs on that turn and
 * writes what take() hands it; a driver also takes and writes before each of
 * its queries, so that what it reports already includes every read it was
 * told of.
 */
export class AccessBatch {
  private pending = new Map<string, PendingAccess>();
  private scheduled: NodeJS.Immediate | undefined;

  constructor(private readonly onDue: () => void) {}

  add(imageId: string, now: number): void {
    const entry = this.pending.get(imageId);
    if (entry) {
      entry.hits += 1;
      entry.lastAccessed = Math.max(entry.lastAccessed, now);
    } else {
      this.pending.set(imageId, { hits: 1, lastAccessed: now });
    }
    this.scheduled ??= setImmediate(() => {
      this.scheduled = undefined;
      this.onDue();
    });
  }

  /** Drops the reads of an image whose record is being replaced or removed. */
  forget(imageId: string): void {
    this.pending.delete(imageId);
  }

  /** The reads recorded so far, now the caller's to write; undefined when there are none. */
  take(): Map<string, PendingAccess> | undefined {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    if (this.pending.size === 0) return undefined;
    const entries = this.pending;
    this.pending = new Map();
    return entries;
  }
}
