/**
 * After the listener (re)connects: events sent while it could not hear them
 * may be lost (its queue expired, or overflowed), so each image the node
 * holds or has queued is checked with the upstream, with the node's own
 * credentials, in the background; those the upstream no longer has, or has
 * withdrawn for good, leave the node. A few at a time, so that a large
 * cache does not flood the upstream.
 */
import type { ImageCache } from '../cache/image-cache.js';
import type { Logger } from '../log.js';
import type { ImageRemoval } from '../server/image-removal.js';
import type { ImageSource } from '../sources/source.js';
import { GONE_STATUSES } from './message.js';

const CONCURRENCY = 4;

export interface ReconcileOptions {
  cache: ImageCache;
  source: ImageSource;
  removal: ImageRemoval;
  /** The node's own token; undefined without one. */
  token(): Promise<string | undefined>;
  /** Whether the source needs a token to prove an image gone (auth_strategy = keystone). */
  needsToken: boolean;
  evictOnDeactivate: boolean;
  log: Logger;
}

export interface ReconcileReport {
  checked: number;
  removed: number;
  /** Images the upstream could not be asked about (an error, a refusal): kept. */
  unknown: number;
}

export async function removeImagesGoneUpstream(options: ReconcileOptions): Promise<ReconcileReport> {
  const { cache, source, removal, log } = options;
  const report: ReconcileReport = { checked: 0, removed: 0, unknown: 0 };
  const token = await options.token();
  if (options.needsToken && token === undefined) {
    log.warn({}, 'cannot check the cached images with the upstream without the node\'s own credentials; images deleted while the notifications were unheard stay until a download finds them gone');
    return report;
  }
  const ids = [...new Set([...(await cache.getCachedImages()).map((image) => image.imageId), ...(await cache.getQueuedImages())])];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < ids.length) {
      const imageId = ids[next++]!;
      report.checked++;
      try {
        const metadata = await source.metadata(imageId, token);
        const gone = metadata.ok
          ? GONE_STATUSES.has(metadata.image.status) || (metadata.image.status !== 'active' && options.evictOnDeactivate)
          : metadata.answer.status === 404;
        if (!metadata.ok && metadata.answer.status !== 404) report.unknown++;
        if (gone) {
          await removal.remove(imageId, 'upstream_deleted');
          report.removed++;
        }
      } catch (err) {
        report.unknown++;
        log.debug({ imageId, err }, 'could not check an image with the upstream');
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, ids.length) }, worker));
  if (report.removed > 0 || report.unknown > 0) log.info({ ...report }, 'checked the cached images with the upstream after the notifications listener connected');
  return report;
}
