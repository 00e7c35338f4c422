/**
 * Warming the fleet: one operator's call queues an image on every node of
 * the cluster (`PUT /v2/cache/{id}` with `x-image-cache-scope: cluster`).
 * The node that took the call passes it on to each other node as the plain
 * Glance call, with the caller's token, so that every node asks its upstream
 * about the image with that token as for any queueing, and then fetches it
 * as a prefetch: from its peers, almost always, since the first node's fill
 * claims the upstream fetch for the cluster.
 */
import type { OutgoingHttpHeaders } from 'node:http';
import { messageOfErrorBody } from '../server/error-page.js';
import { Upstream, readBounded } from '../sources/upstream.js';

/** The header that asks for a queueing on every node. */
export const SCOPE_HEADER = 'x-image-cache-scope';
export type Scope = 'node' | 'cluster';

/** The scope a request asks for, or undefined for a value we do not know. */
export function scopeOf(value: string | string[] | undefined): Scope | undefined {
  const text = (Array.isArray(value) ? value[0] : value)?.trim().toLowerCase() ?? '';
  if (text === '' || text === 'node') return 'node';
  if (text === 'cluster') return 'cluster';
  return undefined;
}

/** What one node answered: its status (202: queued), or why it could not be asked. */
export interface NodeQueueing {
  url: string;
  status?: number;
  /** Its error message for a status but 202, or the failure to reach it. */
  error?: string;
}

export interface FleetOptions {
  /** peer_connect_timeout, ms: a node gone from its address costs no more. */
  connectTimeoutMs: number;
  /** How long a node may take to answer. */
  timeoutMs: number;
  /** Headers added to every request (the request id). */
  headers?: () => OutgoingHttpHeaders;
}

/** Enough of a node's error body for its message. */
const ERROR_BODY_LIMIT = 4096;

/** Queues `imageId` on each of `nodes` at once, with `token`; one outcome per node, in their order. */
export async function queueOnNodes(nodes: readonly string[], imageId: string, token: string | undefined, options: FleetOptions): Promise<NodeQueueing[]> {
  return Promise.all(nodes.map((url) => queueOnNode(url, imageId, token, options)));
}

async function queueOnNode(url: string, imageId: string, token: string | undefined, options: FleetOptions): Promise<NodeQueueing> {
  const node = new Upstream(url, { timeoutMs: options.timeoutMs, connectTimeoutMs: options.connectTimeoutMs, name: `node ${url}`, headers: options.headers });
  try {
    // JSON, so that a refusal's message comes back as the message, not a page.
    const headers: OutgoingHttpHeaders = { accept: 'application/json' };
    if (token !== undefined) headers['x-auth-token'] = token;
    const response = await node.request({ method: 'PUT', path: `/v2/cache/${encodeURIComponent(imageId)}`, headers });
    const body = await readBounded(response.body, ERROR_BODY_LIMIT, true);
    if (response.statusCode === 202) return { url, status: 202 };
    return { url, status: response.statusCode, error: messageOfErrorBody(body) };
  } catch (err) {
    return { url, error: (err as Error).message };
  } finally {
    await node.close();
  }
}
