import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { SourceAnswer, SourceResponse } from '../sources/source.js';
import { errorPage } from './error-page.js';
import { REQUEST_ID_HEADER, type RequestIds } from './request-id.js';

/** What the request log says about a request beyond method, path and status. */
export interface RequestNotes extends Partial<RequestIds> {
  imageId?: string;
  cache?: 'hit' | 'miss' | 'bypass';
  /** Why a download was not served from the cache or a fill. */
  bypass?: string;
  coalesced?: boolean;
  /** The byte from which a miss was served by the source, because the cache's disk failed under its fill. */
  restFromSource?: number;
  /** Where the body's bytes came from: `cache`, `upstream`, `peer http://...`, in order when a fill moved on (`, then `). */
  bytesFrom?: string;
  /** The node that asked (a peer request: x-image-cache-peer). */
  peer?: string;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, notes: RequestNotes) => Promise<void>;

/**
 * Headers that describe one connection, not the message (RFC 9110 §7.6.1):
 * never passed along by a proxy. `expect` is answered by the node itself
 * (Node sends 100 Continue), and `host` is the upstream's own.
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'proxy-authorization', 'expect', 'host']);

/**
 * Headers the node sets itself on both sides, never passed along: the request
 * id (its own on every answer, the global one on every request it sends; see request-id.ts).
 */
const OWN = new Set([REQUEST_ID_HEADER]);

export function endToEndHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const listed = new Set(String(headers.connection ?? '').toLowerCase().split(',').map((name) => name.trim()).filter(Boolean));
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || OWN.has(name) || listed.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** The caller's token, forwarded to the source on every request. */
export function tokenOf(req: IncomingMessage): string | undefined {
  const value = req.headers['x-auth-token'];
  return Array.isArray(value) ? value[0] : value;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: OutgoingHttpHeaders = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** An error of the node's own, as Glance answers one (webob's page, negotiated on the request's Accept: see error-page.ts). */
export function sendError(res: ServerResponse, status: number, message: string, headers: OutgoingHttpHeaders = {}): void {
  const page = errorPage(status, message, res.req.headers.accept);
  res.writeHead(status, { 'content-type': page.contentType, 'content-length': Buffer.byteLength(page.body), ...headers });
  res.end(page.body);
}

/** A source's refusal, passed on as it came (status, type, body). */
export function sendAnswer(res: ServerResponse, answer: SourceAnswer): void {
  const headers = endToEndHeaders(answer.headers);
  delete headers['content-length'];
  res.writeHead(answer.status, { ...headers, 'content-length': answer.body.length });
  res.end(answer.body);
}

/** A source's response streamed through: status, end-to-end headers and body. Resolves with the body bytes sent. */
export function relay(res: ServerResponse, response: SourceResponse): Promise<number> {
  res.writeHead(response.status, endToEndHeaders(response.headers));
  return stream(res, response.body);
}

/**
 * Pipes a body into a response whose headers are set. If the body fails
 * midway, the connection is destroyed: the client sees an incomplete
 * response, never a short one that looks whole. Resolves with the bytes sent;
 * never rejects (the failure is the client's to see; the caller logs it).
 */
export async function stream(res: ServerResponse, body: Readable): Promise<number> {
  let sent = 0;
  body.on('data', (chunk: Buffer) => {
    sent += chunk.length;
  });
  try {
    await pipeline(body, res);
  } catch (err) {
    res.destroy(err as Error);
  }
  return sent;
}
