import { Pool, type Dispatcher } from 'undici';
import { SourceUnavailable } from '../errors.js';
import type { ByteRange } from '../types.js';
import type { ImageMetadata, ImageSource, MetadataResult, SourceAnswer, SourceResponse } from './source.js';

/** Refusal bodies are kept whole to pass them on; a source that sends more than this is cut short. */
const MAX_ANSWER_BYTES = 64 * 1024;

export interface UpstreamOptions {
  /** upstream_timeout, ms: for the headers of an answer, and between two chunks of a body. */
  timeoutMs: number;
}

/**
 * The upstream Glance at upstream_url: one connection pool, shared by the
 * image source and the routes that forward requests to it. A path prefix in
 * the URL (`http://host/image`, as Glance sits behind some proxies) is kept.
 */
export class Upstream {
  readonly origin: string;
  readonly pool: Pool;
  private readonly prefix: string;

  constructor(url: string, readonly options: UpstreamOptions) {
    const parsed = new URL(url);
    this.origin = parsed.origin;
    this.prefix = parsed.pathname.replace(/\/+$/, '');
    this.pool = new Pool(this.origin, {
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      keepAliveTimeout: 30_000,
    });
  }

  /** A path of the node's (`/v2/...`) on the upstream. */
  path(nodePath: string): string {
    return `${this.prefix}${nodePath}`;
  }

  async request(options: Omit<Dispatcher.RequestOptions, 'origin' | 'path'> & { path: string }): Promise<Dispatcher.ResponseData> {
    try {
      return await this.pool.request({ ...options, path: this.path(options.path) });
    } catch (err) {
      throw new SourceUnavailable('glance', `${options.method} ${options.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/**
 * Images from the upstream Glance, asked with the caller's token:
 * `GET /v2/images/{id}` for status, size and checksums, `GET /v2/images/{id}/file` for bytes.
 */
export class GlanceSource implements ImageSource {
  readonly kind = 'glance';

  constructor(private readonly upstream: Upstream) {}

  async metadata(imageId: string, token: string | undefined): Promise<MetadataResult> {
    const response = await this.upstream.request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}`, headers: authHeaders(token) });
    if (response.statusCode !== 200) return { ok: false, answer: await answerOf(response) };
    let document: Record<string, unknown>;
    try {
      document = (await response.body.json()) as Record<string, unknown>;
    } catch (err) {
      throw new SourceUnavailable('glance', `the metadata of image '${imageId}' is not JSON`, { cause: err });
    }
    return { ok: true, image: metadataOf(imageId, document) };
  }

  async open(imageId: string, token: string | undefined, range?: ByteRange): Promise<SourceResponse> {
    const headers = authHeaders(token);
    if (range !== undefined) headers.range = `bytes=${range.start}-${range.end ?? ''}`;
    const response = await this.upstream.request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}/file`, headers });
    return { status: response.statusCode, headers: response.headers as Record<string, string | string[]>, body: response.body };
  }

  close(): Promise<void> {
    return this.upstream.close();
  }
}

function authHeaders(token: string | undefined): Record<string, string> {
  return token === undefined ? {} : { 'x-auth-token': token };
}

/** Glance's image document, the fields the node needs checked for their types. */
export function metadataOf(imageId: string, document: Record<string, unknown>): ImageMetadata {
  const text = (name: string): string | null => (typeof document[name] === 'string' && document[name] !== '' ? (document[name] as string) : null);
  const size = document.size;
  return {
    id: imageId,
    status: text('status') ?? 'unknown',
    size: typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? size : null,
    checksum: text('checksum'),
    osHashAlgo: text('os_hash_algo'),
    osHashValue: text('os_hash_value'),
    document,
  };
}

/** A refusal, read whole (up to a bound) so it can be passed on with its length. */
async function answerOf(response: Dispatcher.ResponseData): Promise<SourceAnswer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    const room = MAX_ANSWER_BYTES - length;
    chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk);
    length += Math.min(chunk.length, room);
    if (length >= MAX_ANSWER_BYTES) {
      response.body.destroy();
      break;
    }
  }
  return { status: response.statusCode, headers: response.headers as Record<string, string | string[]>, body: Buffer.concat(chunks) };
}
