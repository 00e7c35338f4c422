/**
 * Shared test helpers: temporary directories, draining streams, file-system
 * snapshots. Real files only; nothing here stubs or mocks the file system.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Stream } from 'node:stream';
import type { TestContext } from 'node:test';
import type { ImageCache } from '../src/index.js';

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
 * Resolves once the stream has emitted 'close' (at once if it already has).
 * Fails the test instead of hanging when 'close' never comes.
 */
export function waitForClose(stream: Closable, timeoutMs = 2000): Promise<void> {
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
export async function waitUntil(condition: () => boolean, timeoutMs = 2000): Promise<void> {
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

/** Reads a cached image to the end and waits for the stream to close (hits are recorded on close). */
export async function readAll(cache: ImageCache, imageId: string): Promise<Buffer> {
  const stream = await cache.openForRead(imageId);
  const data = await collect(stream);
  await waitForClose(stream);
  return data;
}
