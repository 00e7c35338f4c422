/**
 * A fake upstream Glance (Image API v2) on a real socket, for tests and
 * benchmarks of the caching node: images in memory or on disk, Glance's
 * answers (documents, Range downloads, 401/403/404/416 bodies), uploads,
 * and faults a real store or network produces (a reset, a stall, a short
 * body, an error status), plus a shared bandwidth limit.
 *
 * Everything a test needs to observe is counted here (requests per route,
 * body bytes written), so tests assert on the wire, not on timing.
 */
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { glanceTime, imageDocument } from '../../src/sources/image-document.js';

export interface FakeImageInit {
  id?: string;
  /** Bytes in memory, or a file on disk streamed on each download (for 1 GiB bench images). */
  data: Buffer | { file: string };
  /** Default 'active'. A 'queued' image answers its file GET with 204, as Glance does for an image without data. */
  status?: string;
  name?: string;
  /** Overrides the advertised md5 (document and Content-MD5); default: computed. */
  checksum?: string | null;
  /** Default 'sha512'. */
  osHashAlgo?: string | null;
  /** Overrides the advertised hash; default: computed with os_hash_algo. */
  osHashValue?: string | null;
  /** Tokens that may see the image (a private image); others get 404 exactly like an unknown image. Default: everyone. */
  visibleTo?: string[];
}

/** What addImage stored: the size and digests of the actual bytes (whatever the document advertises). */
export interface FakeImage {
  id: string;
  size: number;
  checksum: string;
  osHashValue: string;
}

export type Fault =
  /** Sends n body bytes, then resets the connection (TCP RST). */
  | { kind: 'reset'; afterBytes: number }
  /** Sends n body bytes, then nothing; the socket stays open until the client closes it or close(). */
  | { kind: 'stall'; afterBytes: number }
  /** Announces the full Content-Length, sends n bytes, then ends the connection cleanly (FIN). */
  | { kind: 'short'; afterBytes: number }
  /** Answers that route with this status (Glance-like body unless given). */
  | { kind: 'status'; code: number; on: 'metadata' | 'file'; body?: string };

export interface FakeGlanceOptions {
  /** Default 0 (ephemeral); the host is always 127.0.0.1. */
  port?: number;
  /** When set, a request without X-Auth-Token or with one not listed gets 401; unset: noauth. */
  validTokens?: string[];
  /**
   * When set, every request's X-Auth-Token is asked about here (as
   * keystonemiddleware asks Keystone in front of Glance) and a request
   * without one, or with one refused, gets 401: for tests whose tokens are
   * issued, revoked and expired by a real Keystone. With validTokens too, a
   * token must pass both. A rejection (Keystone unreachable) answers 500.
   */
  validateToken?: (token: string) => Promise<boolean>;
  /** A limit on file bodies for the whole server, shared by all concurrent downloads. */
  bytesPerSecond?: number;
}

export interface FakeGlance {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  addImage(init: FakeImageInit): Promise<FakeImage>;
  /** Applies to subsequent requests for that image; undefined clears it. */
  setFault(imageId: string, fault: Fault | undefined): void;
  setStatus(imageId: string, status: string): void;
  /**
   * File GETs of the image wait before anything else (authentication included)
   * until release(), then are answered from the image's state at that moment;
   * `waiting` resolves when the first such request is held. A handshake for
   * tests (no sleeps). One hold per image at a time.
   */
  hold(imageId: string): { waiting: Promise<void>; release(): void };
  /** GET /v2/images/{id}/file, with or without Range, whatever the answer. */
  fileRequests(imageId: string): number;
  /** GET /v2/images/{id}, whatever the answer. */
  metadataRequests(imageId: string): number;
  /** File body bytes written to the socket for that image (with a 'reset' fault the client may get fewer). */
  bytesSent(imageId: string): number;
  /** Body bytes received by PUT /v2/images/{id}/file, failed uploads included. */
  uploadBytes(imageId: string): number;
  /** Every request, in order; `path` is the request target as sent (query included). */
  readonly requests: Array<{ method: string; path: string; headers: Record<string, string | string[] | undefined> }>;
  /** Closes the server, destroys open sockets (stalled and held ones too) and removes upload spill files. */
  close(): Promise<void>;
}

