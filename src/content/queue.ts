import fs from 'node:fs';
import path from 'node:path';
import { errorCode, listRegularFiles, unlinkIfExistsSync } from '../fs/files.js';
import { isHeld } from './claim.js';
import type { CacheLayout } from './layout.js';

/**
 * The prefetch queue: one empty marker file per image in queue/, as Glance
 * keeps it, ordered by the markers' mtimes. A commit pops its image's marker
 * (writer.ts).
 */
export class QueueMarkers {
  constructor(private readonly layout: CacheLayout) {}

  isQueued(imageId: string): boolean {
    return fs.existsSync(this.layout.imagePath(imageId, 'queue'));
  }

  /**
   * Queues an image for prefetching; false (and nothing written) when it is
   * cached, being cached by a live writer, or queued already.
   */
  queue(imageId: string): boolean {
    const active = this.layout.imagePath(imageId);
    if (fs.existsSync(active) || isHeld(this.layout.imagePath(imageId, 'incomplete'))) return false;
    const marker = this.layout.imagePath(imageId, 'queue');
    let fd: number;
    try {
      // The exclusive create is both the "already queued?" test and the marker.
      fd = fs.openSync(marker, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    } catch (err) {
      if (errorCode(err) === 'EEXIST') return false;
      throw err;
    }
    fs.closeSync(fd);
    // A commit publishes before it pops the marker; we create the marker before
    // looking again. So if a commit popped (nothing) before our marker existed,
    // its image is visible now, and the marker must not outlive this call.
    if (fs.existsSync(active)) {
      unlinkIfExistsSync(marker);
      return false;
    }
    return true;
  }

  /** The queued images, oldest marker first (ties by ID). */
  async list(): Promise<string[]> {
    const items: Array<{ id: string; mtime: number }> = [];
    for (const id of await this.ids()) {
      const st = fs.statSync(this.layout.imagePath(id, 'queue'), { throwIfNoEntry: false });
      if (st !== undefined) items.push({ id, mtime: st.mtimeMs });
    }
    items.sort((a, b) => a.mtime - b.mtime || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return items.map((item) => item.id);
  }

  remove(imageId: string): void {
    unlinkIfExistsSync(this.layout.imagePath(imageId, 'queue'));
  }

  /** Removes every marker (foreign files in queue/ too, as Glance does); returns how many. */
  async removeAll(): Promise<number> {
    const queueDir = this.layout.statusDir('queue');
    let removed = 0;
    for (const name of await listRegularFiles(queueDir)) if (unlinkIfExistsSync(path.join(queueDir, name))) removed++;
    return removed;
  }

  /** verify()'s step for the queue: markers of images cached already (prefetch would report them forever) go. */
  async dropMarkersOfCachedImages(): Promise<number> {
    let dropped = 0;
    // Order does not matter here: the marker names are enough, without list()'s stat of each.
    for (const id of await this.ids()) {
      if (fs.existsSync(this.layout.imagePath(id)) && unlinkIfExistsSync(this.layout.imagePath(id, 'queue'))) dropped++;
    }
    return dropped;
  }

  /** IDs of the queue markers, in no order. */
  private ids(): Promise<string[]> {
    return this.layout.imageIdsIn(this.layout.statusDir('queue'));
  }
}
