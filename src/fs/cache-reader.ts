import fs from 'node:fs';
import { Readable } from 'node:stream';

const CHUNK = 512 * 1024;
/**
 * Bytes read back to back before the next read waits one turn of the event
 * loop. A consumer that never waits (a hash, an in-memory sink) would
 * otherwise keep the loop busy with blocking reads for a whole image, and no
 * timer, socket or database reply would be served meanwhile.
 */
const YIELD_EVERY_BYTES = 8 * 1024 * 1024;

/**
 * A Readable over [start, end] of an open file descriptor, closed (by
 * `close`) when the stream closes, for whatever reason.
 *
 * Reads are blocking calls, as nginx makes them by default: cache files are
 * read far more often than written and mostly come from the page cache, where
 * a 512 KiB read takes tens of microseconds, while handing each read to
 * libuv's thread pool costs a thread wake-up each way (measured here at about
 * 75 µs per hop on a 2-vCPU VM) and queues behind other file work in a pool of four.
 */
export class CacheFileReader extends Readable {
  private fd: number | undefined;
  private position: number;
  private readonly last: number;
  private sinceYield = 0;

  /** `end` is inclusive; end < start means nothing to read. */
  constructor(fd: number, start: number, end: number, private readonly close: (fd: number) => void = fs.closeSync) {
    super({ highWaterMark: CHUNK });
    this.fd = fd;
    this.position = start;
    this.last = end;
  }

  override _read(size: number): void {
    if (this.sinceYield >= YIELD_EVERY_BYTES) {
      this.sinceYield = 0;
      setImmediate(() => this.readChunk(size));
      return;
    }
    this.readChunk(size);
  }

  private readChunk(size: number): void {
    const fd = this.fd;
    if (fd === undefined) return;
    let length = Math.min(Math.max(size, CHUNK), this.last - this.position + 1);
    if (length <= 0) {
      this.push(null);
      return;
    }
    try {
      const buffer = Buffer.allocUnsafe(length);
      let filled = 0;
      while (filled < length) {
        const n = fs.readSync(fd, buffer, filled, length - filled, this.position + filled);
        if (n === 0) break; // the file shrank under us: end early rather than spin
        filled += n;
      }
      this.position += filled;
      this.sinceYield += filled;
      if (filled === 0) {
        this.push(null);
        return;
      }
      length = filled;
      this.push(length === buffer.length ? buffer : buffer.subarray(0, length));
      if (this.position > this.last) this.push(null);
    } catch (err) {
      this.destroy(err as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd !== undefined) {
      try {
        this.close(fd);
      } catch (closeError) {
        callback(error ?? (closeError as Error));
        return;
      }
    }
    callback(error);
  }
}
