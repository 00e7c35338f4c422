import type { CachedImage } from '../types.js';

/** A cached image as Glance's API and glance-cache-manage show it: snake_case, times as epoch floats. */
export interface WireCachedImage {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

/** GET /v2/cache: the cached images and the queue. */
export interface WireCacheListing {
  cached_images: WireCachedImage[];
  queued_images: string[];
}

export function cachedImageToWire(image: CachedImage): WireCachedImage {
  return { image_id: image.imageId, hits: image.hits, last_accessed: image.lastAccessed, last_modified: image.lastModified, size: image.size };
}
