import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Fills } from '../cache/fills.js';
import type { ImageCache } from '../cache/image-cache.js';
import type { Maintenance } from '../cache/maintenance.js';
import type { Prefetcher } from '../cache/prefetcher.js';
import { ChecksumMismatch, FillAbandoned, ImageCacheError, MetadataStoreUnavailable, SourceStalled, SourceUnavailable, WrongImageLength } from '../errors.js';
import type { Logger } from '../log.js';
import type { Upstream } from '../sources/upstream.js';
import type { ImageSource } from '../sources/source.js';
import type { Access, Decision } from './authorize.js';
import type { ServerOptions } from './config.js';
import type { ImageRemoval } from './image-removal.js';
import type { NodeMetrics } from './metrics.js';
import { sendError, type RequestNotes } from './respond.js';
import { REQUEST_ID_HEADER, requestIdsOf, withRequestIds } from './request-id.js';
import { deleteImageRoute, forwardRoute } from './routes/forward.js';
import { healthRoute } from './routes/health.js';
import { imageDataRoute } from './routes/image-data.js';
import { localApiRoute } from './routes/local-api.js';
import { cacheAdminRoute } from './routes/cache-admin.js';
import { versionsRoute } from './routes/versions.js';

export interface AppDeps {
  cache: ImageCache;
  fills: Fills;
  source: ImageSource;
  /** The upstream Glance, when there is one: the rest of the Image API is forwarded to it. */
  upstream: Upstream | undefined;
  metrics: NodeMetrics;
  prefetcher: Prefetcher;
  maintenance: Maintenance;
  /** Who may download and who may manage the cache. */
  access: Access;
  /** Whether the source proves an image gone, beyond what one caller may see (see image-data.ts). */
  provenGone(imageId: string): Promise<boolean>;
  /** Takes an image withdrawn upstream off this node. */
  removal: ImageRemoval;
  /** The Prometheus text (with several workers, all of them added up). */
  metricsText(): Promise<string>;
  options: ServerOptions;
  log: Logger;
}

const IMAGE_DATA = /^\/v2\/images\/([^/]+)\/file$/;
const IMAGE = /^\/v2\/images\/([^/]+)$/;

/**
 * The node's HTTP server: routing, one log line per request, and errors
 * turned into statuses. The routes live in routes/, one file per group.
 */
