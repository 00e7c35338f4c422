/**
 * Load test of the cache node (`image-cache serve`, sqlite driver, noauth)
 * in front of the fake Glance: many keep-alive connections for a minute
 * over a mix of whole-image GETs of 20 images (1 to 64 MiB) that start
 * uncached (so the first requests of each are misses, many at once: a
 * coalesced fill), hits once they are cached, Range GETs (a-b, a-, -n) and
 * management calls (GET /v2/cache, PUT /v2/cache/{id}), while one more
 * connection DELETEs cached images (one at a time, a second apart) so that
 * misses recur all through the run. The cache is large enough for every image: what evicts
 * is the DELETEs, not pruning (BENCH_LOAD_CACHE_SIZE smaller than 286 MiB
 * makes pruning run under load too).
 *
 * Every body is hashed with sha256 as it streams in and compared with the
 * expected bytes; any 5xx, unexpected status, corrupt body, reset, short
 * body or stall fails the run (exit 1), so that it can be a gate. Also
 * printed: latency per kind of request (p50, p90, p99, max), the latency
 * of a /healthcheck probe sent every 250 ms from the main thread, the node's
 * peak and final RSS (all its processes), and how busy the generator was.
 *
 * The peer, measured in the same run because the machines are noisy: the
 * fake upstream itself under the same mix minus the management calls, for
 * a shorter time; the ratios node/peer of throughput and p99 are the figures
 * that compare across machines.
 *
 *   npm run bench:load
 *   BENCH_LOAD_WORKERS=1,2 npm run bench:load     # a node of 1 worker, then one of 2
 *
 * Environment: BENCH_LOAD_SECONDS (60), BENCH_LOAD_CONNECTIONS (200), BENCH_LOAD_WORKERS (1; a
 * list runs a node of each), BENCH_PEER_SECONDS (20; 0: no peer), BENCH_LOAD_THREADS (2, the
 * generator's threads), BENCH_LOAD_DELETE_MS (1000; 0: no DELETEs), BENCH_LOAD_CACHE_SIZE
 * (default: twice the images), TMPDIR. Prints a table, then the whole report as one JSON line.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { KINDS, type ClientReport, type ClientTask, type Kind, type KindCounts } from './load-clients.js';
import { LOAD_IMAGES, sharedImages, totalSize, type CheckedImage } from './load-images.js';
import { groupCpuSeconds, groupRss, sampleRss, startNode, startUpstream, type CacheNode, type Upstream } from './load-servers.js';
import { numberFromEnv, numberFromString, sizeFromEnv } from './settings.js';
import { BenchRun, quotient, round } from './report.js';

const MiB = 1024 ** 2;
const RSS_SAMPLE_MS = 200;

const config = {
  seconds: numberFromEnv('BENCH_LOAD_SECONDS', 60),
  connections: numberFromEnv('BENCH_LOAD_CONNECTIONS', 200),
  workers: (process.env.BENCH_LOAD_WORKERS || '1').split(',').map((w) => numberFromString('BENCH_LOAD_WORKERS', w.trim())),
  peerSeconds: numberFromEnv('BENCH_PEER_SECONDS', 20),
  threads: Math.max(1, numberFromEnv('BENCH_LOAD_THREADS', 2)),
  deleteEveryMs: numberFromEnv('BENCH_LOAD_DELETE_MS', 1000),
  cacheSize: sizeFromEnv('BENCH_LOAD_CACHE_SIZE', 2 * totalSize(LOAD_IMAGES)),
  images: LOAD_IMAGES.length,
  imagesMiB: totalSize(LOAD_IMAGES) / MiB,
  cores: os.availableParallelism(),
};

// ---------------------------------------------------------------- report

const { record, progress, printReport, cleanup, cleanups } = new BenchRun('bench:load', config);

/** a / b, or null when either side is missing. */
function ratio(name: string, a: number | undefined, b: number | undefined): void {
  record('ratio', 'node_over_peer', name, quotient(a, b));
}

// ---------------------------------------------------------------- the load

interface Load {
  seconds: number;
  counts: Record<Kind, KindCounts>;
  /** Per kind, and `data`: every image download (whole or range) together. */
  latency: Record<Kind | 'data', RecordableHistogram>;
  statuses: Record<string, number>;
  failures: string[];
  bodyBytes: number;
  staleSocketRetries: number;
  manage: ClientReport['manage'];
  /** Per generator thread. */
  eventLoopUtilization: number[];
  /** CPU the whole generator process used (its threads and the samplers), in cores. */
  generatorCores: number;
  /** GET /healthcheck from this (otherwise idle) thread every PROBE_EVERY_MS, on a new connection: how long a new, trivial request waits behind the load. */
  probe?: RecordableHistogram;
}

