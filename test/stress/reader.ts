/**
 * A reader process of the claim stress test (see harness.ts). Until the stop
 * file appears: read the image whole and check that the bytes are exactly one
 * writer's complete image, as long as the stream's fileSize says; then check
 * the listed size. A violation is logged, never thrown: the run goes on and
 * the report shows them all.
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CacheReadStream, CachedImage } from '../../src/index.js';
import { HEADER_BYTES, IMAGE_ID, bump, checkImage, childRuntime, codeOf, imageName } from './harness.js';

const rt = await childRuntime();
const { cache, prng, counts } = rt;
const activePath = cache.getImageFilepath(IMAGE_ID);

const violation = (message: string): void => rt.log({ ev: 'violation', message });

while (!rt.stopped()) {
  let stream: CacheReadStream;
  try {
    stream = await cache.openForRead(IMAGE_ID);
  } catch (err) {
    if (codeOf(err) === 'ERR_IMAGE_NOT_CACHED') bump(counts, 'readsNotCached');
    else rt.unexpected('openForRead', err);
    // Pacing only: keeps a reader of an uncached image from spinning.
    await sleep(prng.int(0, 2));
    continue;
  }
  let bytes: Buffer;
  try {
    bytes = await readToEnd(stream);
  } catch (err) {
    rt.unexpected('read', err);
    stream.destroy();
    continue;
  }
  const check = checkImage(bytes);
  if (!check.ok) {
    violation(`read ${bytes.length} bytes (stream fileSize ${stream.fileSize}) that are not one complete image: ${check.problem}`);
    continue;
  }
  if (stream.fileSize !== bytes.length) {
    violation(`read image ${check.image} whole (${bytes.length} bytes) but the stream's fileSize said ${stream.fileSize}`);
    continue;
  }
  const listing = await checkListedSize(check.image, bytes.length);
  if (listing === undefined) continue;
  rt.log({ ev: 'read', image: check.image, length: bytes.length, listing });
}
await rt.finish();

/**
 * getCachedImages() must list the image with the size just read, provided the
 * file at the path is that very image (same inode, same header) both before
 * and after the listing: then it was there throughout. Otherwise a delete or
 * a new copy raced the listing, and there is nothing to hold it to.
 */
async function checkListedSize(image: string, length: number): Promise<'checked' | 'skipped' | undefined> {
  let listed: CachedImage[];
  let before: FileIdentity | undefined;
  let after: FileIdentity | undefined;
  try {
    before = identify(activePath);
    listed = await cache.getCachedImages();
    after = identify(activePath);
  } catch (err) {
    rt.unexpected('getCachedImages', err);
    return undefined;
  }
  for (const seen of [before, after]) {
    if (seen?.image === image && seen.size !== BigInt(length)) violation(`the active file of image ${image} has ${seen.size} bytes, but ${length} were read from it`);
  }
  if (before === undefined || after === undefined || before.image !== image || after.image !== image || before.ino !== after.ino || before.dev !== after.dev) {
    bump(counts, 'listingSkipped');
    return 'skipped';
  }
  bump(counts, 'listingChecks');
  const entries = listed.filter((entry) => entry.imageId === IMAGE_ID);
  if (entries.length !== 1 || entries[0]?.size !== length) {
    violation(`image ${image} (${length} bytes, inode ${before.ino}, mtime ${Number(before.mtimeMs) / 1000}) stayed at ${IMAGE_ID} throughout getCachedImages(), which listed ${JSON.stringify(entries)}`);
  }
  return 'checked';
}

/** A file as found at a path: which file (inode), its size and mtime, and the image its header names. */
interface FileIdentity {
  ino: bigint;
  dev: bigint;
  size: bigint;
  mtimeMs: bigint;
  image: string;
}

/** The file at `file` now; undefined when there is none. */
function identify(file: string): FileIdentity | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    if (codeOf(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    const header = Buffer.alloc(HEADER_BYTES);
    const n = fs.readSync(fd, header, 0, HEADER_BYTES, 0);
    return { ino: st.ino, dev: st.dev, size: st.size, mtimeMs: st.mtimeMs, image: n === HEADER_BYTES ? imageName(header.readBigUInt64BE(0)) : '(no header)' };
  } finally {
    fs.closeSync(fd);
  }
}

/** Every byte of the stream, once it has closed (the read is recorded on close, before the listing that follows). */
async function readToEnd(stream: CacheReadStream): Promise<Buffer> {
  const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  await closed;
  return Buffer.concat(chunks);
}
