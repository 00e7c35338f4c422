import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SourceUnavailable } from '../errors.js';
import type { ByteRange } from '../types.js';
import type { ImageMetadata, ImageSource, MetadataResult, SourceAnswer, SourceResponse } from './source.js';

/** Refusal bodies are kept whole to pass them on; a source that sends more than this is cut short. */
const MAX_ANSWER_BYTES = 64 * 1024;
/** An image document is a few kB; one this large is not Glance's. */
const MAX_DOCUMENT_BYTES = 1024 * 1024;

export interface UpstreamOptions {
  /** upstream_timeout, ms: for the headers of an answer, and between two chunks of a body. */
  timeoutMs: number;
}

export interface UpstreamRequest {
  method: string;
  /** A path of the node's (`/v2/...`, query included). */
  path: string;
  headers?: OutgoingHttpHeaders;
  /** Streamed to the upstream as it comes (an upload). */
  body?: Readable;
  /** How long to wait for the answer's headers: upstream_timeout unless given; 0 for no limit. */
  headersTimeoutMs?: number;
}

export interface UpstreamResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Readable;
}

/**
 * The upstream Glance at upstream_url: one keep-alive agent, shared by the
 * image source and the routes that forward requests to it. A path prefix in
 * the URL (`http://host/image`, as Glance sits behind some proxies) is kept.
 *
 * Node's own HTTP client, not undici: the node is an HTTP server already,
 * and undici's parser (WebAssembly) cost each process about 20 MB of memory.
 */
export class Upstream {
  private readonly url: URL;
  private readonly prefix: string;
  private readonly agent: http.Agent;
  private readonly client: typeof http | typeof https;

  constructor(url: string, readonly options: UpstreamOptions) {
    this.url = new URL(url);
    this.prefix = this.url.pathname.replace(/\/+$/, '');
    this.client = this.url.protocol === 'https:' ? https : http;
    this.agent = new this.client.Agent({ keepAlive: true, scheduling: 'lifo' });
  }

  /**
   * Sends a request; resolves with the answer once its headers are in (its
   * body streams, and fails if the upstream goes silent for upstream_timeout).
   * Rejects with SourceUnavailable when the upstream cannot be reached or does not answer.
   */
  request(request: UpstreamRequest): Promise<UpstreamResponse> {
    const { timeoutMs } = this.options;
    const headersTimeoutMs = request.headersTimeoutMs ?? timeoutMs;
    const what = `${request.method} ${request.path}`;
    return new Promise((resolve, reject) => {
      const outgoing = this.client.request({
        protocol: this.url.protocol,
        hostname: this.url.hostname,
        port: this.url.port,
        method: request.method,
        path: `${this.prefix}${request.path}`,
        headers: request.headers,
        agent: this.agent,
      });
      const timer = headersTimeoutMs > 0
        ? setTimeout(() => outgoing.destroy(new Error(`no answer within ${headersTimeoutMs / 1000} s`)), headersTimeoutMs)
        : undefined;
      outgoing.once('response', (incoming) => {
        clearTimeout(timer);
        incoming.setTimeout(timeoutMs, () => incoming.destroy(new Error(`the upstream sent nothing for ${timeoutMs / 1000} s`)));
        // The socket goes back to the agent for the next request: without the idle limit of this one.
        incoming.once('end', () => incoming.socket?.setTimeout(0));
        resolve({ statusCode: incoming.statusCode ?? 502, headers: incoming.headers, body: incoming });
      });
      outgoing.once('error', (err) => {
        clearTimeout(timer);
        reject(new SourceUnavailable('glance', `${what}: ${err.message}`, { cause: err }));
      });
      if (request.body === undefined) outgoing.end();
      // A failed upload (the client went away) fails the upstream request with it.
      else pipeline(request.body, outgoing).catch((err: Error) => outgoing.destroy(err));
    });
  }

  async close(): Promise<void> {
    this.agent.destroy();
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
      document = JSON.parse((await readBounded(response.body, MAX_DOCUMENT_BYTES)).toString('utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new SourceUnavailable('glance', `the metadata of image '${imageId}' is not a JSON document: ${(err as Error).message}`, { cause: err });
    }
    return { ok: true, image: metadataOf(imageId, document) };
  }

  async open(imageId: string, token: string | undefined, range?: ByteRange): Promise<SourceResponse> {
    const headers = authHeaders(token);
    if (range !== undefined) headers.range = `bytes=${range.start}-${range.end ?? ''}`;
    const response = await this.upstream.request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}/file`, headers });
    return { status: response.statusCode, headers: definedHeaders(response.headers), body: response.body };
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
async function answerOf(response: UpstreamResponse): Promise<SourceAnswer> {
  return { status: response.statusCode, headers: definedHeaders(response.headers), body: await readBounded(response.body, MAX_ANSWER_BYTES, true) };
}

/** A body, whole; past `limit` bytes it is cut there (`truncate`) or refused. */
async function readBounded(body: Readable, limit: number, truncate = false): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (length + chunk.length > limit) {
      body.destroy();
      if (!truncate) throw new Error(`longer than ${limit} bytes`);
      chunks.push(chunk.subarray(0, limit - length));
      length = limit;
      break;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  return Buffer.concat(chunks, length);
}

export function definedHeaders(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined) out[name] = value;
  return out;
}
