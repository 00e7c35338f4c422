import cluster from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { WorkerStartFailed } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import type { ServeConfig } from './config.js';

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
    const { startNode } = await import('./node.js');
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
  let startFailed: () => void = () => {};
  const failedToStart = new Promise<void>((resolve) => (startFailed = resolve));
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    // Before every worker listens, a worker that dies could not start (its cache cannot be
    // configured, say): the next would die the same way, so stop, failing, instead of forking forever.
    if (listening < workers) {
      startFailed();
      return;
    }
    log.error({ pid: worker.process.pid, code, signal }, 'worker died; starting another');
    cluster.fork();
  });
  for (let i = 0; i < workers; i++) cluster.fork();
  const failed = await Promise.race([untilSignalled().then(() => false), failedToStart.then(() => true)]);
  stopping = true;
  await Promise.all(Object.values(cluster.workers ?? {}).map((worker) => new Promise<void>((resolve) => {
    if (worker === undefined || worker.isDead()) return resolve();
    worker.once('exit', () => resolve());
    worker.process.kill('SIGTERM');
  })));
  if (failed) throw new WorkerStartFailed(workers);
}

async function runWorker(config: ServeConfig, log: Logger): Promise<void> {
  const { startNode } = await import('./node.js');
  const node = await startNode(config, { log, metricsText: askPrimaryForMetrics }).catch((err: unknown) => {
    // Once the error is reported, let go of the primary's channel, which would keep this process alive.
    setImmediate(() => process.disconnect?.());
    throw err;
  });
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
