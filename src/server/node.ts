import type { AddressInfo } from 'node:net';
import type http from 'node:http';
import { Fills } from '../cache/fills.js';
import { sourceFills } from '../cache/fill-source.js';
import { ClusterFillSource } from '../cluster/cluster-fill-source.js';
import { PeerClient } from '../cluster/peer-client.js';
import { ImageCache } from '../cache/image-cache.js';
import type { Maintenance } from '../cache/maintenance.js';
import { Prefetcher } from '../cache/prefetcher.js';
import { createLogger, type Logger } from '../log.js';
import { GlanceSource } from '../sources/glance.js';
import { Upstream } from '../sources/upstream.js';
import { LocalDirectorySource } from '../sources/local-directory.js';
import type { ImageSource } from '../sources/source.js';
import { createServer } from './app.js';
import type { ServeConfig } from './config.js';
import { NodeMetrics } from './metrics.js';
import { accessFor } from './authorize.js';
import { outboundRequestIdHeaders } from './request-id.js';
import { Keystone } from './keystone.js';
import { warmUpForFills } from './warm-up.js';
import { ImageRemoval } from './image-removal.js';
import { Notifications } from '../notifications/notifications.js';

/** A failed prefetch is tried again after this, then twice as long each time, up to the max. */
const PREFETCH_FIRST_RETRY_MS = 1_000;
const PREFETCH_MAX_RETRY_MS = 5 * 60_000;

/** A node serving in this process. */
export interface RunningNode {
  readonly url: string;
  readonly server: http.Server;
  readonly cache: ImageCache;
  readonly fills: Fills;
  readonly metrics: NodeMetrics;
  /** Glance's notifications, when transport_url is set. */
  readonly notifications: Notifications | undefined;
  /** Stops accepting, aborts fills in flight, waits for responses, closes the cache. */
  close(): Promise<void>;
}

/**
 * Starts the node in this process: the cache, the image source (the upstream
 * Glance if upstream_url is set, else the local image directory), the fills
 * and the HTTP server on bind_host:bind_port (the workers of a cluster all
 * listen on it: node:cluster shares the port through the primary).
 */
