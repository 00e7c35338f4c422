/**
 * The image set of bench/load.ts, shared by the fake upstream (a child
 * process) and the load generator (worker threads): both make the same bytes
 * from the same seeds, so nothing is written to disk and nothing large is
 * sent between processes.
 */
import { createHash } from 'node:crypto';
import { imageBytes } from '../test/support/fake-glance.js';

const MiB = 1024 ** 2;

/**
 * Mixed sizes, small ones more often (as a cloud's images are), the largest
 * 64 MiB: 286 MiB in all, so that the cache, the page cache and the fake
 * upstream's memory all hold them with room to spare.
 */
const SIZES_MIB = [1, 1, 2, 2, 3, 4, 4, 5, 6, 8, 8, 10, 12, 16, 16, 20, 24, 32, 48, 64];

export interface LoadImage {
  id: string;
  size: number;
  seed: number;
}

/** What the generator checks bodies against: the image, where its bytes sit in the shared buffer, and its sha256. */
export interface CheckedImage extends LoadImage {
  offset: number;
  sha256: string;
}

export const LOAD_IMAGES: readonly LoadImage[] = SIZES_MIB.map((mib, i) => ({
  // Glance-like UUIDs, recognizable in the node's log and cache directory.
  id: `10ad0000-0000-4000-8000-${String(i).padStart(12, '0')}`,
  size: mib * MiB,
  seed: 1000 + i,
}));

export const totalSize = (images: readonly LoadImage[]): number => images.reduce((sum, image) => sum + image.size, 0);

/**
 * Every image's bytes, one after the other, in one SharedArrayBuffer that all
 * the generator's threads read (one copy however many threads), with each
 * image's offset and sha256.
 */
export function sharedImages(images: readonly LoadImage[]): { buffer: SharedArrayBuffer; checked: CheckedImage[] } {
  const buffer = new SharedArrayBuffer(totalSize(images));
  const view = Buffer.from(buffer);
  let offset = 0;
  const checked = images.map((image) => {
    const bytes = imageBytes(image.size, image.seed);
    bytes.copy(view, offset);
    const entry = { ...image, offset, sha256: createHash('sha256').update(bytes).digest('hex') };
    offset += image.size;
    return entry;
  });
  return { buffer, checked };
}
