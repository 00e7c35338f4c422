import path from 'node:path';
import { InvalidOption } from '../errors.js';
import { listRegularFiles } from '../fs/files.js';
import { isValidImageId, validateImageId } from '../image-id.js';
import type { CacheStatus } from '../types.js';

/** The sub-directories of the cache directory, one per status an image's file can be in besides active (SPEC §1). */
export const STATUS_DIRS = ['incomplete', 'invalid', 'queue'] as const;

/**
 * Glance's directory layout (SPEC §1): an active image is <dir>/<id>, its
 * other states <dir>/incomplete|invalid|queue/<id>. Names the metadata index
 * keeps in the directory (the sqlite database, ...) are reserved: never an
 * image ID, never listed or pruned as one.
 */
export class CacheLayout {
  constructor(
    /** The cache directory, absolute. */
    readonly baseDir: string,
    readonly reserved: ReadonlySet<string>,
  ) {}

  validate(imageId: string): string {
    return validateImageId(imageId, this.reserved);
  }

  /** Whether the ID can name an image in this cache (validate() without the error). */
  isValidImageId(imageId: string): boolean {
    return isValidImageId(imageId, this.reserved);
  }

  /** Where the image's file is in this status; the ID is validated. */
  imagePath(imageId: string, cacheStatus: CacheStatus = 'active'): string {
    this.validate(imageId);
    switch (cacheStatus) {
      case 'active':
        return path.join(this.baseDir, imageId);
      case 'incomplete':
      case 'invalid':
      case 'queue':
        return path.join(this.baseDir, cacheStatus, imageId);
      default:
        throw new InvalidOption('cacheStatus', `must be one of active, ${STATUS_DIRS.join(', ')}, not ${JSON.stringify(cacheStatus)}`);
    }
  }

  statusDir(status: (typeof STATUS_DIRS)[number]): string {
    return path.join(this.baseDir, status);
  }

  /** IDs of the active image files in the cache directory. */
  async activeImageIds(): Promise<Set<string>> {
    return new Set(await this.imageIdsIn(this.baseDir));
  }

  /** The names in `dir` that are image IDs of this cache: anything foreign is left alone. */
  async imageIdsIn(dir: string): Promise<string[]> {
    return (await listRegularFiles(dir)).filter((name) => isValidImageId(name, this.reserved));
  }
}