export async function startFakeGlance(options: FakeGlanceOptions = {}): Promise<FakeGlance> {
  const fake = new FakeGlanceServer(options);
  await fake.listen(options.port ?? 0);
  return fake;
}

const MIB = 1024 * 1024;

/**
 * Deterministic pseudo-random bytes: one seeded 1 MiB block, XORed with a
 * per-block key so blocks differ. Cheap enough for 1 GiB images, not
 * compressible, the same on every platform, and imageBytes(n) is a prefix of
 * imageBytes(m) for n < m.
 */
export function imageBytes(size: number, seed = 1): Buffer {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`imageBytes: bad size ${size}`);
  const base = baseBlock(seed);
  const words = new Uint32Array(Math.ceil(size / 4));
  for (let offset = 0, block = 0; offset < words.length; offset += base.length, block++) {
    const key = nativeOrder(mulberry32(seed ^ Math.imul(block + 1, 0x9e3779b9))());
    const count = Math.min(base.length, words.length - offset);
    for (let i = 0; i < count; i++) words[offset + i] = base[i]! ^ key;
  }
  return Buffer.from(words.buffer, 0, size);
}

/** 1 MiB of seeded pseudo-random words, laid out little-endian whatever the platform. */
function baseBlock(seed: number): Uint32Array {
  const bytes = Buffer.alloc(MIB);
  const next = mulberry32(seed);
  for (let offset = 0; offset < bytes.length; offset += 4) bytes.writeUInt32LE(next(), offset);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The word whose native layout is `value`'s little-endian bytes, so XOR keys give the same bytes everywhere. */
function nativeOrder(value: number): number {
  return LITTLE_ENDIAN ? value : ((value & 0xff) << 24) | ((value & 0xff00) << 8) | ((value >>> 8) & 0xff00) | (value >>> 24);
}

/** A small, fast, seeded 32-bit generator (Mulberry32). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

// ---------------------------------------------------------------------------
// Glance's error pages

/** webob's titles and default explanations, which Glance's error pages are made of. */
const WEBOB_ERRORS: Record<number, { title: string; explanation: string }> = {
  400: { title: 'Bad Request', explanation: 'The server could not comply with the request since it is either malformed or otherwise incorrect.' },
  401: {
    title: 'Unauthorized',
    explanation:
      'This server could not verify that you are authorized to access the document you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser does not understand how to supply the credentials required.',
  },
  403: { title: 'Forbidden', explanation: 'Access was denied to this resource.' },
  404: { title: 'Not Found', explanation: 'The resource could not be found.' },
  409: { title: 'Conflict', explanation: 'There was a conflict when trying to complete your request.' },
  415: { title: 'Unsupported Media Type', explanation: 'The request media type is not supported by this server.' },
  416: { title: 'Request Range Not Satisfiable', explanation: 'The Range requested is not available.' },
  500: { title: 'Internal Server Error', explanation: 'The server has either erred or is incapable of performing the requested operation.' },
  502: { title: 'Bad Gateway', explanation: 'Bad gateway.' },
  503: { title: 'Service Unavailable', explanation: 'The server is currently unavailable. Please try again at a later time.' },
  504: { title: 'Gateway Timeout', explanation: 'The gateway has timed out.' },
};

/** webob's plain-text error page, e.g. `404 Not Found\n\nThe resource could not be found.\n\n   `. */
function glanceErrorBody(code: number, explanation?: string): string {
  const known = WEBOB_ERRORS[code];
  const title = known?.title ?? http.STATUS_CODES[code] ?? 'Error';
  return `${code} ${title}\n\n${explanation ?? known?.explanation ?? ''}\n\n   `;
}

/** No body is allowed with these statuses. */
function bodiless(code: number): boolean {
  return code < 200 || code === 204 || code === 304;
}

function sendText(res: ServerResponse, code: number, body: string, contentType: string, headers: http.OutgoingHttpHeaders = {}): void {
  if (bodiless(code)) {
    res.writeHead(code, headers).end();
    return;
  }
  const bytes = Buffer.from(body);
  res.writeHead(code, { ...headers, 'Content-Type': contentType, 'Content-Length': bytes.length }).end(bytes);
}

function sendError(res: ServerResponse, code: number, explanation?: string, headers?: http.OutgoingHttpHeaders): void {
  sendText(res, code, glanceErrorBody(code, explanation), 'text/plain; charset=UTF-8', headers);
}

function sendJson(res: ServerResponse, code: number, value: unknown, headers?: http.OutgoingHttpHeaders): void {
  sendText(res, code, JSON.stringify(value), 'application/json', headers);
}

/** A 'status' fault's answer: its own body as given (JSON when it parses as JSON), else Glance's page. */
function sendFaultStatus(res: ServerResponse, fault: Extract<Fault, { kind: 'status' }>): void {
  if (fault.body === undefined) {
    sendError(res, fault.code);
    return;
  }
  sendText(res, fault.code, fault.body, isJson(fault.body) ? 'application/json' : 'text/plain; charset=UTF-8');
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Range requests, as glance/common/wsgi.py get_range_from_request and the
// download serializer in glance/api/v2/image_data.py answer them

type RangeAnswer =
  | { kind: 'whole' }
  | { kind: 'part'; start: number; end: number }
  | { kind: 'refused'; code: 400 | 416; message: string };

function parseRange(header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: 'whole' };
  if (header.includes(',')) {
    const message = 'Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead.';
    return { kind: 'refused', code: 400, message };
  }
  const invalid = { kind: 'refused', code: 416, message: 'Invalid Range header.' } as const;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (match === null) return invalid;
  const [, first = '', last = ''] = match;
  if (first === '') {
    // A suffix (bytes=-n): the last n bytes, the whole image when n >= size.
    const suffix = Number(last);
    if (last === '' || suffix === 0 || size === 0) return invalid;
    return { kind: 'part', start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (last !== '' && Number(last) < start) return invalid;
  if (start >= size) {
    const message = `Invalid start position in Range header. Start position MUST be in the inclusive range [0, ${size - 1}].`;
    return { kind: 'refused', code: 416, message };
  }
  return { kind: 'part', start, end: last === '' ? size - 1 : Math.min(Number(last), size - 1) };
}

// ---------------------------------------------------------------------------
// The shared bandwidth limit

/**
 * A token bucket shared by every download. A sender takes tokens for a piece
 * before writing it and, when that leaves the bucket in debt, waits until the
 * debt is paid, so the long-run rate is exact whatever the timers' lateness:
 * time slept too long refills the bucket (up to 10 ms worth) instead of being
 * lost. The bucket starts with that 10 ms allowance, a burst of 1% per second.
 */
export class TokenBucket {
  private readonly capacity: number;
  private tokens: number;
  private refilledAt: number;

  /** `clock` is the real one but in the bucket's own test, which needs timers that are late by exactly what it chooses. */
  constructor(private readonly bytesPerSecond: number, private readonly clock: BucketClock = REAL_CLOCK) {
    this.capacity = bytesPerSecond / 100;
    this.tokens = this.capacity;
    this.refilledAt = clock.now();
  }

  /**
   * The size of a piece to take at a time: at most 10 ms of the budget, so a
   * slow limit still sends a steady stream rather than bursts of 64 KiB.
   */
  get grain(): number {
    return Math.max(1, Math.min(64 * 1024, Math.floor(this.bytesPerSecond / 100)));
  }

  async take(bytes: number): Promise<void> {
    const now = this.clock.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.refilledAt) * this.bytesPerSecond) / 1000);
    this.refilledAt = now;
    this.tokens -= bytes;
    if (this.tokens < 0) await this.clock.sleep((-this.tokens * 1000) / this.bytesPerSecond);
  }
}

