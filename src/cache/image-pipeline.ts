import fs from 'node:fs';
import { Transform, type Readable, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ChecksumMismatch, SourceStalled, WrongImageLength } from '../errors.js';
import type { CacheWriter } from '../content/writer.js';
import type { ExpectedChecksum } from '../types.js';
import { checksumRule, ChecksumVerifier, type ChecksumRule } from './checksum.js';
import { FileHasher } from './file-hasher.js';

/**
 * Images this large (or of unknown size) are hashed on a hash thread;
 * smaller ones inline, where a thread's round trip would cost more than it saves.
 */
const HASH_OFF_THREAD_FROM = 4 * 1024 * 1024;

/** Image bytes from anywhere: a stream, or any (async) iterable of chunks (not to be confused with an ImageSource, where images come from). */
export type ImageBytes = Readable | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** What the bytes of one image must be, checked on their way into the cache. */
export interface ImageCheck {
  imageId: string;
  /** The image's size: a source that sends more or fewer bytes fails. Undefined when unknown (not checked). */
  size: number | undefined;
  /** The checksum to verify; undefined when the metadata promises none. */
  rule: ChecksumRule | undefined;
  /** upstream_timeout, ms: a source that sends nothing for this long fails. Undefined: no limit. */
  stallMs?: number;
  /** Told of every chunk of the source (the node's metrics). */
  onBytes?: (bytes: number) => void;
}

/** The check of an image from its expected checksum (and size), as callers of the library give it. Throws InvalidOption on a checksum that cannot be checked. */
export function imageCheck(imageId: string, expected: ExpectedChecksum | undefined | null, more: Partial<ImageCheck> = {}): ImageCheck {
  const size = typeof expected === 'object' && expected !== null && typeof expected.size === 'number' ? expected.size : undefined;
  return { imageId, size, rule: checksumRule(expected), ...more };
}

/** Where the bytes go. */
export type ImageSink =
  /** The image's cache writer: the checksum may be computed from its file (incompletePath), on a hash thread. */
  | { writer: CacheWriter; incompletePath: string }
  /** Any other stream (a tee, whose reader must get verified bytes whatever becomes of the cache write): hashed inline. */
  | { stream: Writable };

/**
 * The one way an image's bytes go into the cache: source → length and stall
 * guard → checksum → sink. Resolves once the sink has finished (for a cache
 * writer: committed, its checksum verified); rejects with the first failure
 * (WrongImageLength, SourceStalled, ChecksumMismatch, the source's or the
 * disk's error), and then nothing is cached.
 *
 * Into a cache writer, the checksum of a large image is computed on a hash
 * thread from the file as it is written, and checked by the commit before it
 * publishes: the main thread only receives and writes. When every thread is
 * busy it is hashed inline instead.
 */
export async function pipeImage(source: ImageBytes, sink: ImageSink, check: ImageCheck): Promise<void> {
  // An iterable goes into pipeline() as it is: wrapping it in Readable.from costs a stream per
  // image, which shows on many small images (bench:lib's fill phase).
  const stages: Array<NodeJS.ReadableStream | NodeJS.WritableStream> = [source as NodeJS.ReadableStream];
  if (check.size !== undefined || check.stallMs !== undefined || check.onBytes !== undefined) stages.push(new LengthGuard(check));
  const rule = check.rule;
  if ('stream' in sink) {
    if (rule !== undefined) stages.push(new ChecksumVerifier(rule));
    return pipeline([...stages, sink.stream]);
  }
  const hashed = rule !== undefined && (check.size === undefined || check.size >= HASH_OFF_THREAD_FROM) ? hashOffThread(sink, rule) : undefined;
  if (rule !== undefined && hashed === undefined) stages.push(new ChecksumVerifier(rule));
  const written = pipeline([...stages, sink.writer]);
  return hashed === undefined ? written : hashed(written);
}

/**
 * Sets the writer's commit to check the digest a hash thread computes from
 * the file; undefined when no thread is free. The returned function waits for
 * the write and lets the thread go (it reads through a descriptor of its own,
 * closed once the thread has stopped reading).
 */
function hashOffThread({ writer, incompletePath }: { writer: CacheWriter; incompletePath: string }, rule: ChecksumRule): ((written: Promise<void>) => Promise<void>) | undefined {
  const fd = fs.openSync(incompletePath, 'r');
  const hasher = FileHasher.tryStart(fd, rule.algorithm);
  if (hasher === undefined) {
    fs.closeSync(fd);
    return undefined;
  }
  writer.on('progress', (bytes: number) => hasher.written(bytes));
  let digested = false;
  writer.verifyBeforePublish(async () => {
    const actual = await hasher.digest(writer.bytesWritten);
    digested = true;
    if (actual !== rule.expected) throw new ChecksumMismatch(rule.algorithm, rule.expected, actual);
  });
  return async (written) => {
    try {
      await written;
    } finally {
      if (!digested) await hasher.cancel();
      fs.closeSync(fd);
    }
  };
}

/**
 * Fails the pipeline when the source sends more or fewer bytes than the
 * image's size, or nothing for `stallMs` (upstream_timeout). A short body
 * must never be cached or end a response as if it were whole.
 */
class LengthGuard extends Transform {
  private received = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly check: ImageCheck) {
    super();
    this.arm();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.arm();
    this.received += chunk.length;
    this.check.onBytes?.(chunk.length);
    const { size } = this.check;
    if (size !== undefined && this.received > size) {
      callback(new WrongImageLength(this.check.imageId, this.received, size));
      return;
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.disarm();
    const { size } = this.check;
    callback(size === undefined || this.received === size ? null : new WrongImageLength(this.check.imageId, this.received, size));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.disarm();
    callback(error);
  }

  private arm(): void {
    const { stallMs } = this.check;
    if (stallMs === undefined) return;
    if (this.timer !== undefined) this.timer.refresh();
    else this.timer = setTimeout(() => this.destroy(new SourceStalled(this.check.imageId, stallMs / 1000)), stallMs);
  }

  private disarm(): void {
    clearTimeout(this.timer);
  }
}
