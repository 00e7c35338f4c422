import type { Logger } from '../log.js';
import type { ImageMetadata, ImageSource } from '../sources/source.js';
import { untilWritten } from './fill-progress.js';
import type { Fills } from './fills.js';
import type { ImageCache } from './image-cache.js';

/** Statuses an image passes through on its way to active: a prefetch of it waits (Glance announces image.activate before its status reads active). */
const BECOMING_ACTIVE = new Set(['queued', 'saving', 'uploading', 'importing']);
/** How often such an image is looked at again, and for how long at most before the usual backoff. */
const SOON_MS = 250;
const SOON_LIMIT = 120;

export interface PrefetcherOptions {
  /** image_cache_prefetch_workers: images fetched at once (Glance's prefetcher fetches one at a time per process). */
  workers: number;
  /** The node's own token for the source (a fetch has no caller); undefined without one. */
  token(): Promise<string | undefined>;
  /** The first retry's delay; each next one doubles, up to maxRetryMs. */
  firstRetryMs: number;
  maxRetryMs: number;
  log: Logger;
}

/**
 * Queued images fetched now, not when a cron job runs: PUT /v2/cache/{id}
 * writes the queue marker (Glance's queue/, which survives restarts) and
 * starts the fetch through the same one-fetch-per-image fills as downloads,
 * at most `workers` at a time. A fetch that fails keeps its marker and is
 * tried again later, each time later (exponential backoff); the markers left
 * at shutdown are fetched at the next start (resume()). The commit of a
 * fetched image pops its marker.
 */
export class Prefetcher {
  private readonly waiting: string[] = [];
  private readonly scheduled = new Set<string>();
  /** Failed fetches so far, per image: its next retry waits longer. */
  private readonly attempts = new Map<string, number>();
  /** Looks so far at an image still becoming active. */
  private readonly soon = new Map<string, number>();
  private readonly retries = new Map<string, NodeJS.Timeout>();
  private readonly inFlight = new Set<Promise<void>>();
  private active = 0;
  private closed = false;

  constructor(
    private readonly cache: ImageCache,
    private readonly fills: Fills,
    private readonly source: ImageSource,
    private readonly options: PrefetcherOptions,
  ) {}

  /** Queues the image (false when it is cached or queued already) and schedules its fetch. */
  async queue(imageId: string): Promise<boolean> {
    const queued = await this.cache.queueImage(imageId);
    if (queued) this.schedule(imageId);
    return queued;
  }

  /** Schedules a fetch of every image queued in the directory (by an earlier run, or Glance's tools). */
  async resume(): Promise<number> {
    const queued = await this.cache.getQueuedImages();
    for (const imageId of queued) this.schedule(imageId);
    return queued.length;
  }

  /** Stops scheduling and waits for the fetches in flight (their fills are ended by Fills.close()). */
  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.retries.values()) clearTimeout(timer);
    this.retries.clear();
    this.waiting.length = 0;
    await Promise.allSettled([...this.inFlight]);
  }

  private schedule(imageId: string): void {
    if (this.closed || this.scheduled.has(imageId)) return;
    this.scheduled.add(imageId);
    this.waiting.push(imageId);
    this.pump();
  }

  private pump(): void {
    while (!this.closed && this.active < this.options.workers && this.waiting.length > 0) {
      const imageId = this.waiting.shift()!;
      this.active++;
      const running = this.fetch(imageId).then(
        (outcome) => {
          this.scheduled.delete(imageId);
          if (outcome === 'soon') this.retrySoon(imageId);
          else if (outcome === 'retry') this.retryLater(imageId);
          else {
            this.attempts.delete(imageId);
            this.soon.delete(imageId);
          }
        },
        (err: unknown) => {
          this.scheduled.delete(imageId);
          this.options.log.warn({ imageId, err }, 'prefetch failed; will try again');
          this.retryLater(imageId);
        },
      ).finally(() => {
        this.active--;
        this.inFlight.delete(running);
        this.pump();
      });
      this.inFlight.add(running);
    }
  }

  /** An image still becoming active: looked at again shortly, for a while; then as any failure. */
  private retrySoon(imageId: string): void {
    const looks = (this.soon.get(imageId) ?? 0) + 1;
    this.soon.set(imageId, looks);
    if (looks > SOON_LIMIT) {
      this.soon.delete(imageId);
      this.retryLater(imageId);
      return;
    }
    this.retryAfter(imageId, SOON_MS);
  }

  private retryLater(imageId: string): void {
    const attempt = (this.attempts.get(imageId) ?? 0) + 1;
    this.attempts.set(imageId, attempt);
    this.retryAfter(imageId, Math.min(this.options.maxRetryMs, this.options.firstRetryMs * 2 ** (attempt - 1)));
  }

  private retryAfter(imageId: string, delay: number): void {
    if (this.closed) return;
    const timer = setTimeout(() => {
      this.retries.delete(imageId);
      this.schedule(imageId);
    }, delay);
    timer.unref();
    this.retries.set(imageId, timer);
  }

  /** 'done' when the image is cached, or will never be (its marker is then dropped); 'retry' otherwise. */
  private async fetch(imageId: string): Promise<'done' | 'retry' | 'soon'> {
    if (!(await this.cache.isQueued(imageId))) return 'done'; // dequeued meanwhile
    const token = await this.options.token();
    const metadata = await this.source.metadata(imageId, token);
    if (!metadata.ok) {
      if (metadata.answer.status === 404) return this.drop(imageId, 'the source does not have it');
      this.options.log.warn({ imageId, status: metadata.answer.status }, 'prefetch: the source refused the metadata; will try again');
      return 'retry';
    }
    if (BECOMING_ACTIVE.has(metadata.image.status)) return 'soon';
    if (metadata.image.status !== 'active') return this.drop(imageId, `it is ${metadata.image.status}`);
    return this.fill(metadata.image, token);
  }

  private async fill(image: ImageMetadata, token: string | undefined): Promise<'done' | 'retry'> {
    if (image.size === null) return this.drop(image.id, 'the source gives no size');
    const result = await this.fills.follow(image, token, 0, image.size - 1);
    switch (result.kind) {
      case 'cached':
        await this.cache.deleteQueuedImage(image.id);
        return 'done';
      case 'bypass':
        return this.drop(image.id, result.reason);
      case 'answer':
        result.response.body.resume();
        this.options.log.warn({ imageId: image.id, status: result.response.status }, 'prefetch: the source refused the download; will try again');
        return 'retry';
      case 'follow':
        try {
          await untilWritten(result.span.progress, Infinity);
        } finally {
          result.span.release();
        }
        return 'done';
    }
  }

  private async drop(imageId: string, why: string): Promise<'done'> {
    await this.cache.deleteQueuedImage(imageId);
    this.options.log.warn({ imageId, why }, 'prefetch: dropped a queued image that cannot be cached');
    return 'done';
  }
}