/** Milliseconds, and a wait of some. */
export interface BucketClock {
  now(): number;
  sleep(ms: number): Promise<unknown>;
}

const REAL_CLOCK: BucketClock = { now: () => performance.now(), sleep: (ms) => sleep(ms) };

// ---------------------------------------------------------------------------
// Images

interface StoredImage {
  id: string;
  name: string | null;
  status: string;
  visibility: string;
  /** Undefined: visible to every caller. */
  visibleTo: ReadonlySet<string> | undefined;
  diskFormat: string | null;
  containerFormat: string | null;
  /** Undefined until data is uploaded (an image created by POST). */
  data: Buffer | { file: string } | undefined;
  size: number | null;
  checksum: string | null;
  osHashAlgo: string | null;
  osHashValue: string | null;
  createdAt: string;
  updatedAt: string;
}

/** Glance's timestamps: ISO 8601 to the second, UTC. */


interface Digests {
  size: number;
  md5: string;
  hash: string;
}

/** Size, md5 and `algorithm` digest of the bytes, read from disk in a stream for files. */
async function digest(data: Buffer | { file: string }, algorithm: string): Promise<Digests> {
  const md5 = createHash('md5');
  const hash = createHash(algorithm);
  let size = 0;
  const chunks = Buffer.isBuffer(data) ? [data] : fs.createReadStream(data.file);
  for await (const chunk of chunks as AsyncIterable<Buffer> | Buffer[]) {
    md5.update(chunk);
    hash.update(chunk);
    size += chunk.length;
  }
  return { size, md5: md5.digest('hex'), hash: hash.digest('hex') };
}

