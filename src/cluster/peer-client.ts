import type { OutgoingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { ConnectTimedOut, PeerFailed, SourceStalled, SourceUnavailable } from '../errors.js';
import { Upstream } from '../sources/upstream.js';

/** The header that marks a request as another node's: answered only from what the receiving node has. */
export const PEER_HEADER = 'x-image-cache-peer';
/** Why a node turned a peer request away: `busy` (503) or `not-cached` (404). */
export const PEER_REFUSAL_HEADER = 'x-image-cache-peer-refusal';

/** Errors of a connection that never came up: the node is gone, or not where it said. */
const CONNECT_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENOTFOUND', 'EAI_AGAIN']);

export interface PeerClientOptions {
  /** This node's URL, sent in PEER_HEADER. */
  selfUrl: string;
  /** peer_connect_timeout, ms. */
  connectTimeoutMs: number;
  /** upstream_timeout, ms: for a peer's headers, and between two chunks of its body. */
  stallMs: number;
  /** Headers added to every request (the request id). */
  headers?: () => OutgoingHttpHeaders;
}

/**
 * Asks other nodes for an image's bytes: `GET {peer}/v2/images/{id}/file`
 * with the caller's token and PEER_HEADER, from a byte on. A keep-alive
 * connection pool per node. Anything but the bytes asked for, exactly, is a
 * PeerFailed with the reason the metrics count.
 */
export class PeerClient {
  private readonly nodes = new Map<string, Upstream>();

  constructor(private readonly options: PeerClientOptions) {}

  /** The image's bytes from `position` to its end (`size` bytes in all), as the peer streams them. */
  async open(peerUrl: string, imageId: string, token: string | undefined, position: number, size: number): Promise<Readable> {
    const headers: OutgoingHttpHeaders = { [PEER_HEADER]: this.options.selfUrl };
    if (token !== undefined) headers['x-auth-token'] = token;
    if (position > 0) headers.range = `bytes=${position}-`;
    let response;
    try {
      response = await this.node(peerUrl).request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}/file`, headers });
    } catch (err) {
      throw new PeerFailed(peerUrl, failureReason(err), (err as Error).message, { cause: err });
    }
    const { statusCode, headers: answer, body } = response;
    const refuse = (reason: string, detail: string): never => {
      body.destroy();
      throw new PeerFailed(peerUrl, reason, detail);
    };
    if (statusCode !== 200 && statusCode !== 206) {
      const refusal = answer[PEER_REFUSAL_HEADER];
      if (refusal === 'busy') refuse('busy', 'serving as many peers as it may');
      if (refusal === 'not-cached') refuse('not_cached', 'has no copy and no fill of the image');
      refuse('refused', `answered ${statusCode}`);
    }
    const wanted = size - position;
    if (Number(answer['content-length']) !== wanted) refuse('wrong_bytes', `sent Content-Length ${answer['content-length']} for ${wanted} bytes`);
    if (position > 0 && (statusCode !== 206 || answer['content-range'] !== `bytes ${position}-${size - 1}/${size}`)) {
      refuse('wrong_bytes', `answered ${statusCode} ${answer['content-range'] ?? ''} to bytes=${position}-`);
    }
    if (position === 0 && statusCode !== 200) refuse('wrong_bytes', `answered ${statusCode} to a request for the whole image`);
    return body;
  }

  close(): void {
    for (const node of this.nodes.values()) void node.close();
    this.nodes.clear();
  }

  private node(url: string): Upstream {
    let node = this.nodes.get(url);
    if (node === undefined) {
      node = new Upstream(url, { timeoutMs: this.options.stallMs, name: `node ${url}`, connectTimeoutMs: this.options.connectTimeoutMs, headers: this.options.headers });
      this.nodes.set(url, node);
    }
    return node;
  }
}

/** The metrics' reason for a failed peer request or stream. */
export function failureReason(err: unknown): string {
  if (err instanceof PeerFailed) return err.reason;
  if (err instanceof SourceStalled) return 'stall';
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof ConnectTimedOut || CONNECT_CODES.has((cause as NodeJS.ErrnoException | undefined)?.code ?? '')) return 'connect';
  if (err instanceof SourceUnavailable && /no answer within/.test(err.message)) return 'stall';
  const code = (err as NodeJS.ErrnoException).code ?? (cause as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ECONNRESET' || code === 'EPIPE' || (err as Error).message === 'aborted') return 'reset';
  return 'error';
}
