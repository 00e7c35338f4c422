import fs from 'node:fs';
import path from 'node:path';
import { BadDriverConfiguration, CacheNotConfigured, ImageNotCached } from '../errors.js';
import { DirectorySync } from '../fs/directory-sync.js';
import { mapLimit, unlinkIfExists } from '../fs/files.js';
import { lockingProblem } from '../fs/flock.js';
import type { CacheIo } from '../fs/io.js';
import type { Logger } from '../log.js';
import type { ByteRange, CleanResult } from '../types.js';
import { isHeld } from './claim.js';
import { CacheLayout, STATUS_DIRS } from './layout.js';
import { QueueMarkers } from './queue.js';
import { openImageFile, type FileRead, type OpenImageFile } from './read.js';
import { cleanFiles, quarantineAbandonedWrites, UNLINK_CONCURRENCY } from './recover.js';
import { CacheWriter, CommitTracker, type CommitMetadata } from './writer.js';

/** What the store tells its owner about, for the metadata and for maintenance. */
export interface ContentEvents {
  /** A writer published an image (its file is at its active path). */
  committed(imageId: string, size: number): void;
  /** A read of an active file ended. */
  read(imageId: string, read: FileRead): void;
}

/**
 * The image files of one cache directory, in Glance's layout (SPEC §1), and
 * everything done to them: the claim and commit of a new image (claim.ts,
 * writer.ts), reads, the queue markers, deletes, and the file half of clean,
 * recover and verify. It knows nothing of hits or records: that is the
 * metadata index's (src/metadata), which ImageCache puts beside it.
 *
 * Metadata system calls (existence checks, marker creation, renames) are made
 * synchronously on purpose: they take microseconds, while a hop through libuv's
 * four-thread pool costs more than the call and waits behind any large image
 * reads or writes occupying the pool. Data I/O and fsync stay asynchronous.
 */
export class ContentStore {
  readonly layout: CacheLayout;
  readonly queue: QueueMarkers;
  private dirSync: DirectorySync | undefined;
  private commits = new CommitTracker();

  constructor(
    dir: string,
    reserved: ReadonlySet<string>,
    private readonly io: CacheIo,
    private readonly log: Logger,
    private readonly events: ContentEvents,
  ) {
    this.layout = new CacheLayout(path.resolve(dir), reserved);
    this.queue = new QueueMarkers(this.layout);
  }

  /**
   * Creates the sub-directories and checks the directory can be used: writable,
   * and on a file system whose flock(2) locks work (claims are such locks:
   * without them, writers could not tell a dead writer from a slow one).
   * Throws BadDriverConfiguration naming `driverName`.
   */
  async open(driverName: string): Promise<void> {
    const { baseDir } = this.layout;
    let dirSync: DirectorySync;
    try {
      for (const sub of STATUS_DIRS) fs.mkdirSync(this.layout.statusDir(sub), { recursive: true });
      fs.accessSync(baseDir, fs.constants.W_OK);
      dirSync = new DirectorySync(baseDir, this.io);
      dirSync.open();
    } catch (err) {
      throw new BadDriverConfiguration(driverName, `cache directory ${baseDir} is not usable: ${(err as Error).message}`, { cause: err });
    }
    const lockProblem = lockingProblem(this.layout.statusDir('incomplete'));
    if (lockProblem !== undefined) {
      await dirSync.close();
      throw new BadDriverConfiguration(driverName, `the file system holding ${baseDir} does not support the file locks that claim images being written (${lockProblem})`);
    }
    this.dirSync = dirSync;
    this.commits = new CommitTracker();
  }

  /** Waits for the commits in flight: nothing is published after this is called. */
  async close(): Promise<void> {
    await this.commits.close();
    await this.dirSync?.close();
    this.dirSync = undefined;
  }

  // ---- state -----------------------------------------------------------------------

  isCached(imageId: string): boolean {
    return fs.existsSync(this.layout.imagePath(imageId));
  }

  /** A live writer (in any process) holds the image. A dead writer's leftover file does not count. */
  isBeingCached(imageId: string): boolean {
    return isHeld(this.layout.imagePath(imageId, 'incomplete'));
  }

  isCacheable(imageId: string): boolean {
    return !this.isCached(imageId) && !this.isBeingCached(imageId);
  }

  imageSize(imageId: string): number {
    const st = fs.statSync(this.layout.imagePath(imageId), { throwIfNoEntry: false });
    if (st === undefined) throw new ImageNotCached(imageId);
    return st.size;
  }

  // ---- writing, reading, deleting ------------------------------------------------------

  /**
   * A Writable onto incomplete/<id> under the image's claim: end() commits
   * (writer.ts), destroy() or abandonment moves the partial file to invalid/.
   * Rejects with ImageAlreadyCached for a cached image and with
   * ImageBeingCached while a live writer holds it.
   */
  openForWrite(imageId: string, metadata: CommitMetadata): CacheWriter {
    const { layout } = this;
    if (this.dirSync === undefined) throw new CacheNotConfigured('the cache directory');
    return CacheWriter.open({
      imageId,
      paths: {
        incomplete: layout.imagePath(imageId, 'incomplete'),
        invalid: layout.imagePath(imageId, 'invalid'),
        active: layout.imagePath(imageId),
        queueMarker: layout.imagePath(imageId, 'queue'),
      },
      io: this.io,
      directory: this.dirSync,
      metadata,
      commits: this.commits,
      log: this.log,
      committed: (size) => this.events.committed(imageId, size),
    });
  }

  /** Opens the active file for a read of [start, end]; its close() reports the read (see read.ts). */
  openFile(imageId: string, range?: ByteRange): OpenImageFile {
    return openImageFile(imageId, this.layout.imagePath(imageId), range, (read) => this.events.read(imageId, read));
  }

  /**
   * Removes these images' active files; returns the IDs whose file was
   * removed. Unlinks go to the thread pool, several at a time: unlinking a
   * file that was just written and synced costs ext4 journal work, and
   * overlapping the unlinks prunes faster than one after another on the main
   * thread (bench:lib's prune phase measures it).
   */
  async deleteFiles(imageIds: readonly string[]): Promise<string[]> {
    for (const id of imageIds) this.layout.validate(id);
    const removed = await mapLimit(imageIds, UNLINK_CONCURRENCY, (id) => unlinkIfExists(this.layout.imagePath(id)));
    return imageIds.filter((_id, i) => removed[i]);
  }

  // ---- maintenance: the files' part ----------------------------------------------------

  /** invalid/ emptied, abandoned incomplete/ files older than `stallTime` seconds removed (recover.ts). */
  clean(stallTime: number): Promise<CleanResult> {
    return cleanFiles(this.layout, stallTime);
  }

  /** The files of writers that died moved to invalid/ (recover.ts); how many. */
  quarantineAbandonedWrites(): Promise<number> {
    return quarantineAbandonedWrites(this.layout, this.io);
  }
}