export async function startNode(
  config: ServeConfig,
  options: {
    log?: Logger;
    metricsText?: (metrics: NodeMetrics) => Promise<string>;
    /** For tests that fill the cache past its limit on purpose: no prune after a commit (see EngineOptions). */
    pruneAfterCommit?: boolean;
  } = {},
): Promise<RunningNode> {
  const log = options.log ?? createLogger();
  await warmUpForFills();
  const { server: opts } = config;
  // No fallback to a private sqlite cache: a node whose driver cannot be configured (centralized_db
  // without worker_self_reference_url, or with a database it cannot use) stops here with the reason,
  // rather than serve invisibly to the other nodes. Commits prune by themselves (ImageCache).
  const cache = await ImageCache.create({ ...config.cache, logger: log }, { fallbackToSqlite: false, pruneAfterCommit: options.pruneAfterCommit ?? true });
  const timeoutMs = opts.upstreamTimeout * 1000;
  const upstream = opts.upstreamUrl === undefined ? undefined : new Upstream(opts.upstreamUrl, { timeoutMs, headers: outboundRequestIdHeaders });
  const source: ImageSource = upstream ? new GlanceSource(upstream) : new LocalDirectorySource({ dir: opts.filesystemStoreDatadir });
  const keystone = opts.keystone === undefined ? undefined : new Keystone({ ...opts.keystone, log });
  /** The node's own token for the source, for what no caller asked with theirs. */
  const nodeToken = async (): Promise<string | undefined> => opts.upstreamToken ?? (await keystone?.nodeToken());
  const metrics = new NodeMetrics(cache);
  const { maintenance } = cache;
  const cluster = clusterFills(config, cache, source, metrics, log);
  const fills = new Fills(cache, cluster ?? sourceFills(source), { stallMs: timeoutMs, events: metrics.fillEvents, log });
  const prefetcher = new Prefetcher(cache, fills, source, {
    workers: opts.prefetchWorkers,
    token: nodeToken,
    firstRetryMs: PREFETCH_FIRST_RETRY_MS,
    maxRetryMs: PREFETCH_MAX_RETRY_MS,
    log,
  });
  const metricsText = options.metricsText ? () => options.metricsText!(metrics) : () => metrics.registry.metrics();
  const access = accessFor(keystone, opts.cacheAdminRole);
  // noauth: the source shows every image to everyone, so its 404 is proof. keystone: proof is a
  // 404 to the node's own credentials too (an admin's, which see every project's images).
  const provenGone = async (imageId: string): Promise<boolean> => {
    if (opts.authStrategy === 'noauth') return true;
    const token = await nodeToken();
    if (token === undefined) return false;
    const metadata = await source.metadata(imageId, token);
    return !metadata.ok && metadata.answer.status === 404;
  };
  const removal = new ImageRemoval(cache, metrics, log);
  // Before the first request: a crash's leftovers go to invalid/, and the records agree with the files again.
  await recoverAtStart(maintenance, log);
  const server = createServer({ cache, fills, source, upstream, metrics, metricsText, prefetcher, maintenance, access, provenGone, removal, options: opts, log });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.bindPort, opts.bindHost, () => {
      server.off('error', reject);
      resolve();
    });
  });
  if (opts.authStrategy === 'noauth' && !isLoopback(opts.bindHost)) {
    log.warn({ bindHost: opts.bindHost }, 'auth_strategy = noauth on an address beyond loopback: anyone who can reach this port can manage and empty the cache; use auth_strategy = keystone');
  }
  maintenance.start({ pruneIntervalSeconds: opts.pruneInterval, cleanIntervalSeconds: opts.cleanInterval });
  // Images queued before this start (by an earlier run, or Glance's tools) are fetched now.
  await prefetcher.resume();
  // Connects in the background: a broker that is down does not hold the node back.
  const notifications = opts.notifications === undefined
    ? undefined
    : new Notifications(opts.notifications, { cache, source, prefetcher, removal, metrics, nodeToken, needsToken: opts.authStrategy !== 'noauth', log });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${address.port}`,
    server,
    cache,
    fills,
    metrics,
    notifications,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        await notifications?.close();
        await prefetcher.close();
        await removal.close();
        await fills.close();
        await cluster?.close();
        // Responses still streaming get a moment to finish, then their connections go.
        const deadline = setTimeout(() => server.closeAllConnections(), 5_000);
        await closed;
        clearTimeout(deadline);
        await source.close();
        await cache.close();
      })();
      return closing;
    },
  };
}


/**
 * peer_fill: fills read from the other nodes first (the fill directory in
 * the centralized_db database says who has what), and claim the upstream
 * fetch for the cluster. Only in front of an upstream: a local image
 * directory is each node's own.
 */
function clusterFills(config: ServeConfig, cache: ImageCache, source: ImageSource, metrics: NodeMetrics, log: Logger): ClusterFillSource | undefined {
  const opts = config.server;
  if (!opts.peerFill || opts.upstreamUrl === undefined) return undefined;
  const directory = cache.driver.fillDirectory?.();
  if (directory === undefined) return undefined;
  const peers = new PeerClient({
    selfUrl: directory.selfUrl,
    connectTimeoutMs: opts.peerConnectTimeout * 1000,
    stallMs: opts.upstreamTimeout * 1000,
    headers: outboundRequestIdHeaders,
  });
  return new ClusterFillSource({ directory, peers, source, log, fallback: (reason) => metrics.peerFallback(reason) });
}

/** Whether only this machine can reach the address. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/**
 * The directory's recovery before serving (Maintenance.recover). The node can
 * serve without it (listings show the files as they are, and the cleaner's
 * verify() repairs later; an unreachable metadata store schedules its own
 * repair), so a failure is logged, not fatal.
 */
async function recoverAtStart(maintenance: Maintenance, log: Logger): Promise<void> {
  try {
    await maintenance.recover();
  } catch (err) {
    log.error({ err }, 'could not recover the cache directory at start; serving anyway');
  }
}