/** The bytes [start, end] of an image's data, as chunks of any size. */
function openData(data: Buffer | { file: string }, start: number, end: number): AsyncIterable<Buffer> | Buffer[] {
  if (Buffer.isBuffer(data)) return [data.subarray(start, end + 1)];
  return fs.createReadStream(data.file, { start, end, highWaterMark: 64 * 1024 });
}

/** Upload bodies above this size go to a file instead of memory. */
const SPILL_BYTES = 64 * MIB;

/**
 * A PUT body as it arrives: hashed on the way, kept in memory until it
 * passes SPILL_BYTES, then written on to a file at `spillPath`.
 */
class UploadSink {
  private readonly md5: Hash = createHash('md5');
  private readonly sha512: Hash = createHash('sha512');
  private chunks: Buffer[] = [];
  private file: fs.WriteStream | undefined;
  size = 0;

  constructor(private readonly spillPath: () => Promise<string>) {}

  async write(chunk: Buffer): Promise<void> {
    this.md5.update(chunk);
    this.sha512.update(chunk);
    this.size += chunk.length;
    if (this.file === undefined) {
      this.chunks.push(chunk);
      if (this.size > SPILL_BYTES) await this.spill();
    } else if (!this.file.write(chunk)) {
      await once(this.file, 'drain');
    }
  }

  private async spill(): Promise<void> {
    this.file = fs.createWriteStream(await this.spillPath());
    for (const held of this.chunks) this.file.write(held);
    this.chunks = [];
    if (this.file.writableNeedDrain) await once(this.file, 'drain');
  }

  /** The data as stored, with its digests. */
  async finish(): Promise<{ data: Buffer | { file: string }; digests: Digests }> {
    const digests = { size: this.size, md5: this.md5.digest('hex'), hash: this.sha512.digest('hex') };
    if (this.file === undefined) return { data: Buffer.concat(this.chunks), digests };
    this.file.end();
    await once(this.file, 'close');
    return { data: { file: String(this.file.path) }, digests };
  }

  /** Drops what a failed upload had written. */
  async discard(): Promise<void> {
    this.chunks = [];
    if (this.file === undefined) return;
    this.file.destroy();
    await once(this.file, 'close');
    await fs.promises.rm(String(this.file.path), { force: true });
  }
}

// ---------------------------------------------------------------------------
// The server

interface Counters {
  file: number;
  metadata: number;
  bytesSent: number;
  uploadBytes: number;
}

