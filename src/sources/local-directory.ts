import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { ImageExists, SourceUnavailable } from '../errors.js';
import { CacheFileReader } from '../fs/cache-reader.js';
import { errorCode, unlinkIfExists } from '../fs/files.js';
import { isValidImageId, validateImageId } from '../image-id.js';
import type { ByteRange } from '../types.js';
import { glanceTime, imageDocument } from './image-document.js';
import type { ImageMetadata, ImageSource, MetadataResult, SourceAnswer, SourceResponse } from './source.js';

/*
 * The store's layout (Glance's filesystem_store_datadir, plus the metadata
 * Glance would keep in its database):
 *
 *   <dir>/<id>                 the image's bytes
 *   <dir>/+metadata/<id>.json  its image document
 *   <dir>/+tmp/                imports in progress
 *
 * `+` is outside the image-ID alphabet, so no image can be named like either directory.
 */
const METADATA_DIR = '+metadata';
const TMP_DIR = '+tmp';
/** The source's name in logs, metrics and SourceUnavailable. */
const KIND = 'local';
/** Bytes per read of an import: large enough that system calls are not what an import waits on. */
const COPY_CHUNK = 1024 * 1024;

/** The image document of an imported image, shaped like Glance's `GET /v2/images/{id}`. */
/** The image document the store keeps beside each image (Glance's v2 shape, see imageDocument). */
export type LocalImageDocument = Record<string, unknown> & { id: string; checksum: string; os_hash_value: string; size: number };

/**
 * Images served from a local directory: the node's own store when there is no
 * upstream Glance. There is no authorization here, so tokens are ignored.
 *
 * Files are opened and read with blocking calls, as CacheFileReader explains:
 * they are local, small (documents) or read from the page cache, and a hop to
 * the thread pool would cost more than the call.
 */
export class LocalDirectorySource implements ImageSource {
  readonly kind = KIND;
  private readonly dir: string;

  constructor(options: { dir: string }) {
    this.dir = path.resolve(options.dir);
  }

