/**
 * Shared test helpers: temporary directories, draining streams, file-system
 * snapshots. Real files only; nothing here stubs or mocks the file system.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, type Stream } from 'node:stream';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ImageCache, silentLogger, type ByteRange, type CacheWriter, type ImageCacheOptions } from '../src/index.js';

/** Glance's test fixture: 1024 bytes of '*'. */
export const FIXTURE_DATA: Buffer = Buffer.alloc(1024, '*');

/** A fresh directory under os.tmpdir(). */
export function makeTempDir(prefix = 'image-cache-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Every chunk of a stream (or async iterable) concatenated. Rejects when the stream errors. */
export async function collect(stream: AsyncIterable<Buffer | Uint8Array | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk));
  return Buffer.concat(chunks);
}

interface Closable extends Stream {
  readonly closed?: boolean;
  readonly destroyed?: boolean;
}

/**
 * How long waitForClose and waitUntil wait by default. The bound is there to
 * turn a hang into a failure, not to time anything: what they wait for (a
 * close that records a read, a file that appears) goes through the disk or
 * PostgreSQL, which a loaded machine can hold up for seconds.
 */
const HANG_MS = 10_000;

/**
 * Resolves once the stream has emitted 'close' (at once if it already has).
 * Fails the test instead of hanging when 'close' never comes.
 */
export function waitForClose(stream: Closable, timeoutMs = HANG_MS): Promise<void> {
  if (stream.closed === true) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stream did not emit 'close' within ${timeoutMs} ms`)), timeoutMs);
    stream.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Sets a file's atime and mtime `seconds` into the past. */
export function ageFile(filePath: string, seconds: number): void {
  const when = new Date(Date.now() - seconds * 1000);
  fs.utimesSync(filePath, when, when);
}

/** Every path under `dir` (relative, sorted; directories end with '/'), for before/after comparisons. */
export function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        out.push(`${child}/`);
        walk(child);
      } else {
        out.push(child);
      }
    }
  };
  walk('');
  return out.sort();
}

export function hexDigest(algorithm: string, data: Buffer): string {
  return createHash(algorithm).update(data).digest('hex');
}

/** `length` bytes that differ from position to position, so that ranges can be told apart. */
export function patternedBytes(length: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 7 + 3) % 251;
  return buf;
}

/** Polls `condition` on each turn of the event loop until it holds; rejects after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs = HANG_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** A temporary directory removed after the test; caches registered with `track` are closed first. */
export function tempRoot(t: TestContext, prefix: string): { root: string; track: (cache: ImageCache) => ImageCache } {
  const root = makeTempDir(prefix);
  const caches: ImageCache[] = [];
  t.after(async () => {
    for (const cache of caches) await cache.close();
    removeDir(root);
  });
  return { root, track: (cache) => (caches.push(cache), cache) };
}

/** Reads a cached image (or a range of it) to the end and waits for the stream to close (hits are recorded on close). */
export async function readAll(cache: ImageCache, imageId: string, range?: ByteRange): Promise<Buffer> {
  const stream = await cache.openForRead(imageId, range);
  const data = await collect(stream);
  await waitForClose(stream);
  return data;
}

/** A cache on a fresh temporary directory, and the means to open more on it. */
export interface CacheFixture {
  /** The test's own temporary directory; the cache directory is inside it. */
  root: string;
  /** image_cache_dir */
  dir: string;
  cache: ImageCache;
  /** The options the cache was created with. */
  options: ImageCacheOptions;
  /** Another ImageCache on the same directory and options (closed after the test). */
  open(overrides?: Partial<ImageCacheOptions>): Promise<ImageCache>;
  /** Path of a file in the cache directory, e.g. at('incomplete', '1'). */
  at(...parts: string[]): string;
}

/**
 * A fresh temporary directory and an ImageCache on it (sqlite, 5 KiB max size,
 * silent, unless `options` say otherwise), closed and removed after the test.
 * The driver asked for is checked to be the one in use (ImageCache.create
 * falls back to sqlite when a driver cannot be configured). The cache prunes
 * only when the test calls prune(): these fixtures fill past the limit on
 * purpose, so the prune after a commit (prune-after-commit.test.ts) is off.
 */
/** The engine as the fixtures use it: no prune but the ones a test asks for. */
export const TEST_ENGINE = { pruneAfterCommit: false } as const;

export async function cacheFixture(t: TestContext, options: Partial<ImageCacheOptions> = {}): Promise<CacheFixture> {
  const root = makeTempDir(`image-cache-${options.imageCacheDriver ?? 'sqlite'}-`);
  const dir = path.join(root, 'cache');
  const opened: ImageCache[] = [];
  t.after(async () => {
    for (const cache of opened) await cache.close();
    removeDir(root);
  });
  const resolved: ImageCacheOptions = { imageCacheDir: dir, imageCacheMaxSize: 5 * 1024, logger: silentLogger, ...options };
  const open = async (more: Partial<ImageCacheOptions> = {}): Promise<ImageCache> => {
    const cache = await ImageCache.create({ ...resolved, ...more }, TEST_ENGINE);
    opened.push(cache);
    const wanted = more.imageCacheDriver ?? resolved.imageCacheDriver ?? 'sqlite';
    assert.equal(cache.driver.name, wanted, `ImageCache.create fell back from ${wanted} to ${cache.driver.name}`);
    return cache;
  };
  const cache = await open();
  return { root, dir, cache, options: resolved, open, at: (...parts) => path.join(dir, ...parts) };
}

/** Caches `data` under `imageId` (through cacheImageFile, as Glance's tests do) and checks it was cached. */
export async function put(cache: ImageCache, imageId: string, data: Buffer = FIXTURE_DATA): Promise<void> {
  assert.equal(await cache.cacheImageFile(imageId, Readable.from([data])), true, `caching image ${imageId}`);
}

/** Writes one chunk and waits until it has reached the writer's file. */
export function writeChunk(writer: CacheWriter, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => writer.write(chunk, (err) => (err ? reject(err) : resolve())));
}

/** Destroys an open writer (if a test left one open) and waits for it to let go of its file. */
export async function discardWriter(writer: CacheWriter | undefined): Promise<void> {
  if (writer === undefined || writer.closed) return;
  writer.on('error', () => {});
  writer.destroy();
  await waitForClose(writer);
}

/** Ids of the cached images, in listing order. */
export async function cachedIds(cache: ImageCache): Promise<string[]> {
  return (await cache.getCachedImages()).map((image) => image.imageId);
}

/** A promise and the functions that settle it: a handshake a test controls. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (err: Error) => void } {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
