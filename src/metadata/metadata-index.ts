import type { FillDirectory } from '../cluster/fill-directory.js';
import type { DriverName, ResolvedOptions } from '../config.js';
import type { CacheLayout } from '../content/layout.js';
import type { CommitMetadata } from '../content/writer.js';
import type { Logger } from '../log.js';
import type { CacheEntry, CachedImage, VerifyResult } from '../types.js';
import type { PendingAccess } from './access-batch.js';

/** An index's part of verify(): its own repairs, counted (what it has no use for stays 0). */
export type MetadataRepairs = Pick<VerifyResult, 'recordsDropped' | 'filesAdopted' | 'sizesCorrected'>;

/** What an index is given by the cache that owns it. */
export interface IndexContext {
  readonly options: ResolvedOptions;
  readonly log: Logger;
  /** Where the image files are (the content store's layout): the truth records are checked against. */
  readonly files: CacheLayout;
  /** The reads not yet written (ImageCache batches them and hands them to writeReads). */
  readonly reads: {
    /** Drops an image's unwritten reads: its record is being replaced or removed. */
    forget(imageId: string): void;
    /** Resolves once the writes of reads under way have settled. */
    settled(): Promise<void>;
  };
  /** The store was found out of reach: once it answers again, repair() is run (StoreRecovery). */
  storeUnavailable(): void;
}

/**
 * Where a driver keeps the images' metadata (hits, times, sizes, nodes):
 * sqlite's cache.db, xattr's attributes, centralized_db's PostgreSQL tables.
 * The files themselves are the content store's (src/content); an index only
 * describes them, and what it says is reconciled with them, never trusted
 * over them. One implementation per driver, each with its storage (and SQL)
 * in its own file; ImageCache owns one beside the content store.
 *
 * Queries are made after ImageCache has written the reads recorded so far,
 * so that what they report includes them.
 */
export interface MetadataIndex {
  readonly name: DriverName;
  /** Prepares the store; throws BadDriverConfiguration when it cannot be used. */
  open(): Promise<void>;
  /** Lets go of the store (after the commits and reads have been written). */
  close(): Promise<void>;
  /** Refuses, before anything is written, an image the store could not record. */
  checkWritable(imageId: string): void;
  /** What a commit of this image writes: before the publish (on the incomplete file) and after it (the record). */
  commitMetadata(imageId: string): CommitMetadata;
  /** Forgets the records of these images (their files are already gone). */
  forget(imageIds: readonly string[]): Promise<void> | void;
  /**
   * hits += n and last access moved forward, for each image; an image read
   * without a record (an adopted Glance directory) gets one, if its file is still there.
   * A write that fails part-way deletes from `entries` what it wrote (see WriteAccesses).
   */
  writeReads(entries: Map<string, PendingAccess>): Promise<void> | void;
  /** Brings the metadata into agreement with the files, counting each fix (verify's metadata half). */
  repair(): Promise<MetadataRepairs>;

  /** Every active image, by image ID. */
  getCachedImages(): Promise<CachedImage[]>;
  /** Bytes of the active images. */
  getCacheSize(): Promise<number>;
  /** The hits of an image that is cached (0 when it has no record). */
  getHitCount(imageId: string): Promise<number>;
  /** Every active image, least recently accessed first: the order prune evicts in. */
  listLeastRecentlyAccessed(): Promise<CacheEntry[]>;
  /** The URLs of the nodes holding the image; only an index shared by nodes has it. */
  getCachedNodes?(imageId: string): Promise<string[]>;
  /** Every other node on the same database (centralized_db). */
  getClusterNodes?(): Promise<string[]>;
  /** How long reads gather before one write records them, ms (unset: the next turn of the event loop). */
  readonly readsGatherMs?: number;
  /** Who in the cluster holds or fills an image (centralized_db); call once open. */
  fillDirectory?(): FillDirectory;
}
