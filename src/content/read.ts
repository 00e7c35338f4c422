import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { nowSeconds } from '../clock.js';
import { ImageNotCached, RangeNotSatisfiable } from '../errors.js';
import { CacheFileReader } from '../fs/cache-reader.js';
import { errorCode } from '../fs/files.js';
import type { ByteRange } from '../types.js';

/** A stream of an active cache file (or a byte range of it). */
export interface CacheReadStream extends Readable {
  readonly imageId: string;
  /** Size of the whole cached file. */
  readonly fileSize: number;
  /** First byte served. */
  readonly start: number;
  /** Last byte served (inclusive); start - 1 for an empty file. */
  readonly end: number;
}

/** An active cache file opened for a read of [start, end]; close() once when done. */
export interface OpenImageFile {
  readonly imageId: string;
  readonly fd: number;
  /** Size of the whole cached file. */
  readonly fileSize: number;
  /** First byte to serve. */
  readonly start: number;
  /** Last byte to serve (inclusive); start - 1 for an empty file. */
  readonly end: number;
  /** Closes the descriptor and records the read (hits, last access). Idempotent. */
  close(): void;
}

/** One completed read of an image's file: when, and which file (so that it never counts toward a later copy). */
export interface FileRead {
  at: number;
  ino: number;
  size: number;
  lastModified: number;
}

/**
 * Opens the active file at `filePath` for a read of [start, end] (the whole
 * file, or the inclusive range): its descriptor, for a caller that reads it
 * its own way (the node sends it with reused buffers). close() closes it and
 * reports the read to `recordRead`; call it once, however the read ended.
 */
export function openImageFile(imageId: string, filePath: string, range: ByteRange | undefined, recordRead: (read: FileRead) => void): OpenImageFile {
  let fd: number;
  try {
    fd = fs.openSync(filePath, 'r');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') throw new ImageNotCached(imageId);
    throw err;
  }
  let start: number;
  let end: number;
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
    [start, end] = resolveRange(range, st.size);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  const file = { ino: st.ino, size: st.size, lastModified: st.mtimeMs / 1000 };
  let open = true;
  return {
    imageId,
    fd,
    fileSize: st.size,
    start,
    end,
    close: () => {
      if (!open) return;
      open = false;
      fs.closeSync(fd);
      recordRead({ at: nowSeconds(), ...file });
    },
  };
}

/** A stream of an opened file's range that closes the file (and so records the read) when it closes. */
export function streamImageFile(file: OpenImageFile): CacheReadStream {
  const stream = new CacheFileReader(file.fd, file.start, file.end, () => file.close());
  return Object.assign(stream, { imageId: file.imageId, fileSize: file.fileSize, start: file.start, end: file.end }) as unknown as CacheReadStream;
}

/** [start, end] inclusive, clamped to the file like HTTP does; throws RangeNotSatisfiable. */
function resolveRange(range: ByteRange | undefined, size: number): [number, number] {
  if (range === undefined) return [0, size - 1];
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
    throw new RangeNotSatisfiable(start, end, size);
  }
  if (start >= size) throw new RangeNotSatisfiable(start, end, size);
  return [start, Math.min(end ?? size - 1, size - 1)];
}
