/** Where an image's file lives in the cache directory (SPEC §1). */
export type CacheStatus = 'active' | 'incomplete' | 'invalid' | 'queue';

/** One cached image, as getCachedImages lists it. Times are epoch seconds (float). */
export interface CachedImage {
  imageId: string;
  hits: number;
  lastModified: number;
  lastAccessed: number;
  size: number;
}

/** An image ID with the size of its active file. */
export interface CacheEntry {
  imageId: string;
  size: number;
}

/** A byte range with an inclusive end, as HTTP Range headers give it. Without `end`, to the end of the file. */
export interface ByteRange {
  start: number;
  end?: number;
}

/**
 * What the image's metadata says its bytes hash to: Glance's md5 `checksum`
 * and/or the multihash pair `os_hash_algo` / `os_hash_value`. A bare string is an md5 checksum.
 */
export type ExpectedChecksum = string | { checksum?: string | null; osHashAlgo?: string | null; osHashValue?: string | null };

export interface CleanResult {
  invalid: number;
  stalled: number;
}

export interface PruneResult {
  totalFilesPruned: number;
  totalBytesPruned: number;
}