const PROBE_EVERY_MS = 250;

/** Probes `url` until stop() is called; stop resolves with the latencies (µs). */
function startProbe(url: string): () => Promise<RecordableHistogram> {
  const histogram = createHistogram();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const started = performance.now();
      await new Promise<void>((resolve) => {
        const req = http.get(url, { agent: false }, (res) => {
          res.resume();
          res.once('end', resolve);
          res.once('error', () => resolve());
        });
        req.once('error', () => resolve());
      });
      histogram.record(Math.max(1, Math.round((performance.now() - started) * 1000)));
      await new Promise((resolve) => setTimeout(resolve, PROBE_EVERY_MS));
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return histogram;
  };
}

/** The connections spread over the generator's threads, run for `seconds` against `url`; resolves when every request has ended. */
async function runLoad(url: string, node: boolean, seconds: number, images: CheckedImage[], bytes: SharedArrayBuffer): Promise<Load> {
  const threads = Math.min(config.threads, config.connections);
  // Every image starts cold, and at DELETE epoch 0.
  const state = new SharedArrayBuffer(2 * images.length * Int32Array.BYTES_PER_ELEMENT);
  const workers = Array.from({ length: threads }, (_, t) => {
    const task: ClientTask = {
      url,
      connections: Math.floor(((t + 1) * config.connections) / threads) - Math.floor((t * config.connections) / threads),
      seconds,
      images,
      bytes,
      state,
      node,
      deleteEveryMs: t === 0 ? config.deleteEveryMs : 0,
    };
    return new Worker(new URL('./load-clients.js', import.meta.url), { workerData: task });
  });
  try {
    await Promise.all(workers.map((worker) => nextMessage(worker)));
    const cpu = process.cpuUsage();
    const started = performance.now();
    const reports = workers.map((worker) => nextMessage(worker) as Promise<ClientReport>);
    for (const worker of workers) worker.postMessage('go');
    const stopProbe = node ? startProbe(`${url}/healthcheck`) : undefined;
    const shares = await Promise.all(reports);
    const probe = await stopProbe?.();
    const wall = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    return { ...merge(shares), seconds: wall, generatorCores: (used.user + used.system) / 1e6 / wall, ...(probe === undefined ? {} : { probe }) };
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

function merge(shares: ClientReport[]): Omit<Load, 'seconds' | 'generatorCores'> {
  const counts = Object.fromEntries(KINDS.map((kind) => [kind, { requests: 0, ok: 0, status5xx: 0, statusUnexpected: 0, corrupt: 0, connectionErrors: 0 }])) as Record<Kind, KindCounts>;
  const latency = Object.fromEntries([...KINDS, 'data'].map((kind) => [kind, createHistogram()])) as Load['latency'];
  const statuses: Record<string, number> = {};
  const manage = { list: 0, queue: 0, delete: 0 };
  for (const share of shares) {
    for (const kind of KINDS) {
      for (const key of Object.keys(counts[kind]) as Array<keyof KindCounts>) counts[kind][key] += share.counts[kind][key];
      for (const us of share.latencies[kind]) {
        const value = Math.max(1, Math.round(us));
        latency[kind].record(value);
        if (kind !== 'manage') latency.data.record(value);
      }
    }
    for (const [status, n] of Object.entries(share.statuses)) statuses[status] = (statuses[status] ?? 0) + n;
    for (const key of Object.keys(manage) as Array<keyof typeof manage>) manage[key] += share.manage[key];
  }
  return {
    counts,
    latency,
    statuses,
    manage,
    failures: shares.flatMap((share) => share.failures),
    bodyBytes: shares.reduce((sum, share) => sum + share.bodyBytes, 0),
    staleSocketRetries: shares.reduce((sum, share) => sum + share.staleSocketRetries, 0),
    eventLoopUtilization: shares.map((share) => share.eventLoopUtilization),
  };
}

function nextMessage(worker: Worker): Promise<unknown> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

/** Requests that went wrong in any way: the gate. */
function failed(load: Load): number {
  return KINDS.reduce((sum, kind) => {
    const c = load.counts[kind];
    return sum + c.status5xx + c.statusUnexpected + c.corrupt + c.connectionErrors;
  }, 0);
}

/** Throughput, errors and latency of a load, under `part`. */
function recordLoad(part: string, load: Load): void {
  const dataRequests = load.latency.data.count;
  record(part, 'load', 'seconds', load.seconds);
  record(part, 'load', 'requests', KINDS.reduce((sum, kind) => sum + load.counts[kind].requests, 0));
  record(part, 'load', 'data_requests_per_s', dataRequests / load.seconds);
  record(part, 'load', 'MB_per_s', load.bodyBytes / 1e6 / load.seconds);
  const total = (key: keyof KindCounts): number => KINDS.reduce((sum, kind) => sum + load.counts[kind][key], 0);
  record(part, 'errors', 'status_5xx', total('status5xx'));
  record(part, 'errors', 'status_unexpected', total('statusUnexpected'));
  record(part, 'errors', 'corrupt_bodies', total('corrupt'));
  record(part, 'errors', 'connection_errors', total('connectionErrors'));
  record(part, 'errors', 'stale_keepalive_retries', load.staleSocketRetries);
  load.failures.slice(0, 5).forEach((failure, i) => record(part, 'errors', `failure_${i + 1}`, failure));
  record(part, 'load', 'statuses', Object.entries(load.statuses).map(([status, n]) => `${status}:${n}`).join(' '));
  for (const kind of [...KINDS, 'data'] as const) {
    const histogram = load.latency[kind];
    if (histogram.count === 0) continue;
    record(part, kind, 'requests', histogram.count);
    for (const p of [50, 90, 99]) record(part, kind, `p${p}_ms`, histogram.percentile(p) / 1000);
    record(part, kind, 'max_ms', histogram.max / 1000);
  }
  if (load.probe !== undefined && load.probe.count > 0) {
    record(part, 'probe', 'requests', load.probe.count);
    for (const p of [50, 99]) record(part, 'probe', `p${p}_ms`, load.probe.percentile(p) / 1000);
    record(part, 'probe', 'max_ms', load.probe.max / 1000);
  }
  if (load.counts.manage.requests > 0) record(part, 'manage', 'list_queue_delete', `${load.manage.list}/${load.manage.queue}/${load.manage.delete}`);
  record(part, 'generator', 'cpu_cores', load.generatorCores);
  record(part, 'generator', 'event_loop_utilization', load.eventLoopUtilization.map((u) => round(u)).join(' '));
}

// ---------------------------------------------------------------- the runs

interface Setup {
  root: string;
  upstream: Upstream;
  images: CheckedImage[];
  bytes: SharedArrayBuffer;
}

/** A fresh node (empty cache) of `workers` workers under the load; returns the load, for the ratios. */
async function nodeRun(setup: Setup, workers: number): Promise<Load> {
  const part = `node_workers_${workers}`;
  const dir = path.join(setup.root, part);
  fs.mkdirSync(dir);
  const node = await startNode(dir, setup.upstream.url, workers, config.cacheSize);
  cleanups.push(() => node.stop());
  try {
    progress(`${part}: ${config.connections} connections for ${config.seconds} s`);
    const upstreamBefore = await setup.upstream.stats();
    const upstreamCpu = groupCpuSeconds(setup.upstream.pgid);
    const nodeCpu = groupCpuSeconds(node.pgid);
    record(part, 'node', 'rss_idle_MiB', groupRss(node.pgid) / MiB);
    const rss = sampleRss(node.pgid, RSS_SAMPLE_MS);
    const load = await runLoad(node.url, true, config.seconds, setup.images, setup.bytes);
    const sampled = rss();
    recordLoad(part, load);
    record(part, 'node', 'rss_peak_MiB', sampled.peak / MiB);
    record(part, 'node', 'rss_final_MiB', sampled.last / MiB);
    record(part, 'node', 'rss_samples', sampled.samples);
    record(part, 'node', 'cpu_cores', (groupCpuSeconds(node.pgid) - nodeCpu) / load.seconds);
    await recordNodeMetrics(part, node);
    record(part, 'node', 'log_warnings', logWarnings(node.log));
    const upstream = await setup.upstream.stats();
    record(part, 'upstream', 'cpu_cores', (groupCpuSeconds(setup.upstream.pgid) - upstreamCpu) / load.seconds);
    record(part, 'upstream', 'file_requests', upstream.fileRequests - upstreamBefore.fileRequests);
    record(part, 'upstream', 'metadata_requests', upstream.metadataRequests - upstreamBefore.metadataRequests);
    record(part, 'upstream', 'MB_sent', (upstream.bytesSent - upstreamBefore.bytesSent) / 1e6);
    const bad = failed(load);
    record(part, 'gate', 'result', bad === 0 ? 'pass' : `FAIL (${bad} requests)`);
    if (bad > 0) process.exitCode = 1;
    return load;
  } finally {
    await node.stop();
  }
}

/** What the node itself says it did: hits, misses, bypasses (ranges of uncached images), fills and evictions. */
async function recordNodeMetrics(part: string, node: CacheNode): Promise<void> {
  const metrics = await node.metrics();
  const get = (name: string): number => metrics.get(name) ?? 0;
  record(part, 'node', 'hit_responses', get('image_cache_hit_responses_total'));
  record(part, 'node', 'miss_responses', get('image_cache_miss_responses_total'));
  record(part, 'node', 'bypass_responses', get('image_cache_bypass_responses_total'));
  const labelled = (prefix: string): string =>
    [...metrics].filter(([name]) => name.startsWith(`${prefix}{`)).map(([name, n]) => `${/"([^"]*)"/.exec(name)?.[1] ?? name}:${n}`).join(' ') || 'none';
  record(part, 'node', 'fills', labelled('image_cache_upstream_fetches_total'));
  record(part, 'node', 'evictions', labelled('image_cache_evictions_total'));
}

/** The node's warnings and errors, counted by message (`none`, or e.g. `image source unavailable:3`). */
function logWarnings(log: string): string {
  const counts = new Map<string, number>();
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    let entry: { level?: unknown; msg?: unknown };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue; // not a log line of the node's (an empty line, a stack trace)
    }
    if (entry.level !== 'warn' && entry.level !== 'error' && entry.level !== 'fatal') continue;
    const key = `${String(entry.level)} ${String(entry.msg)}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([msg, n]) => `${msg}:${n}`).join(', ') || 'none';
}

/** The fake upstream straight, the same mix minus the management calls (it has no cache to manage). */
async function peerRun(setup: Setup): Promise<Load> {
  const part = 'peer_upstream_direct';
  progress(`${part}: ${config.connections} connections for ${config.peerSeconds} s`);
  const upstreamCpu = groupCpuSeconds(setup.upstream.pgid);
  const rss = sampleRss(setup.upstream.pgid, RSS_SAMPLE_MS);
  const load = await runLoad(setup.upstream.url, false, config.peerSeconds, setup.images, setup.bytes);
  recordLoad(part, load);
  record(part, 'upstream', 'rss_peak_MiB', rss().peak / MiB);
  record(part, 'upstream', 'cpu_cores', (groupCpuSeconds(setup.upstream.pgid) - upstreamCpu) / load.seconds);
  return load;
}

function recordRatios(node: Load, peer: Load): void {
  // An empty histogram's percentiles are 0: no figure is better than a false one.
  const p99 = (histogram: RecordableHistogram): number | undefined => (histogram.count > 0 ? histogram.percentile(99) : undefined);
  ratio('data_requests_per_s', node.latency.data.count / node.seconds, peer.latency.data.count / peer.seconds);
  ratio('MB_per_s', node.bodyBytes / node.seconds, peer.bodyBytes / peer.seconds);
  ratio('data_p99', p99(node.latency.data), p99(peer.latency.data));
  // A hit is the node's whole download at its best; the peer has only whole downloads from memory.
  ratio('hit_p99_over_full_p99', p99(node.latency.hit), p99(peer.latency.full));
  // Ranges of cached images: those of an image being filled wait for the fill, which the peer has no counterpart of.
  ratio('range_p99', p99(node.latency.range), p99(peer.latency.range));
}

async function main(): Promise<void> {
  try {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-bench-load-'));
    // A failed gate keeps the nodes' logs and caches for a look.
    cleanups.push(() => (process.exitCode === 1 ? progress(`kept ${root} (the nodes' logs and caches)`) : fs.rmSync(root, { recursive: true, force: true })));
    progress(`making ${config.images} images (${config.imagesMiB} MiB) and starting the fake upstream`);
    const upstream = await startUpstream();
    cleanups.push(() => upstream.stop());
    const { buffer, checked } = sharedImages(LOAD_IMAGES);
    const setup: Setup = { root, upstream, images: checked, bytes: buffer };
    const nodes: Load[] = [];
    for (const workers of config.workers) {
      try {
        nodes.push(await nodeRun(setup, workers));
      } catch (err) {
        record(`node_workers_${workers}`, 'run', 'error', (err as Error).message.split('\n').slice(0, 6).join(' | '));
        process.exitCode = 1;
      }
    }
    if (config.peerSeconds > 0) {
      const peer = await peerRun(setup);
      if (nodes[0] !== undefined) recordRatios(nodes[0], peer);
    }
  } finally {
    await cleanup();
    printReport();
  }
}

// ---------------------------------------------------------------- helpers


main().catch((err: Error) => {
  progress(`failed: ${err.stack ?? err.message}`);
  process.exitCode = 1;
});
