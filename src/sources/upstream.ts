import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AnswerTooLong, ConnectTimedOut, SourceStalled, SourceUnavailable, StaleConnection } from '../errors.js';

export interface UpstreamOptions {
  /** upstream_timeout, ms: for the headers of an answer, and between two chunks of a body. */
  timeoutMs: number;
  /** What it is, in errors (SourceUnavailable's source): `glance`, `keystone`. */
  name?: string;
  /** Headers added to every request, asked for as it is sent (the request id to trace it by). */
  headers?: () => OutgoingHttpHeaders;
  /** How long a new connection may take to be established; unset: the system's (minutes, for a host that is gone). */
  connectTimeoutMs?: number;
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

/** Methods whose request may be sent twice with the same effect, and so be replayed on a new connection. */
const REPLAYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);
/** How a kept-alive connection that the upstream had closed fails a request sent on it. */
const STALE_CONNECTION_CODES = new Set(['ECONNRESET', 'EPIPE']);
/** How long an idle connection is kept when the upstream does not say (Keep-Alive: timeout=N); common servers close theirs after 5 s. */
const IDLE_DEFAULT_MS = 4_000;

/** Each connection's idle limit, from the last answer it carried. */
const idleLimits = new WeakMap<Socket, number>();

/**
 * A keep-alive agent whose idle connections close before the upstream closes
 * them. keepSocketAlive (the agent's documented hook, run as a connection
 * goes back to the pool) is where: Node's own sets the socket's timeout
 * there, and on a timeout the agent closes an idle connection.
 */
function keepAliveAgent(client: typeof http | typeof https): http.Agent {
  const agent = new client.Agent({ keepAlive: true, scheduling: 'lifo' });
  // Typed void in @types/node; Node's returns whether the socket is kept.
  const keep = agent.keepSocketAlive.bind(agent) as unknown as (socket: Socket) => boolean;
  const keepWithLimit = (socket: Socket): boolean => {
    if (!keep(socket)) return false;
    socket.setTimeout(idleLimits.get(socket) ?? IDLE_DEFAULT_MS);
    return true;
  };
  agent.keepSocketAlive = keepWithLimit as unknown as typeof agent.keepSocketAlive;
  return agent;
}

/** The idle limit for a connection: a second under what the upstream announced, so that we close it first. */
function idleLimitMs(keepAlive: string | undefined): number {
  const announced = keepAlive === undefined ? undefined : /(?:^|,)\s*timeout=(\d+)/i.exec(keepAlive)?.[1];
  if (announced === undefined) return IDLE_DEFAULT_MS;
  return Math.max(500, Math.min(IDLE_DEFAULT_MS, Number(announced) * 1000 - 1000));
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
    this.agent = keepAliveAgent(this.client);
  }

  /**
   * Sends a request; resolves with the answer once its headers are in (its
   * body streams, and fails if the upstream goes silent for upstream_timeout).
   * Rejects with SourceUnavailable when the upstream cannot be reached or does not answer.
   *
   * A kept-alive connection can be closed by the upstream just as a request
   * is sent on it (its idle timeout fired): the request fails before any
   * answer though the upstream is fine. Such a request, if it is safe to
   * send twice (GET, HEAD, OPTIONS, without a body), is sent once more on a
   * new connection, as browsers and undici do.
   */
  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    try {
      return await this.send(request);
    } catch (err) {
      if (!(err instanceof StaleConnection)) throw err;
      return this.send(request, true);
    }
  }

  private send(request: UpstreamRequest, retried = false): Promise<UpstreamResponse> {
    const { timeoutMs } = this.options;
    const headersTimeoutMs = request.headersTimeoutMs ?? timeoutMs;
    const what = `${request.method} ${request.path}`;
    const replayable = !retried && REPLAYABLE.has(request.method) && request.body === undefined;
    return new Promise((resolve, reject) => {
      const outgoing = this.client.request({
        protocol: this.url.protocol,
        hostname: this.url.hostname,
        port: this.url.port,
        method: request.method,
        path: `${this.prefix}${request.path}`,
        headers: { ...this.options.headers?.(), ...request.headers },
        agent: this.agent,
      });
      const name = this.options.name ?? 'glance';
      const connectTimeoutMs = this.options.connectTimeoutMs;
      if (connectTimeoutMs !== undefined) {
        outgoing.once('socket', (socket) => {
          if (!socket.connecting) return;
          const connectTimer = setTimeout(() => outgoing.destroy(new SourceUnavailable(name, `${what}: not connected`, { cause: new ConnectTimedOut(`${this.url.host}`, connectTimeoutMs) })), connectTimeoutMs);
          const cleared = (): void => clearTimeout(connectTimer);
          socket.once('connect', cleared);
          socket.once('close', cleared);
        });
      }
      const timer = headersTimeoutMs > 0
        ? setTimeout(() => outgoing.destroy(new SourceUnavailable(name, `${what}: no answer within ${headersTimeoutMs / 1000} s`)), headersTimeoutMs)
        : undefined;
      outgoing.once('response', (incoming) => {
        clearTimeout(timer);
        // The same error as a fill's own stall guard (whichever fires first): a 502, not a failure of the node.
        incoming.setTimeout(timeoutMs, () => incoming.destroy(new SourceStalled(undefined, timeoutMs / 1000, `${name} (${what})`)));
        idleLimits.set(incoming.socket, idleLimitMs(incoming.headers['keep-alive'] as string | undefined));
        resolve({ statusCode: incoming.statusCode ?? 502, headers: incoming.headers, body: incoming });
      });
      outgoing.once('error', (err) => {
        clearTimeout(timer);
        if (replayable && outgoing.reusedSocket && STALE_CONNECTION_CODES.has((err as NodeJS.ErrnoException).code ?? '')) reject(new StaleConnection(what));
        else if (err instanceof SourceUnavailable) reject(err);
        else reject(new SourceUnavailable(name, `${what}: ${err.message}`, { cause: err }));
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
      if (!truncate) throw new AnswerTooLong(limit);
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