interface Hold {
  /** Resolves the hold's `waiting` promise. */
  held(): void;
  released: Promise<void>;
  release(): void;
}

/** Glance's API versions, newest (CURRENT) first. */
const API_MINOR_VERSIONS = 16;

const IMAGE_ROUTE = /^\/v2\/images\/([^/]+)(\/file)?$/;

class FakeGlanceServer implements FakeGlance {
  readonly requests: FakeGlance['requests'] = [];
  private readonly server = http.createServer((req, res) => void this.handle(req, res));
  private readonly images = new Map<string, StoredImage>();
  private readonly faults = new Map<string, Fault>();
  private readonly holds = new Map<string, Hold>();
  private readonly counters = new Map<string, Counters>();
  private readonly validTokens: ReadonlySet<string> | undefined;
  private readonly validateToken: ((token: string) => Promise<boolean>) | undefined;
  private readonly bucket: TokenBucket | undefined;
  /** Created on the first upload that spills to disk; removed on close(). */
  private spillDir: Promise<string> | undefined;
  private spillFiles = 0;
  private closing: Promise<void> | undefined;
  private origin = '';

  constructor(options: FakeGlanceOptions) {
    this.validTokens = options.validTokens === undefined ? undefined : new Set(options.validTokens);
    this.validateToken = options.validateToken;
    const rate = options.bytesPerSecond;
    if (rate !== undefined && !(rate > 0 && Number.isFinite(rate))) throw new RangeError(`bytesPerSecond must be positive, not ${rate}`);
    this.bucket = rate === undefined ? undefined : new TokenBucket(rate);
  }

  get url(): string {
    return this.origin;
  }

  async listen(port: number): Promise<void> {
    this.server.listen(port, '127.0.0.1');
    await once(this.server, 'listening');
    this.origin = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async addImage(init: FakeImageInit): Promise<FakeImage> {
    const id = init.id ?? randomUUID();
    const osHashAlgo = init.osHashAlgo === undefined ? 'sha512' : init.osHashAlgo;
    const actual = await digest(init.data, osHashAlgo ?? 'sha512');
    // Checked after the digest, so that two concurrent calls with one id cannot both pass.
    if (this.images.has(id)) throw new Error(`fake Glance: image ${id} already exists`);
    const now = glanceTime();
    this.images.set(id, {
      id,
      name: init.name ?? null,
      status: init.status ?? 'active',
      visibility: init.visibleTo === undefined ? 'public' : 'private',
      visibleTo: init.visibleTo === undefined ? undefined : new Set(init.visibleTo),
      diskFormat: 'raw',
      containerFormat: 'bare',
      data: init.data,
      size: actual.size,
      checksum: init.checksum === undefined ? actual.md5 : init.checksum,
      osHashAlgo,
      // Without an algorithm Glance has no hash to show either.
      osHashValue: init.osHashValue !== undefined ? init.osHashValue : osHashAlgo === null ? null : actual.hash,
      createdAt: now,
      updatedAt: now,
    });
    return { id, size: actual.size, checksum: actual.md5, osHashValue: actual.hash };
  }

  setFault(imageId: string, fault: Fault | undefined): void {
    if (fault === undefined) this.faults.delete(imageId);
    else this.faults.set(imageId, fault);
  }

  setStatus(imageId: string, status: string): void {
    const image = this.images.get(imageId);
    if (image === undefined) throw new Error(`fake Glance: no image ${imageId}`);
    image.status = status;
    image.updatedAt = glanceTime();
  }

  hold(imageId: string): { waiting: Promise<void>; release(): void } {
    if (this.holds.has(imageId)) throw new Error(`fake Glance: image ${imageId} is already held`);
    let held!: () => void;
    let release!: () => void;
    const waiting = new Promise<void>((resolve) => (held = resolve));
    const released = new Promise<void>((resolve) => (release = resolve));
    const hold: Hold = {
      held,
      released,
      release: () => {
        if (this.holds.get(imageId) === hold) this.holds.delete(imageId);
        release();
      },
    };
    this.holds.set(imageId, hold);
    return { waiting, release: hold.release };
  }

  fileRequests(imageId: string): number {
    return this.counters.get(imageId)?.file ?? 0;
  }

  metadataRequests(imageId: string): number {
    return this.counters.get(imageId)?.metadata ?? 0;
  }

  bytesSent(imageId: string): number {
    return this.counters.get(imageId)?.bytesSent ?? 0;
  }

  uploadBytes(imageId: string): number {
    return this.counters.get(imageId)?.uploadBytes ?? 0;
  }

  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    // Held requests go on to find their sockets destroyed, so no handler is left waiting.
    for (const hold of [...this.holds.values()]) hold.release();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
    if (this.spillDir !== undefined) await fs.promises.rm(await this.spillDir, { recursive: true, force: true });
  }

