import fs from 'node:fs';

/** Node error codes we branch on. */
export function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? (err as NodeJS.ErrnoException).code : undefined;
}

/** Failures of the disk itself (full, over quota, read-only, too large a file, I/O error), as opposed to the data or the caller. */
const STORAGE_FAULTS = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EFBIG', 'EIO']);

export function isStorageFault(err: unknown): boolean {
  return STORAGE_FAULTS.has(errorCode(err) ?? '');
}

/** The disk (or the quota) has no room for what was written. */
const OUT_OF_SPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

export function isOutOfSpace(err: unknown): boolean {
  return OUT_OF_SPACE.has(errorCode(err) ?? '');
}

/**
 * Names of the regular files directly in `dir`. Sub-directories (incomplete/,
 * invalid/, queue/) and anything that is not a plain file are left out.
 */
export async function listRegularFiles(dir: string): Promise<string[]> {
  const entries = await fs.promises.readdir(dir, { withFileTypes: true });
  const names: string[] = [];
  for (const entry of entries) {
    if (entry.isFile()) {
      names.push(entry.name);
    } else if (entry.isSymbolicLink() || entry.isDirectory() || entry.isFIFO() || entry.isSocket() || entry.isBlockDevice() || entry.isCharacterDevice()) {
      continue;
    } else if (isRegularFile(`${dir}/${entry.name}`)) {
      // A file system that does not report entry types (DT_UNKNOWN): ask.
      names.push(entry.name);
    }
  }
  return names;
}

function isRegularFile(path: string): boolean {
  try {
    return fs.lstatSync(path).isFile();
  } catch {
    return false;
  }
}

/** Removes a file; false when it was already gone (prune and clean race other processes). */
export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await fs.promises.unlink(path);
    return true;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return false;
    throw err;
  }
}

/** Same, without a thread-pool hop, for zero-byte markers. */
export function unlinkIfExistsSync(path: string): boolean {
  try {
    fs.unlinkSync(path);
    return true;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return false;
    throw err;
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight; results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
