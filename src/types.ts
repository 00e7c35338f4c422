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
 * With `size` (Glance's image size, in bytes), a source that sends more or fewer bytes fails (WrongImageLength).
 */
export type ExpectedChecksum = string | { checksum?: string | null; osHashAlgo?: string | null; osHashValue?: string | null; size?: number | null };

/** What clean() removed: files in invalid/, and abandoned files in incomplete/. */
export interface CleanResult {
  invalid: number;
  stalled: number;
}

export interface PruneResult {
  totalFilesPruned: number;
  totalBytesPruned: number;
}

/**
 * What verify() repaired, step by step (cacache's verify() is the model):
 * metadata and files brought back into agreement, each fix counted.
 */
export interface VerifyResult {
  /** Records of images whose file is gone (Glance's tools and other nodes would see phantom images). */
  recordsDropped: number;
  /** Active files that had no record (or, for xattr, no attributes): recorded from their stat, hits 0. */
  filesAdopted: number;
  /** Records whose size disagreed with their file's. */
  sizesCorrected: number;
  /** Queue markers of images that are cached already (prefetch would report them forever). */
  queueMarkersDropped: number;
}

/** What recover() did: the files of writers that died moved to invalid/, then verify()'s repairs. */
export type RecoverReport = { abandonedWrites: number } & VerifyResult;

/** The cleaner's whole pass: clean() and then verify(). */
export type CleanReport = CleanResult & VerifyResult;
