import { Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import { ImageAlreadyCached, ImageBeingCached, ReaderStopped } from '../errors.js';
import type { CacheWriter } from '../content/writer.js';
import type { Logger } from '../log.js';
import type { ExpectedChecksum } from '../types.js';
import type { ImageCache } from './image-cache.js';
import { imageCheck, pipeImage, type ImageBytes } from './image-pipeline.js';

export type { ImageBytes };

/** What caching needs of the cache: three of ImageCache's methods, and nothing else of it. */
export type CacheForWrites = Pick<ImageCache, 'isCacheable' | 'openForWrite' | 'getImageFilepath'>;

/**
 * Passes the image's bytes to its reader while writing them to the cache. The
 * cache write rides along: if it fails, the reader still gets every byte; if
 * the reader stops early, the source fails, or the checksum does not match,
 * the partial file goes to invalid/. The stream ends only after the cache
 * commit has settled, so a reader that saw 'end' finds the image cached.
 */
class CacheTee extends Transform {
  private writer: CacheWriter | undefined;
  private writerFailed = false;

  constructor(
    private readonly cache: CacheForWrites,
    private readonly imageId: string,
    private readonly log: Logger,
  ) {
    super();
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.openWriter().then(() => callback(), () => callback());
  }

  private async openWriter(): Promise<void> {
    try {
      if (!(await this.cache.isCacheable(this.imageId))) return;
      const writer = await this.cache.openForWrite(this.imageId);
      writer.on('error', (err) => {
        this.writerFailed = true;
        this.log.warn({ imageId: this.imageId, err }, 'caching the image failed; still serving it');
      });
      this.writer = writer;
    } catch (err) {
      if (!(err instanceof ImageBeingCached || err instanceof ImageAlreadyCached)) this.log.warn({ imageId: this.imageId, err }, 'could not start caching the image');
    }
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const writer = this.writer;
    if (writer === undefined || this.writerFailed || writer.write(chunk)) {
      callback(null, chunk);
      return;
    }
    // Disk slower than the source: hold the source back rather than buffer without bound.
    settled(writer, 'drain').then(() => callback(null, chunk));
  }

  override _flush(callback: TransformCallback): void {
    const writer = this.writer;
    if (writer === undefined || this.writerFailed) {
      callback();
      return;
    }
    writer.end();
    settled(writer, 'finish').then(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const writer = this.writer;
    if (writer === undefined || writer.writableFinished || writer.destroyed) {
      callback(error);
      return;
    }
    writer.destroy(error ?? new ReaderStopped(this.imageId));
    settled(writer, 'close').then(() => callback(error));
  }
}

/** Resolves on `event`, or when the writer errors or closes instead. */
function settled(writer: Writable, event: 'drain' | 'finish' | 'close'): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      writer.off(event, done);
      writer.off('error', done);
      writer.off('close', done);
      resolve();
    };
    writer.on(event, done);
    writer.on('error', done);
    writer.on('close', done);
  });
}

/**
 * The source's bytes for a reader, written to the cache on the way (CacheTee)
 * and checked by the same pipeline as a fill (pipeImage): the length when
 * `expected` gives a size, then the checksum. The checksum is computed
 * inline, not on a hash thread reading the cache file back: the reader's
 * bytes must be verified even when the cache write fails (or never starts).
 */
export function createCachingStream(cache: CacheForWrites, imageId: string, expected: ExpectedChecksum | undefined | null, source: ImageBytes, log: Logger): Readable {
  cache.getImageFilepath(imageId); // an ID that cannot name a file is refused now (InvalidImageId), not on the stream
  const check = imageCheck(imageId, expected);
  const tee = new CacheTee(cache, imageId, log);
  // Errors reach the reader through the tee itself; nothing more to report here.
  pipeImage(toReadable(source), { stream: tee }, check).catch(() => {});
  return tee;
}

/** Caches an image without a reader, through the fills' pipeline (its hash thread included). False when it is cached or being cached already. */
export async function cacheFromSource(cache: CacheForWrites, imageId: string, source: () => ImageBytes, expected: ExpectedChecksum | undefined | null): Promise<boolean> {
  const incompletePath = cache.getImageFilepath(imageId, 'incomplete');
  const check = imageCheck(imageId, expected);
  if (!(await cache.isCacheable(imageId))) return false;
  let writer: CacheWriter;
  try {
    writer = await cache.openForWrite(imageId);
  } catch (err) {
    if (err instanceof ImageBeingCached || err instanceof ImageAlreadyCached) return false;
    throw err;
  }
  await pipeImage(source(), { writer, incompletePath }, check);
  return true;
}

function toReadable(source: ImageBytes): Readable {
  return source instanceof Readable ? source : Readable.from(source, { objectMode: false });
}
