import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ImageCache } from '../../cache/image-cache.js';
import type { Maintenance } from '../../cache/maintenance.js';
import type { Prefetcher } from '../../cache/prefetcher.js';
import { cachedImageToWire } from '../../cache/wire.js';
import { NotSupported } from '../../errors.js';
import { queueOnNodes, scopeOf, SCOPE_HEADER } from '../../cluster/fleet.js';
import type { ImageSource } from '../../sources/source.js';
import type { ServerOptions } from '../config.js';
import { outboundRequestIdHeaders } from '../request-id.js';
import { sendError, sendJson, tokenOf } from '../respond.js';

export interface CacheAdminDeps {
  cache: ImageCache;
  source: ImageSource;
  prefetcher: Prefetcher;
  maintenance: Maintenance;
  options: Pick<ServerOptions, 'peerConnectTimeout' | 'upstreamTimeout'>;
}

/** The clear targets of DELETE /v2/cache: Glance's code knows '', cache and queue; its docs say both. */
const CLEAR_TARGETS: Record<string, { cache: boolean; queue: boolean }> = {
  '': { cache: true, queue: true },
  both: { cache: true, queue: true },
  cache: { cache: true, queue: false },
  queue: { cache: false, queue: true },
};

/**
 * Glance's cache management API (v2.14+, glance/api/v2/cached_images.py),
 * with its status codes: the routes `glance cache-list`, `cache-queue`,
 * `cache-delete` and `cache-clear` call, plus clean and prune (which Glance
 * leaves to cron), the centralized driver's node list, and queueing on
 * every node of the cluster at once (`x-image-cache-scope: cluster`).
 */
