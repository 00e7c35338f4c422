import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ImageCache } from '../../cache/image-cache.js';
import type { Logger } from '../../log.js';
import { definedHeaders, type Upstream, type UpstreamResponse } from '../../sources/upstream.js';
import type { ImageRemoval } from '../image-removal.js';
import { endToEndHeaders, relay } from '../respond.js';

/**
 * Everything under /v2 and /versions that the node does not serve itself goes
 * to the upstream Glance as it came: method, path, query, end-to-end headers
 * and body, streamed both ways. An upload (`PUT /v2/images/{id}/file`) flows
 * through with the socket's backpressure, never held in memory; its answer
 * may take as long as the upload, so no header timeout applies while a body is sent.
 */
export function forwardRoute(upstream: Upstream) {
  return async function forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await relayUpstream(res, await sendUpstream(upstream, req));
  };
}

/**
 * DELETE /v2/images/{id}: forwarded; once the upstream has deleted the image,
 * its cached copy and queue entry go too, before the client hears it is done.
 */
export function deleteImageRoute(upstream: Upstream, cache: ImageCache, removal: ImageRemoval, log: Logger) {
  return async function deleteImage(req: IncomingMessage, res: ServerResponse, imageId: string): Promise<void> {
    const response = await sendUpstream(upstream, req);
    if (response.statusCode >= 200 && response.statusCode < 300 && cache.isValidImageId(imageId)) {
      const removed = await removal.remove(imageId, 'image_deleted');
      if (removed.cached) log.info({ imageId }, 'image deleted upstream; dropped its cached copy');
    }
    await relayUpstream(res, response);
  };
}

function sendUpstream(upstream: Upstream, req: IncomingMessage): Promise<UpstreamResponse> {
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  return upstream.request({
    method: req.method ?? 'GET',
    path: req.url ?? '/',
    headers: endToEndHeaders(req.headers),
    body: hasBody ? req : undefined,
    ...(hasBody ? { headersTimeoutMs: 0 } : {}),
  });
}

async function relayUpstream(res: ServerResponse, response: UpstreamResponse): Promise<void> {
  await relay(res, { status: response.statusCode, headers: definedHeaders(response.headers), body: response.body });
}