  private count(imageId: string): Counters {
    let counters = this.counters.get(imageId);
    if (counters === undefined) {
      counters = { file: 0, metadata: 0, bytesSent: 0, uploadBytes: 0 };
      this.counters.set(imageId, counters);
    }
    return counters;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.requests.push({ method: req.method ?? '', path: req.url ?? '', headers: { ...req.headers } });
    res.setHeader('X-Openstack-Request-Id', `req-${randomUUID()}`);
    try {
      await this.route(req, res);
    } catch {
      // A broken handler (a data file gone, an upload cut off) must not take the test process down.
      if (res.headersSent) res.destroy();
      else sendError(res, 500);
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { pathname } = new URL(req.url ?? '/', this.url);
    const method = req.method;
    if (pathname === '/versions') {
      if (method === 'GET') return this.versions(res);
    } else if (pathname === '/v2/images') {
      if (method === 'GET') return this.list(req, res);
      if (method === 'POST') return this.create(req, res);
    } else {
      const match = IMAGE_ROUTE.exec(pathname);
      const id = match === null ? undefined : decodePathSegment(match[1]!);
      const onFile = match?.[2] !== undefined;
      if (id !== undefined && onFile) {
        if (method === 'GET') return this.download(req, res, id);
        if (method === 'PUT') return this.upload(req, res, id);
      } else if (id !== undefined) {
        if (method === 'GET') return this.show(req, res, id);
        if (method === 'PATCH') return this.update(req, res, id);
        if (method === 'DELETE') return this.remove(req, res, id);
      }
    }
    sendError(res, 404);
  }

  /** Answers 401 and resolves false when tokens are checked and this request has no valid one. */
  private async authorized(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    if (this.validTokens === undefined && this.validateToken === undefined) return true;
    const token = req.headers['x-auth-token'];
    const valid = typeof token === 'string' &&
      (this.validTokens === undefined || this.validTokens.has(token)) &&
      (this.validateToken === undefined || (await this.validateToken(token)));
    if (valid) return true;
    sendError(res, 401);
    return false;
  }

  /** The image as this caller may see it: undefined when unknown or private to others. */
  private visible(req: IncomingMessage, id: string): StoredImage | undefined {
    const image = this.images.get(id);
    if (image?.visibleTo === undefined) return image;
    const token = req.headers['x-auth-token'];
    return typeof token === 'string' && image.visibleTo.has(token) ? image : undefined;
  }

  private statusFault(id: string, on: 'metadata' | 'file'): Extract<Fault, { kind: 'status' }> | undefined {
    const fault = this.faults.get(id);
    return fault?.kind === 'status' && fault.on === on ? fault : undefined;
  }

  private bodyFault(id: string): Exclude<Fault, { kind: 'status' }> | undefined {
    const fault = this.faults.get(id);
    return fault === undefined || fault.kind === 'status' ? undefined : fault;
  }

  private versions(res: ServerResponse): void {
    // Unauthenticated, as in Glance, where version negotiation comes before keystonemiddleware.
    const versions = [];
    for (let minor = API_MINOR_VERSIONS; minor >= 0; minor--) {
      versions.push({
        id: `v2.${minor}`,
        status: minor === API_MINOR_VERSIONS ? 'CURRENT' : 'SUPPORTED',
        links: [{ rel: 'self', href: `${this.url}/v2/` }],
      });
    }
    sendJson(res, 200, { versions });
  }

  private async list(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await this.authorized(req, res))) return;
    const images = [...this.images.keys()].flatMap((id) => {
      const image = this.visible(req, id);
      return image === undefined ? [] : [imageDocument(image)];
    });
    sendJson(res, 200, { images, schema: '/v2/schemas/images', first: '/v2/images' });
  }

  private async show(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    this.count(id).metadata++;
    if (!(await this.authorized(req, res))) return;
    const fault = this.statusFault(id, 'metadata');
    if (fault !== undefined) return sendFaultStatus(res, fault);
    const image = this.visible(req, id);
    if (image === undefined) return sendError(res, 404);
    sendJson(res, 200, imageDocument(image));
  }

  private async create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await this.authorized(req, res))) return;
    let body: Record<string, unknown>;
    try {
      body = JSON.parse((await readBody(req)).toString('utf8') || '{}') as Record<string, unknown>;
    } catch {
      return sendError(res, 400, 'Malformed JSON in request body.');
    }
    const id = typeof body.id === 'string' ? body.id : randomUUID();
    if (this.images.has(id)) return sendError(res, 409, `Image with identifier ${id} already exists!`);
    const now = glanceTime();
    const image: StoredImage = {
      id,
      name: optionalString(body.name),
      status: 'queued',
      visibility: optionalString(body.visibility) ?? 'shared',
      visibleTo: undefined,
      diskFormat: optionalString(body.disk_format),
      containerFormat: optionalString(body.container_format),
      data: undefined,
      size: null,
      checksum: null,
      osHashAlgo: null,
      osHashValue: null,
      createdAt: now,
      updatedAt: now,
    };
    this.images.set(id, image);
    sendJson(res, 201, imageDocument(image), { Location: `${this.url}/v2/images/${id}` });
  }

  private async update(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    if (!(await this.authorized(req, res))) return;
    const image = this.visible(req, id);
    if (image === undefined) return sendError(res, 404);
    image.updatedAt = glanceTime();
    sendJson(res, 200, imageDocument(image));
  }

  private async remove(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    if (!(await this.authorized(req, res))) return;
    if (this.visible(req, id) === undefined) return sendError(res, 404);
    this.images.delete(id);
    res.writeHead(204).end();
  }

  private async upload(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    if (!(await this.authorized(req, res))) return;
    const image = this.visible(req, id);
    if (image === undefined) return sendError(res, 404);
    if (req.headers['content-type'] !== 'application/octet-stream') return sendError(res, 415);
    if (image.status !== 'queued') return sendError(res, 409, `Image status transition from ${image.status} to saving is not allowed`);
    image.status = 'saving';
    const sink = new UploadSink(() => this.spillPath());
    const counters = this.count(id);
    try {
      for await (const chunk of req as AsyncIterable<Buffer>) {
        counters.uploadBytes += chunk.length;
        await sink.write(chunk);
      }
    } catch (err) {
      // The client went away mid-body: Glance puts the image back to queued.
      image.status = 'queued';
      await sink.discard();
      throw err;
    }
    const { data, digests } = await sink.finish();
    Object.assign(image, {
      data,
      status: 'active',
      size: digests.size,
      checksum: digests.md5,
      osHashAlgo: 'sha512',
      osHashValue: digests.hash,
      updatedAt: glanceTime(),
    });
    res.writeHead(204).end();
  }

  private spillPath(): Promise<string> {
    this.spillDir ??= fs.promises.mkdtemp(path.join(os.tmpdir(), 'fake-glance-'));
    return this.spillDir.then((dir) => path.join(dir, `upload-${++this.spillFiles}`));
  }

  private async download(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    this.count(id).file++;
    const hold = this.holds.get(id);
    if (hold !== undefined) {
      hold.held();
      await hold.released;
    }
    if (!(await this.authorized(req, res))) return;
    const fault = this.statusFault(id, 'file');
    if (fault !== undefined) return sendFaultStatus(res, fault);
    const image = this.visible(req, id);
    if (image === undefined) return sendError(res, 404);
    if (image.status === 'deactivated') {
      return sendError(res, 403, 'The requested image has been deactivated. Image data download is forbidden.');
    }
    // Glance answers 204 for an image that has no data yet.
    if (image.status === 'queued' || image.data === undefined || image.size === null) {
      res.writeHead(204).end();
      return;
    }
    const range = parseRange(req.headers.range, image.size);
    if (range.kind === 'refused') {
      const headers = range.code === 416 ? { 'Content-Range': `bytes */${image.size}` } : {};
      return sendError(res, range.code, range.message, headers);
    }
    const { start, end } = range.kind === 'part' ? range : { start: 0, end: image.size - 1 };
    res.writeHead(range.kind === 'part' ? 206 : 200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': end - start + 1,
      ...(range.kind === 'part' ? { 'Content-Range': `bytes ${start}-${end}/${image.size}` } : {}),
      ...(image.checksum === null ? {} : { 'Content-MD5': image.checksum }),
    });
    await this.sendBody(res, id, image.data, start, end);
  }

  /** Writes the bytes [start, end], throttled, cut short by the image's body fault if it falls inside them. */
  private async sendBody(res: ServerResponse, id: string, data: Buffer | { file: string }, start: number, end: number): Promise<void> {
    const length = end - start + 1;
    const fault = this.bodyFault(id);
    const cut = fault !== undefined && fault.afterBytes < length ? fault : undefined;
    const complete = await this.pump(res, id, openData(data, start, end), cut?.afterBytes ?? length);
    if (!complete) return;
    if (cut === undefined) {
      res.end();
      return;
    }
    // The bytes sent must reach the socket before the fault acts on it.
    if (!(await flushed(res))) return;
    // A reset sends RST (the client reads ECONNRESET), a short body a clean FIN: the two differ on the wire.
    if (cut.kind === 'reset') res.socket?.resetAndDestroy();
    else if (cut.kind === 'short') res.socket?.end();
    // 'stall': nothing more is written; the socket stays open until someone closes it.
  }

  /**
   * Writes `limit` bytes of `source` to the response in pieces the bucket
   * allows, waiting for 'drain' whenever the client is behind (a 1 GiB body is
   * never buffered). False when the client went away first.
   */
  private async pump(res: ServerResponse, id: string, source: AsyncIterable<Buffer> | Buffer[], limit: number): Promise<boolean> {
    const counters = this.count(id);
    const grain = this.bucket?.grain ?? 64 * 1024;
    let remaining = limit;
    for await (const chunk of source) {
      for (let offset = 0; offset < chunk.length && remaining > 0; offset += grain) {
        const piece = chunk.subarray(offset, offset + Math.min(grain, remaining));
        await this.bucket?.take(piece.length);
        if (res.destroyed) return false;
        counters.bytesSent += piece.length;
        remaining -= piece.length;
        if (!res.write(piece) && !(await drained(res))) return false;
      }
      // Leaving the loop early closes a file stream.
      if (remaining === 0) break;
    }
    return !res.destroyed;
  }
}

/** Resolves true on 'drain', false when the response closes first. */
function drained(res: ServerResponse): Promise<boolean> {
  return new Promise((resolve) => {
    const onDrain = (): void => settle(true);
    const onClose = (): void => settle(false);
    const settle = (value: boolean): void => {
      res.off('drain', onDrain).off('close', onClose);
      resolve(value);
    };
    res.on('drain', onDrain).on('close', onClose);
  });
}

/** Resolves true once everything written so far has been handed to the socket, false when it closes first. */
function flushed(res: ServerResponse): Promise<boolean> {
  return new Promise((resolve) => {
    const onClose = (): void => resolve(false);
    res.once('close', onClose);
    res.write(Buffer.alloc(0), (err) => {
      res.off('close', onClose);
      resolve(err == null);
    });
  });
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function optionalString(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

/** The id in the path, or undefined when its percent-encoding is broken (Glance answers 404). */
function decodePathSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}
