import cluster from 'node:cluster';
import type { AddressInfo } from 'node:net';
import type http from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import { Fills } from '../cache/fills.js';
import { ImageCache } from '../cache/image-cache.js';
import { createLogger, type Logger } from '../log.js';
import { GlanceSource, Upstream } from '../sources/glance.js';
import { LocalDirectorySource } from '../sources/local-directory.js';
import type { ImageSource } from '../sources/source.js';
import { createServer } from './app.js';
import type { ServeConfig } from './config.js';
import { NodeMetrics } from './metrics.js';

/** A node serving in this process. */
export interface RunningNode {
  readonly url: string;
  readonly server: http.Server;
  readonly cache: ImageCache;
  readonly fills: Fills;
  readonly metrics: NodeMetrics;
  /** Stops accepting, aborts fills in flight, waits for responses, closes the cache. */
  close(): Promise<void>;
}

/**
 * Starts the node in this process: the cache, the image source (the upstream
 * Glance if upstream_url is set, else the local image directory), the fills
 * and the HTTP server. `port` overrides bind_port (a worker of a cluster
 * listens on the port its primary shares).
 */
export async function startNode(config: ServeConfig, options: { log?: Logger; metricsText?: (metrics: NodeMetrics) => Promise<string> } = {}): Promise<RunningNode> {
  const log = options.log ?? createLogger();
  const { server: opts } = config;
  const cache = await ImageCache.create({ ...config.cache, logger: log });
  const timeoutMs = opts.upstreamTimeout * 1000;
  const upstream = opts.upstreamUrl === undefined ? undefined : new Upstream(opts.upstreamUrl, { timeoutMs });
  const source: ImageSource = upstream ? new GlanceSource(upstream) : new LocalDirectorySource({ dir: opts.filesystemStoreDatadir });
  const metrics = new NodeMetrics(cache);
  const fills = new Fills(cache, source, { stallMs: timeoutMs, events: metrics.fillEvents, log });
  const metricsText = options.metricsText ? () => options.metricsText!(metrics) : () => metrics.registry.metrics();
  const server = createServer({ cache, fills, source, upstream, metrics, metricsText, options: opts, log });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.bindPort, opts.bindHost, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${address.port}`,
    server,
    cache,
    fills,
    metrics,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        await fills.close();
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

/** Message a worker sends its primary for /metrics, and the answer. */
const METRICS_REQUEST = 'image-cache:metrics?';
const METRICS_ANSWER = 'image-cache:metrics';

/**
 * `image-cache serve`: one process, or with workers > 1 a primary that
 * forks them (node:cluster, one port, one cache directory; the claims on
 * images being filled hold across them) and restarts one that dies. Prints
 * `serving on URL` once every process listens; SIGTERM and SIGINT stop it.
 */
export async function serve(config: ServeConfig, log: Logger = createLogger()): Promise<void> {
  const workers = config.server.workers;
  if (workers <= 1) {
    const node = await startNode(config, { log });
    announce(node.url, 1);
    await untilSignalled();
    await node.close();
    return;
  }
  if (cluster.isPrimary) {
    await runPrimary(workers, log);
    return;
  }
  await runWorker(config, log);
}

async function runPrimary(workers: number, log: Logger): Promise<void> {
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  let listening = 0;
  cluster.on('message', (worker, message: unknown) => {
    if (message !== METRICS_REQUEST) return;
    aggregator.clusterMetrics().then(
      (text) => worker.send({ type: METRICS_ANSWER, text }),
      (err: Error) => worker.send({ type: METRICS_ANSWER, text: `# metrics unavailable: ${err.message}\n` }),
    );
  });
  cluster.on('listening', (_worker, address) => {
    if (++listening === workers) announce(`http://${address.address ?? '127.0.0.1'}:${address.port}`, workers);
  });
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    log.error({ pid: worker.process.pid, code, signal }, 'worker died; starting another');
    cluster.fork();
  });
  for (let i = 0; i < workers; i++) cluster.fork();
  await untilSignalled();
  stopping = true;
  await Promise.all(Object.values(cluster.workers ?? {}).map((worker) => new Promise<void>((resolve) => {
    if (worker === undefined || worker.isDead()) return resolve();
    worker.once('exit', () => resolve());
    worker.process.kill('SIGTERM');
  })));
}

async function runWorker(config: ServeConfig, log: Logger): Promise<void> {
  const node = await startNode(config, { log, metricsText: askPrimaryForMetrics });
  // Answer the primary's requests for this worker's metrics (it adds every worker's up).
  AggregatorRegistry.setRegistries(node.metrics.registry);
  new AggregatorRegistry();
  await untilSignalled();
  await node.close();
  process.disconnect?.();
}

/** The whole cluster's metrics, added up by the primary (each worker keeps only its own). */
function askPrimaryForMetrics(): Promise<string> {
  return new Promise((resolve) => {
    const onMessage = (message: { type?: string; text?: string }): void => {
      if (message?.type !== METRICS_ANSWER) return;
      process.off('message', onMessage);
      resolve(message.text ?? '');
    };
    process.on('message', onMessage);
    process.send!(METRICS_REQUEST);
  });
}

function announce(url: string, workers: number): void {
  process.stdout.write(`image-cache: serving on ${url} (pid ${process.pid}, ${workers} worker${workers === 1 ? '' : 's'})\n`);
}

function untilSignalled(): Promise<void> {
  return new Promise((resolve) => {
    const stop = (): void => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}
