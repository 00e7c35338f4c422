import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SourceUnavailable } from '../errors.js';

export interface UpstreamOptions {
  /** upstream_timeout, ms: for the headers of an answer, and between two chunks of a body. */
  timeoutMs: number;
  /** What it is, in errors (SourceUnavailable's source): `glance`, `keystone`. */
  name?: string;
}

export interface UpstreamRequest {
  method: string;
  /** A path of the node's (`/v2/...`, query included). */
  path: string;
  headers?: OutgoingHttpHeaders;
  /** Sent whole with its length, or streamed to the upstream as it comes (an upload). */
  body?: Buffer | Readable;
  /** How long to wait for the answer's headers: upstream_timeout unless given; 0 for no limit. */
  headersTimeoutMs?: number;
}

export interface UpstreamResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Readable;
}

/**
 * An HTTP service the node talks to (the upstream Glance at upstream_url,
 * Keystone): one keep-alive agent, shared by everything that calls it. A
 * path prefix in the URL (`http://host/image`, as Glance sits behind some
 * proxies; Keystone's `/v3`) is kept.
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
        reject(new SourceUnavailable(this.options.name ?? 'glance', `${what}: ${err.message}`, { cause: err }));
      });
      const body = request.body;
      if (body === undefined) {
        outgoing.end();
      } else if (Buffer.isBuffer(body)) {
        outgoing.setHeader('content-length', body.length);
        outgoing.end(body);
      } else {
        // A failed upload (the client went away) fails the upstream request with it.
        pipeline(body, outgoing).catch((err: Error) => outgoing.destroy(err));
      }
    });
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}


/** A body, whole; past `limit` bytes it is cut there (`truncate`) or refused. */
export async function readBounded(body: Readable, limit: number, truncate = false): Promise<Buffer> {
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