  async metadata(imageId: string, _token: string | undefined): Promise<MetadataResult> {
    if (!isValidImageId(imageId)) return { ok: false, answer: notFound(imageId) };
    const file = metadataPath(this.dir, imageId);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return { ok: false, answer: notFound(imageId) };
      throw new SourceUnavailable(KIND, `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
    return { ok: true, image: parseDocument(imageId, text, file) };
  }

  async open(imageId: string, _token: string | undefined, range?: ByteRange): Promise<SourceResponse> {
    if (!isValidImageId(imageId)) return answerResponse(notFound(imageId));
    let fd: number | undefined;
    let st: fs.Stats;
    try {
      fd = fs.openSync(path.join(this.dir, imageId), 'r');
      st = fs.fstatSync(fd);
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      if (errorCode(err) === 'ENOENT') return answerResponse(notFound(imageId));
      throw new SourceUnavailable(KIND, `cannot open image '${imageId}': ${(err as Error).message}`, { cause: err });
    }
    // A directory or device an operator put under an image's name is not an image.
    if (!st.isFile()) {
      fs.closeSync(fd);
      return answerResponse(notFound(imageId));
    }
    const size = st.size;
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
    if (range === undefined) {
      return { status: 200, headers: { ...headers, 'content-length': String(size) }, body: new CacheFileReader(fd, 0, size - 1) };
    }
    if (range.start >= size || (range.end !== undefined && range.end < range.start)) {
      fs.closeSync(fd);
      return answerResponse(jsonAnswer(416, `Requested range not satisfiable: image '${imageId}' has ${size} bytes`, { 'content-range': `bytes */${size}` }));
    }
    // As HTTP does, an end past the image's last byte means its last byte.
    const end = Math.min(range.end ?? size - 1, size - 1);
    return {
      status: 206,
      headers: { ...headers, 'content-length': String(end - range.start + 1), 'content-range': `bytes ${range.start}-${end}/${size}` },
      body: new CacheFileReader(fd, range.start, end),
    };
  }

  /** Nothing to release: every call opens and closes its own files. */
  async close(): Promise<void> {}
}

/**
 * Copies FILE into the store as a new active image and returns its document.
 * One read pass hashes md5 (Glance's `checksum`) and sha512 (its multihash)
 * while it writes. Bytes are published before the metadata, each durably, so
 * a metadata file never names bytes that are missing or incomplete.
 */
export async function importImage(dir: string, file: string, options: { id?: string; name?: string } = {}): Promise<LocalImageDocument> {
  const id = validateImageId(options.id ?? randomUUID());
  const store = path.resolve(dir);
  const bytesPath = path.join(store, id);
  const documentPath = metadataPath(store, id);
  // Open FILE before creating anything, so that a missing FILE leaves no store behind.
  const input = await fs.promises.open(file, 'r');
  try {
    fs.mkdirSync(path.join(store, TMP_DIR), { recursive: true });
    fs.mkdirSync(path.join(store, METADATA_DIR), { recursive: true });
    // Checked here to spare copying a large image only to be refused; publishBytes is what guarantees it.
    if (fs.existsSync(bytesPath) || fs.existsSync(documentPath)) throw new ImageExists(id, store);

    const tmpBytes = tmpPath(store, id);
    let copied: Copied;
    try {
      copied = await copyHashing(input, tmpBytes);
      publishBytes(tmpBytes, bytesPath, id, store);
    } finally {
      // After the link the bytes have two names; the image keeps the one in the store.
      await unlinkIfExists(tmpBytes);
    }
    await syncDirectory(store);

    const now = glanceTime();
    const document = imageDocument({
      id,
      name: options.name ?? path.basename(file),
      status: 'active',
      visibility: 'public',
      size: copied.size,
      checksum: copied.md5,
      osHashAlgo: 'sha512',
      osHashValue: copied.sha512,
      diskFormat: 'raw',
      containerFormat: 'bare',
      createdAt: now,
      updatedAt: now,
    }) as LocalImageDocument;
    await writeDocument(store, id, document);
    return document;
  } finally {
    await input.close();
  }
}

function metadataPath(dir: string, imageId: string): string {
  return path.join(dir, METADATA_DIR, `${imageId}.json`);
}

/** A name in +tmp/ no other import uses, even of the same ID. */
function tmpPath(store: string, imageId: string): string {
  return path.join(store, TMP_DIR, `${imageId}.${randomBytes(8).toString('hex')}`);
}

interface Copied {
  size: number;
  md5: string;
  sha512: string;
}

/** Copies `input` into a new file at `target`, hashing what it reads, and fsyncs the copy. */
async function copyHashing(input: fs.promises.FileHandle, target: string): Promise<Copied> {
  const md5 = createHash('md5');
  const sha512 = createHash('sha512');
  const buffer = Buffer.allocUnsafe(COPY_CHUNK);
  let size = 0;
  const output = await fs.promises.open(target, 'wx', 0o644);
  try {
    for (;;) {
      const { bytesRead } = await input.read(buffer, 0, COPY_CHUNK, null);
      if (bytesRead === 0) break;
      const chunk = buffer.subarray(0, bytesRead);
      md5.update(chunk);
      sha512.update(chunk);
      let written = 0;
      // write(2) may write less than asked; the rest follows at the next offset.
      while (written < bytesRead) {
        written += (await output.write(chunk, written, bytesRead - written, size + written)).bytesWritten;
      }
      size += bytesRead;
    }
    await output.sync();
  } finally {
    await output.close();
  }
  return { size, md5: md5.digest('hex'), sha512: sha512.digest('hex') };
}

/**
 * Gives the copied bytes the image's name. link(2), unlike rename(2), fails
 * when the name exists, so of two imports of the same ID exactly one wins
 * and neither replaces bytes another's metadata describes.
 */
function publishBytes(tmp: string, target: string, imageId: string, store: string): void {
  try {
    fs.linkSync(tmp, target);
  } catch (err) {
    if (errorCode(err) === 'EEXIST') throw new ImageExists(imageId, store);
    throw err;
  }
}

/** Writes the document under a temporary name, fsyncs it, renames it into +metadata/ and syncs that directory. */
async function writeDocument(store: string, imageId: string, document: LocalImageDocument): Promise<void> {
  const tmp = tmpPath(store, `${imageId}.json`);
  try {
    const handle = await fs.promises.open(tmp, 'wx', 0o644);
    try {
      await handle.writeFile(`${JSON.stringify(document, null, 2)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    fs.renameSync(tmp, metadataPath(store, imageId));
  } catch (err) {
    await unlinkIfExists(tmp);
    throw err;
  }
  await syncDirectory(path.join(store, METADATA_DIR));
}

/** A new name is durable only once its directory is synced. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Glance's timestamps: ISO 8601 in UTC, to the second (`2026-11-28T14:00:00Z`). */

/**
 * The stored document as ImageMetadata. A document that is not JSON, or not
 * an image document of this ID, means the store is damaged: the image cannot
 * be served, as if an upstream had sent garbage.
 */
function parseDocument(imageId: string, text: string, file: string): ImageMetadata {
  const corrupt = (reason: string, cause?: unknown): SourceUnavailable =>
    new SourceUnavailable(KIND, `the metadata of image '${imageId}' in ${file} is corrupt: ${reason}`, { cause });
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw corrupt((err as Error).message, err);
  }
  if (document === null || typeof document !== 'object' || Array.isArray(document)) throw corrupt('not a JSON object');
  const fields = document as Record<string, unknown>;
  if (fields.id !== imageId) throw corrupt(`its id is ${JSON.stringify(fields.id)}`);
  if (typeof fields.status !== 'string') throw corrupt('it has no status');
  const size = fields.size ?? null;
  if (size !== null && !(Number.isSafeInteger(size) && (size as number) >= 0)) throw corrupt(`its size is ${JSON.stringify(size)}`);
  const optionalString = (name: string): string | null => {
    const value = fields[name] ?? null;
    if (value !== null && typeof value !== 'string') throw corrupt(`its ${name} is not a string`);
    return value;
  };
  return {
    id: imageId,
    status: fields.status,
    size: size as number | null,
    checksum: optionalString('checksum'),
    osHashAlgo: optionalString('os_hash_algo'),
    osHashValue: optionalString('os_hash_value'),
    document: fields,
  };
}

function notFound(imageId: string): SourceAnswer {
  const shown = imageId.length > 80 ? `${imageId.slice(0, 80)}…` : imageId;
  return jsonAnswer(404, `No image found with ID ${shown}`);
}

function jsonAnswer(status: number, message: string, headers: Record<string, string> = {}): SourceAnswer {
  const body = Buffer.from(JSON.stringify({ message }));
  return { status, headers: { 'content-type': 'application/json', 'content-length': String(body.length), ...headers }, body };
}

function answerResponse(answer: SourceAnswer): SourceResponse {
  return { status: answer.status, headers: answer.headers, body: Readable.from([answer.body]) };
}
