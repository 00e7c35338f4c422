/**
 * The glance-cache-manage operations, once on the cache directory and once
 * on a node's API, with one meaning: the commands in manage.ts print the
 * same things whichever runs. Where the API's one call does more than the
 * command says (DELETE /v2/cache/{id} drops the image from the cache and
 * the queue alike), the remote side looks first and does only what was asked.
 */
import type { ImageCache } from '../cache/image-cache.js';
import { cachedImageToWire, type WireCachedImage } from '../cache/wire.js';
import type { Progress } from './progress.js';
import type { CacheApi } from './remote.js';
import { withCache } from './options.js';
import type { Target } from './target.js';

/** Done, or not done and why (not an error: the exit status stays 0). */
export type Outcome = { done: true } | { done: false; reason: string };

/** Makes the progress display of work on `total` items. */
export type ProgressFactory = (total: number) => Progress;

export interface CacheManager {
  listCached(): Promise<WireCachedImage[]>;
  listQueued(): Promise<string[]>;
  queueImage(imageId: string): Promise<Outcome>;
  deleteCachedImage(imageId: string): Promise<Outcome>;
  deleteQueuedImage(imageId: string): Promise<Outcome>;
  /** The number of images deleted. */
  deleteAllCachedImages(progress: ProgressFactory): Promise<number>;
  deleteAllQueuedImages(progress: ProgressFactory): Promise<number>;
}

/** Runs `work` with the target's manager (opening and closing the cache for a local one). */
export function withManager<T>(target: Target, work: (manager: CacheManager) => Promise<T>): Promise<T> {
  if (target.kind === 'remote') return work(remoteManager(target.api));
  return withCache(target.options, (cache) => work(localManager(cache)));
}

const DONE: Outcome = { done: true };
const notDone = (reason: string): Outcome => ({ done: false, reason });
const QUEUED_NOT_CACHED = 'it is queued, not cached (delete-queued-image removes it)';
const CACHED_NOT_QUEUED = 'it is cached, not queued (delete-cached-image removes it)';

function localManager(cache: ImageCache): CacheManager {
  return {
    async listCached() {
      return (await cache.getCachedImages()).map(cachedImageToWire);
    },
    listQueued: () => cache.getQueuedImages(),
    async queueImage(imageId) {
      if (await cache.queueImage(imageId)) return DONE;
      return notDone((await cache.isCached(imageId)) ? 'already cached' : 'being cached or queued already');
    },
    async deleteCachedImage(imageId) {
      if (await cache.isCached(imageId)) {
        await cache.deleteCachedImage(imageId);
        return DONE;
      }
      return notDone((await cache.isQueued(imageId)) ? QUEUED_NOT_CACHED : 'it is not cached');
    },
    async deleteQueuedImage(imageId) {
      if (await cache.isQueued(imageId)) {
        await cache.deleteQueuedImage(imageId);
        return DONE;
      }
      return notDone((await cache.isCached(imageId)) ? CACHED_NOT_QUEUED : 'it is not queued');
    },
    // One image at a time, so that a large cache shows its progress; then
    // the driver's own delete-all, for whatever was cached meanwhile.
    async deleteAllCachedImages(progress) {
      const ids = (await cache.getCachedImages()).map((image) => image.imageId);
      const bar = progress(ids.length);
      for (const id of ids) {
        bar.working(id);
        await cache.deleteCachedImage(id);
        bar.done(id);
      }
      bar.end();
      return ids.length + (await cache.deleteAllCachedImages());
    },
    async deleteAllQueuedImages(progress) {
      const ids = await cache.getQueuedImages();
      const bar = progress(ids.length);
      for (const id of ids) {
        await cache.deleteQueuedImage(id);
        bar.done(id);
      }
      bar.end();
      return ids.length + (await cache.deleteAllQueuedImages());
    },
  };
}

function remoteManager(api: CacheApi): CacheManager {
  /** DELETE /v2/cache/{id} when the image is where the command says; the node's 404 for an image it has never heard of comes through as an error. */
  const deleteFrom = async (list: 'cached' | 'queued', imageId: string): Promise<Outcome> => {
    const listing = await api.list();
    const cached = listing.cached_images.some((image) => image.image_id === imageId);
    const queued = listing.queued_images.includes(imageId);
    if (list === 'cached' ? cached : queued) {
      await api.delete(imageId);
      return DONE;
    }
    if (cached || queued) return notDone(list === 'cached' ? QUEUED_NOT_CACHED : CACHED_NOT_QUEUED);
    await api.delete(imageId);
    return notDone(`it is not ${list}`);
  };
  return {
    listCached: async () => (await api.list()).cached_images,
    listQueued: async () => (await api.list()).queued_images,
    // The node answers 202 whether or not it had the image already: it has it now.
    queueImage: async (imageId) => {
      await api.queue(imageId);
      return DONE;
    },
    deleteCachedImage: (imageId) => deleteFrom('cached', imageId),
    deleteQueuedImage: (imageId) => deleteFrom('queued', imageId),
    // One request clears the lot, so there is no progress to show; the count is the listing's just before.
    async deleteAllCachedImages() {
      const count = (await api.list()).cached_images.length;
      await api.clear('cache');
      return count;
    },
    async deleteAllQueuedImages() {
      const count = (await api.list()).queued_images.length;
      await api.clear('queue');
      return count;
    },
  };
}
