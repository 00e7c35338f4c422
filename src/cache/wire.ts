import type { CachedImage } from '../types.js';

/** A cached image as Glance's API and glance-cache-manage show it: snake_case, times as epoch floats. */
export function cachedImageToWire(image: CachedImage): Record<string, unknown> {
  return { image_id: image.imageId, hits: image.hits, last_accessed: image.lastAccessed, last_modified: image.lastModified, size: image.size };
}
