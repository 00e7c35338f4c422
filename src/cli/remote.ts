/**
 * A client of a running node's cache management API (Glance's v2.14+
 * routes, src/server/routes/cache-admin.ts). node:http rather than fetch:
 * a connection per request, closed with it, so the command exits as soon as
 * it is done instead of waiting out a pooled keep-alive socket.
 */
import http from 'node:http';
import https from 'node:https';
import type { WireCacheListing } from '../cache/wire.js';
import { SCOPE_HEADER, type NodeQueueing } from '../cluster/fleet.js';
import { RemoteError } from '../errors.js';
import { messageOfErrorBody } from '../server/error-page.js';

/** Moved to errors.ts with the other error classes; exported here still for the code that imports it from here. */
export { RemoteError } from '../errors.js';

/** How long the node may keep a request waiting for its next bytes. */
const REQUEST_TIMEOUT_MS = 60_000;

export class CacheApi {
  private readonly base: URL;

  /** `url`: the node's root (`http://host:9292`, or a prefix a proxy serves it under). */
  constructor(
    url: string,
    private readonly token: string | undefined,
  ) {
    this.base = new URL(url.endsWith('/') ? url : `${url}/`);
  }

  get url(): string {
    return this.base.href.replace(/\/$/, '');
  }

  async list(): Promise<WireCacheListing> {
    const body = await this.call('GET', 'v2/cache', 200);
    let listing: Partial<WireCacheListing>;
    try {
      listing = JSON.parse(body.toString('utf8')) as Partial<WireCacheListing>;
    } catch {
      // Something else answers at that URL (a proxy's page, another service): say so rather than print a parser's stack.
      throw new RemoteError(200, `GET ${new URL('v2/cache', this.base).pathname}: the answer is not the cache API's JSON; is ${this.url} a cache node?`);
    }
    return { cached_images: listing.cached_images ?? [], queued_images: listing.queued_images ?? [] };
  }

  /** PUT /v2/cache/{id}: queued, and its fetch started (202). */
  async queue(imageId: string): Promise<void> {
    await this.call('PUT', `v2/cache/${encodeURIComponent(imageId)}`, 202);
  }

  /**
   * PUT /v2/cache/{id} with x-image-cache-scope: cluster: queued on the node
   * and, through it, on every other node of its database; what each answered.
   */
  async queueOnAllNodes(imageId: string): Promise<NodeQueueing[]> {
    const path = `v2/cache/${encodeURIComponent(imageId)}`;
    const body = await this.call('PUT', path, 202, { [SCOPE_HEADER]: 'cluster' });
    let answer: { nodes?: unknown } | undefined;
    try {
      answer = JSON.parse(body.toString('utf8')) as { nodes?: unknown };
    } catch {
      answer = undefined;
    }
    // A node that does not know the header (Glance itself, an older image-cache) queues the image on itself only, and says nothing.
    if (!Array.isArray(answer?.nodes)) throw new RemoteError(202, `PUT ${new URL(path, this.base).pathname}: ${this.url} queued the image on itself only: it does not queue on the cluster (${SCOPE_HEADER}); is it an image-cache node with image_cache_driver = centralized_db?`);
    return answer.nodes as NodeQueueing[];
  }

  /** DELETE /v2/cache/{id}: the image is gone from the cache and the queue (204). */
  async delete(imageId: string): Promise<void> {
    await this.call('DELETE', `v2/cache/${encodeURIComponent(imageId)}`, 204);
  }

  /** DELETE /v2/cache: every cached image, or the whole queue (204). */
  async clear(target: 'cache' | 'queue'): Promise<void> {
    await this.call('DELETE', 'v2/cache', 204, { 'x-image-cache-clear-target': target });
  }

  private call(method: string, path: string, expected: number, headers: Record<string, string> = {}): Promise<Buffer> {
    const url = new URL(path, this.base);
    const client = url.protocol === 'https:' ? https : http;
    const allHeaders: Record<string, string> = { accept: 'application/json', ...headers };
    if (this.token !== undefined && this.token !== '') allHeaders['x-auth-token'] = this.token;
    return new Promise((resolve, reject) => {
      const req = client.request(url, { method, headers: allHeaders, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          const status = res.statusCode ?? 0;
          if (status === expected) return resolve(body);
          const reason = http.STATUS_CODES[status];
          reject(new RemoteError(status, `${method} ${url.pathname}: ${status}${reason === undefined ? '' : ` ${reason}`}: ${messageOfErrorBody(body)}`));
        });
      });
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new RemoteError(undefined, `no answer in ${REQUEST_TIMEOUT_MS / 1000} s`)));
      req.on('error', (err) => reject(new RemoteError(undefined, `cannot reach the node at ${this.url}: ${err.message}`)));
      req.end();
    });
  }
}
