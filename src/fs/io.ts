import fs from 'node:fs';

/**
 * The system calls of the write path whose failures and timing matter most:
 * fsync (unbounded latency, EIO) and rename (the publish). Everything that
 * writes to the cache goes through one CacheIo, so that tests can make an
 * fsync slow or fail, or act between two steps of a commit, on real files —
 * faults and interleavings that cannot be caused on demand for real.
 */
export interface CacheIo {
  /** fsync(2) of an open file or directory, off the event loop. */
  fsync(fd: number): Promise<void>;
  /** rename(2), synchronous: it takes microseconds and is the step that makes a file visible. */
  rename(from: string, to: string): void;
}

export const systemIo: CacheIo = {
  fsync: (fd) => new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve()))),
  rename: (from, to) => fs.renameSync(from, to),
};
