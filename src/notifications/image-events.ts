/**
 * What a node does with each of Glance's image notifications:
 * - image.delete (and an update to deleted, pending_delete or killed): the
 *   image leaves the node, copy, marker and whatever a fill in flight commits;
 * - image.update to another status but active (deactivated): the copy goes
 *   too when image_cache_evict_on_deactivate says so (a deactivated image is
 *   never served from the cache in any case: every request asks the
 *   upstream for its status);
 * - image.activate: queued for prefetching when image_cache_prefetch_on_activate
 *   selects it and it is not larger than image_cache_prefetch_max_size. The
 *   payload's checksum is md5 only: the prefetch verifies against the
 *   upstream's metadata (sha512), as every fill does.
 * Every other event is acknowledged and left alone. Doing anything twice is
 * harmless: a duplicate delivery finds nothing left to do.
 */
import type { Prefetcher } from '../cache/prefetcher.js';
import type { ActivationPolicy } from '../config/option-types.js';
import type { Logger } from '../log.js';
import type { ImageRemoval } from '../server/image-removal.js';
import { GONE_STATUSES, imagePayload, isPublic, type ImagePayload, type Notification } from './message.js';

/** What a notification came to: the `outcome` label of image_cache_notifications_total. */
export type EventOutcome = 'removed' | 'queued' | 'nothing' | 'ignored';


export interface ImageEventsOptions {
  removal: ImageRemoval;
  prefetcher: Prefetcher;
  evictOnDeactivate: boolean;
  prefetchOnActivate: ActivationPolicy;
  /** Bytes; images larger are not prefetched on activation. */
  prefetchMaxSize: number;
  log: Logger;
}

export class ImageEvents {
  constructor(private readonly options: ImageEventsOptions) {}

  /** Acts on the notification; MalformedNotification when an image event names no image. */
  async handle(notification: Notification): Promise<EventOutcome> {
    switch (notification.eventType) {
      case 'image.delete':
        return this.remove(imagePayload(notification), 'deleted');
      case 'image.update': {
        const image = imagePayload(notification);
        if (image.status === undefined || image.status === 'active') return 'nothing';
        if (GONE_STATUSES.has(image.status)) return this.remove(image, image.status);
        return this.options.evictOnDeactivate ? this.remove(image, image.status) : 'nothing';
      }
      case 'image.activate':
        return this.activated(imagePayload(notification));
      default:
        return 'ignored';
    }
  }

  private async remove(image: ImagePayload, why: string): Promise<EventOutcome> {
    const removed = await this.options.removal.remove(image.id, 'notification');
    if (!removed.cached && !removed.queued && !removed.filling) return 'nothing';
    this.options.log.info({ imageId: image.id, why, ...removed }, 'Glance announced the image is gone; removed it from this node');
    return 'removed';
  }

  private async activated(image: ImagePayload): Promise<EventOutcome> {
    if (!this.selects(image)) return 'nothing';
    const { prefetchMaxSize } = this.options;
    if (prefetchMaxSize > 0 && typeof image.size === 'number' && image.size > prefetchMaxSize) {
      this.options.log.info({ imageId: image.id, size: image.size, prefetchMaxSize }, 'an activated image is larger than image_cache_prefetch_max_size; not prefetched');
      return 'nothing';
    }
    return (await this.options.prefetcher.queue(image.id)) ? 'queued' : 'nothing';
  }

  private selects(image: ImagePayload): boolean {
    const policy = this.options.prefetchOnActivate;
    switch (policy.kind) {
      case 'none':
        return false;
      case 'all':
        return true;
      case 'public':
        return isPublic(image);
      case 'property': {
        const value = image.properties?.[policy.name] ?? (image as unknown as Record<string, unknown>)[policy.name];
        return value !== undefined && value !== null && String(value) === policy.value;
      }
    }
  }
}
