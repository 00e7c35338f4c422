/**
 * An image withdrawn upstream (deleted through this node, proven gone by a
 * download, announced deleted by Glance's notifications) leaves this node:
 * its cached copy and its queue marker now, and whatever a fill of it in
 * flight commits, once that fill ends, so that a fill started before the
 * delete caches nothing that stays. One place for it, whoever learnt of it.
 */
import type { ImageCache } from '../cache/image-cache.js';
import type { Logger } from '../log.js';
import type { EvictionReason, NodeMetrics } from './metrics.js';

/** How often a fill in flight of a removed image is looked at (another worker's is seen only through its claim). */
const FILL_WATCH_MS = 200;

export interface Removed {
  /** It was cached (and is not now). */
  cached: boolean;
  /** It was queued for prefetching (and is not now). */
  queued: boolean;
  /** A fill of it was in flight: what it commits is removed when it ends. */
  filling: boolean;
}

export class ImageRemoval {
  private readonly watches = new Map<string, Promise<void>>();
  private closed = false;

  constructor(
    private readonly cache: ImageCache,
    private readonly metrics: NodeMetrics,
    private readonly log: Logger,
  ) {}

  /** Removes the image's copy, marker and what its fill in flight would leave; `reason` labels the eviction. */
  async remove(imageId: string, reason: EvictionReason): Promise<Removed> {
    if (!this.cache.isValidImageId(imageId)) return { cached: false, queued: false, filling: false };
    const cached = await this.cache.isCached(imageId);
    const queued = await this.cache.isQueued(imageId);
    await this.cache.deleteCachedImage(imageId);
    await this.cache.deleteQueuedImage(imageId);
    if (cached) this.metrics.evicted(reason);
    const filling = await this.cache.isBeingCached(imageId);
    if (filling) this.removeAfterFill(imageId, reason);
    return { cached, queued, filling };
  }

  /** Stops watching fills (their next look would find the cache closed). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.watches.values()]);
  }

  private removeAfterFill(imageId: string, reason: EvictionReason): void {
    if (this.watches.has(imageId)) return;
    const watch = (async () => {
      while (!this.closed && (await this.cache.isBeingCached(imageId))) await new Promise((resolve) => setTimeout(resolve, FILL_WATCH_MS).unref());
      if (this.closed) return;
      if (await this.cache.isCached(imageId)) {
        await this.cache.deleteCachedImage(imageId);
        await this.cache.deleteQueuedImage(imageId);
        this.metrics.evicted(reason);
        this.log.info({ imageId, reason }, 'a fill of a removed image committed as it ended; removed its copy');
      }
    })()
      .catch((err: unknown) => this.log.warn({ imageId, err }, 'could not remove what a fill of a removed image left'))
      .finally(() => this.watches.delete(imageId));
    this.watches.set(imageId, watch);
  }
}