export function cacheAdminRoute(deps: CacheAdminDeps) {
  const { cache, source, prefetcher, maintenance, options } = deps;

  return async function cacheAdmin(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const method = req.method ?? 'GET';
    if (path === '/v2/cache' || path === '/v2/cache/') {
      if (method === 'GET') return listCache(res);
      if (method === 'DELETE') return clearCache(req, res);
      return notAllowed(res, 'GET, DELETE');
    }
    if (path === '/v2/cache/clean' && method === 'POST') {
      sendJson(res, 200, await maintenance.clean());
      return;
    }
    if (path === '/v2/cache/prune' && method === 'POST') {
      const pruned = await maintenance.prune();
      sendJson(res, 200, { total_files_pruned: pruned.totalFilesPruned, total_bytes_pruned: pruned.totalBytesPruned });
      return;
    }
    const nodes = /^\/v2\/cache\/nodes\/([^/]+)$/.exec(path);
    if (nodes !== null && method === 'GET') return cachedNodes(req, res, decodeURIComponent(nodes[1]!));
    const entry = /^\/v2\/cache\/([^/]+)$/.exec(path);
    if (entry !== null) {
      const imageId = decodeURIComponent(entry[1]!);
      if (method === 'PUT') return queueImage(req, res, imageId);
      if (method === 'DELETE') return deleteEntry(req, res, imageId);
      return notAllowed(res, 'PUT, DELETE');
    }
    sendError(res, 404, `Not found: ${method} ${path}`);
  };

  async function listCache(res: ServerResponse): Promise<void> {
    const [cached, queued] = await Promise.all([cache.getCachedImages(), cache.getQueuedImages()]);
    sendJson(res, 200, { cached_images: cached.map(cachedImageToWire), queued_images: queued });
  }

  /** DELETE /v2/cache: 204, or 400 for a target Glance does not know. */
  async function clearCache(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const header = req.headers['x-image-cache-clear-target'];
    const value = (Array.isArray(header) ? header[0] : header) ?? '';
    const target = CLEAR_TARGETS[value.trim().toLowerCase()];
    if (target === undefined) {
      sendError(res, 400, "If provided 'x-image-cache-clear-target' must be 'cache', 'queue', 'both' or empty.");
      return;
    }
    if (target.queue) await cache.deleteAllQueuedImages();
    if (target.cache) await cache.deleteAllCachedImages();
    res.writeHead(204).end();
  }

  /**
   * PUT /v2/cache/{id}: 202 once queued (and its fetch started); 404 for an
   * image the source does not know; 400 unless active. With
   * `x-image-cache-scope: cluster`, once queued here, on every other node of
   * the database too, with the caller's token (each node asks its upstream
   * as for any queueing): 202 with what each node answered.
   */
  async function queueImage(req: IncomingMessage, res: ServerResponse, imageId: string): Promise<void> {
    const scope = scopeOf(req.headers[SCOPE_HEADER]);
    if (scope === undefined) {
      sendError(res, 400, `If provided '${SCOPE_HEADER}' must be 'node', 'cluster' or empty.`);
      return;
    }
    let others: string[] = [];
    if (scope === 'cluster') {
      try {
        others = await cache.getClusterNodes();
      } catch (err) {
        if (!(err instanceof NotSupported)) throw err;
        sendError(res, 409, `Queueing an image on every node needs the centralized_db cache driver, not ${cache.driver.name}.`);
        return;
      }
    }
    const token = tokenOf(req);
    const metadata = await source.metadata(imageId, token);
    if (!metadata.ok) return refusedBySource(res, imageId, metadata.answer.status);
    if (metadata.image.status !== 'active') {
      sendError(res, 400, 'Only images with status active can be targeted for queueing');
      return;
    }
    if (!cache.isValidImageId(imageId)) {
      sendError(res, 400, `Image ${imageId} cannot be cached: its ID cannot name a file in the cache.`);
      return;
    }
    await prefetcher.queue(imageId);
    if (scope === 'node') {
      res.writeHead(202).end();
      return;
    }
    const elsewhere = await queueOnNodes(others, imageId, token, {
      connectTimeoutMs: options.peerConnectTimeout * 1000,
      timeoutMs: options.upstreamTimeout * 1000,
      headers: outboundRequestIdHeaders,
    });
    const here = { url: cache.options.workerSelfReferenceUrl!, status: 202 };
    sendJson(res, 202, { image_id: imageId, nodes: [here, ...elsewhere] });
  }

  /** DELETE /v2/cache/{id}: 204; 404 when it is neither cached, nor queued, nor known to the source. */
  async function deleteEntry(req: IncomingMessage, res: ServerResponse, imageId: string): Promise<void> {
    const inCache = cache.isValidImageId(imageId) && ((await cache.isCached(imageId)) || (await cache.isQueued(imageId)));
    if (!inCache) {
      const metadata = await source.metadata(imageId, tokenOf(req));
      if (!metadata.ok && metadata.answer.status === 404) {
        sendError(res, 404, `Image ${imageId} not found.`);
        return;
      }
    }
    if (cache.isValidImageId(imageId)) {
      await cache.deleteCachedImage(imageId);
      await cache.deleteQueuedImage(imageId);
    }
    res.writeHead(204).end();
  }

  /**
   * GET /v2/cache/nodes/{id}: the nodes holding the image, a bare list of
   * their URLs as Glance 2026.2 answers (centralized_db only: 409 otherwise,
   * as Glance answers); 404 for an image the source does not know.
   */
  async function cachedNodes(req: IncomingMessage, res: ServerResponse, imageId: string): Promise<void> {
    if (cache.driver.getCachedNodes === undefined) {
      sendError(res, 409, `Listing the nodes that cache an image needs the centralized_db cache driver, not ${cache.driver.name}.`);
      return;
    }
    const metadata = await source.metadata(imageId, tokenOf(req));
    if (!metadata.ok) return refusedBySource(res, imageId, metadata.answer.status);
    sendJson(res, 200, cache.isValidImageId(imageId) ? await cache.getCachedNodes(imageId) : []);
  }
}

/** The source's refusal of the image's metadata, passed on: Glance's 404 for an image it does not know. */
function refusedBySource(res: ServerResponse, imageId: string, status: number): void {
  if (status === 404) sendError(res, 404, `Image ${imageId} not found.`);
  else sendError(res, status, `The image source answered ${status} for image ${imageId}.`);
}

function notAllowed(res: ServerResponse, allowed: string): void {
  sendError(res, 405, `Method not allowed; allowed: ${allowed}`, { allow: allowed });
}