export function createServer(deps: AppDeps): http.Server {
  const { log } = deps;
  // peer_max_streams is the node's: each worker takes its share.
  const peerMaxStreams = Math.max(1, Math.ceil(deps.options.peerMaxStreams / deps.options.workers));
  const imageData = imageDataRoute({ ...deps, xAccelRedirect: deps.options.xAccelRedirect, peerMaxStreams });
  const forward = deps.upstream ? forwardRoute(deps.upstream) : undefined;
  const deleteImage = deps.upstream ? deleteImageRoute(deps.upstream, deps.cache, deps.removal, log) : undefined;
  const localApi = localApiRoute(deps.source);
  const health = healthRoute(deps.cache);
  const versions = versionsRoute();
  const cacheAdmin = cacheAdminRoute(deps);

  async function route(req: IncomingMessage, res: ServerResponse, notes: RequestNotes): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (path === '/healthcheck' && (req.method === 'GET' || req.method === 'HEAD')) return health(res);
    if (path === '/metrics' && req.method === 'GET') {
      const text = await deps.metricsText();
      res.writeHead(200, { 'content-type': deps.metrics.registry.contentType, 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (!(path.startsWith('/v2/') || path === '/v2' || path === '/versions' || path.startsWith('/versions/') || path === '/')) {
      sendError(res, 404, `Not found: ${path}`);
      return;
    }
    if (req.method === 'GET' && (path === '/versions' || path === '/' || path === '/v2' || path === '/v2/')) return versions(req, res);
    if (path === '/v2/cache' || path.startsWith('/v2/cache/')) {
      if (refused(res, await deps.access.admin(req))) return;
      return cacheAdmin(req, res, path);
    }
    const data = req.method === 'GET' ? IMAGE_DATA.exec(path) : null;
    if (data !== null) {
      if (refused(res, await deps.access.reader(req))) return;
      return imageData(req, res, notes, segment(data[1]!));
    }
    const image = req.method === 'DELETE' && deleteImage ? IMAGE.exec(path) : null;
    if (image !== null) return deleteImage!(req, res, segment(image[1]!));
    if (forward) return forward(req, res);
    return localApi(req, res, path);
  }

  // Uploads can take longer than any fixed request timeout (requestTimeout 0); slow clients are
  // still bounded by client_header_timeout, the time they may take to send their headers.
  const headersTimeout = deps.options.clientHeaderTimeout * 1000;
  // Node enforces headersTimeout from a timer that looks at every connection once per
  // connectionsCheckingInterval (default 30 s), so a client could outstay a short timeout by up
  // to that much: looking four times per timeout keeps the overrun within a quarter of it, and
  // never less often than Node's default for long timeouts.
  const connectionsCheckingInterval = Math.min(30_000, Math.ceil(headersTimeout / 4));
  const server = http.createServer({ requestTimeout: 0, headersTimeout, connectionsCheckingInterval }, (req, res) => {
    const started = process.hrtime.bigint();
    const ids = requestIdsOf(req);
    // On every answer, whoever writes it (an upstream's own id is not passed on: endToEndHeaders).
    res.setHeader(REQUEST_ID_HEADER, ids.requestId);
    const notes: RequestNotes = { ...ids };
    res.once('close', () => {
      log.info({
        method: req.method,
        path: req.url,
        status: res.statusCode,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
        ...notes,
        ...(res.writableFinished ? {} : { aborted: true }),
      }, 'request');
    });
    withRequestIds(ids, () => route(req, res, notes)).catch((err: unknown) => failed(res, err, notes));
  });
  server.keepAliveTimeout = 30_000;

  function failed(res: ServerResponse, err: unknown, notes: RequestNotes): void {
    if (res.headersSent) {
      res.destroy(err as Error);
      return;
    }
    if (err instanceof URIError) {
      sendError(res, 400, 'The image ID in the path is not valid percent-encoding');
      return;
    }
    // The database behind the centralized_db driver is down or restarting: what needs its records
    // (listings, deletes, prune) waits for it, while cached and upstream bytes are still served.
    // A restart takes seconds, so clients are asked to come back after a few (Retry-After: 5) rather than at once.
    if (err instanceof MetadataStoreUnavailable) {
      log.warn({ err, ...notes }, 'metadata store unavailable');
      sendError(res, 503, `Service unavailable: ${err.message}`, { 'retry-after': '5' });
      return;
    }
    const status = isSourceFailure(err) ? 502 : 500;
    if (status === 500) log.error({ err, ...notes }, 'request failed');
    else log.warn({ err, ...notes }, 'image source unavailable');
    const reason = err instanceof ImageCacheError || err instanceof FillAbandoned ? err.message : 'internal error';
    sendError(res, status, status === 502 ? `Bad gateway: ${reason}` : `Internal error: ${reason}`);
  }

  return server;
}

/** Answers a refusal; whether it was one. */
function refused(res: ServerResponse, decision: Decision): boolean {
  if (decision.ok) return false;
  sendError(res, decision.status, decision.message, decision.headers);
  return true;
}

/** A path segment as the ID it names (a client may percent-encode it). */
function segment(raw: string): string {
  return decodeURIComponent(raw);
}

/** Failures of the image's source (directly, or of the fill that fetched it): the node is a gateway that got a bad answer. */
function isSourceFailure(err: unknown): boolean {
  return err instanceof SourceUnavailable || err instanceof SourceStalled || err instanceof WrongImageLength ||
    err instanceof ChecksumMismatch || err instanceof FillAbandoned;
}
