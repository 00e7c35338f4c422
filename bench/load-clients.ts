/**
 * The load generator of bench/load.ts: a worker thread running its share of
 * the connections, each a loop of keep-alive requests (a mix of whole-image
 * GETs, Range GETs and management calls) until the time is up. Every body
 * is hashed with sha256 as it streams in and compared with the expected
 * bytes (the image, or the slice a range names); every answer's status and
 * headers are checked. autocannon and wrk cannot do that per request, hence
 * this.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { CheckedImage } from './load-images.js';

/**
 * hit / miss: a whole image through the node, a miss until a whole download
 * of it has completed since its last DELETE (as this generator sees it: the
 * node's own counts come from its /metrics); full: a whole image from the
 * peer; range / range_miss: a Range GET of an image cached or not (as for
 * hit and miss: a range of an image being filled waits for the fill to reach
 * it); manage: a call of /v2/cache.
 */
export const KINDS = ['hit', 'miss', 'full', 'range', 'range_miss', 'manage'] as const;
export type Kind = (typeof KINDS)[number];

export interface ClientTask {
  url: string;
  connections: number;
  seconds: number;
  images: CheckedImage[];
  bytes: SharedArrayBuffer;
  /** Int32Array: [warm flags (one per image), DELETE epochs (one per image)], shared by the threads. */
  state: SharedArrayBuffer;
  /** Requests for the node: whole GETs are hits or misses, and management calls are in the mix. */
  node: boolean;
  /** This thread also runs one more connection that DELETEs a random cached image this often (0: none). */
  deleteEveryMs: number;
}

export interface KindCounts {
  requests: number;
  ok: number;
  /** Answers with a 5xx status. */
  status5xx: number;
  /** Other statuses than the one expected (not 5xx). */
  statusUnexpected: number;
  /** A complete answer with the expected status whose body, Content-Range or listing is wrong. */
  corrupt: number;
  /** A reset, a short body, a timeout: no complete answer. */
  connectionErrors: number;
}

export interface ClientReport {
  counts: Record<Kind, KindCounts>;
  /** Microseconds from the request sent to the last byte of its body, per kind. */
  latencies: Record<Kind, Float64Array>;
  statuses: Record<string, number>;
  /** The first few failures, described. */
  failures: string[];
  bodyBytes: number;
  /** Requests sent again: the server had closed an idle keep-alive socket as the request went out on it. */
  staleSocketRetries: number;
  /** Management calls by route. */
  manage: Record<'list' | 'queue' | 'delete', number>;
  /** This thread's event loop utilization over the run (1: always busy, so the generator may be the bottleneck). */
  eventLoopUtilization: number;
}

/**
 * No byte for this long on a connection: the request fails (a stall is an
 * error, not a slow answer). Longer than the node's upstream_timeout (60 s),
 * so that the node's own answer to a silent upstream is what gets counted.
 */
const IDLE_TIMEOUT_MS = 90_000;
/** Once the time is up, requests in flight get this long to finish before they count as errors. */
const DRAIN_MS = 120_000;
/** Ranges are at most this long: they stand for a client reading a piece (a boot sector, a header). */
const MAX_RANGE = 1024 ** 2;
const MAX_FAILURES_KEPT = 10;
const TOKEN = { 'X-Auth-Token': 'load' };

/** One answer, its body hashed as it came (JSON bodies kept as text too). */
interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  sha256: string;
  text: string | undefined;
}

class StaleSocket extends Error {}

export async function runClients(task: ClientTask, started: Promise<void>): Promise<ClientReport> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: task.connections + 1, maxFreeSockets: task.connections + 1 });
  const bytes = Buffer.from(task.bytes);
  const state = new Int32Array(task.state);
  const imageCount = task.images.length;
  const warm = (i: number): boolean => Atomics.load(state, i) === 1;
  const epoch = (i: number): number => Atomics.load(state, imageCount + i);
  const counts = Object.fromEntries(KINDS.map((kind) => [kind, { requests: 0, ok: 0, status5xx: 0, statusUnexpected: 0, corrupt: 0, connectionErrors: 0 }])) as Record<Kind, KindCounts>;
  const latencies = Object.fromEntries(KINDS.map((kind) => [kind, [] as number[]])) as Record<Kind, number[]>;
  const report = { statuses: {} as Record<string, number>, failures: [] as string[], bodyBytes: 0, staleSocketRetries: 0, manage: { list: 0, queue: 0, delete: 0 } };
  let stopping = false;

  function exchange(method: string, path: string, headers: Record<string, string>, keepText: boolean): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const req = http.request(`${task.url}${path}`, { method, agent, headers: { ...TOKEN, ...headers } });
      let answered = false;
      req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(new Error(`no byte for ${IDLE_TIMEOUT_MS} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        // The keep-alive race every client has: the server closed the idle socket as this request went out on it.
        if (!answered && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) reject(new StaleSocket(err.message));
        else reject(err);
      });
      req.on('response', (res) => {
        answered = true;
        const hash = createHash('sha256');
        const chunks: Buffer[] = [];
        let received = 0;
        res.on('data', (chunk: Buffer) => {
          hash.update(chunk);
          received += chunk.length;
          if (keepText) chunks.push(chunk);
        });
        // A body cut short (the connection closed before Content-Length bytes) closes incomplete.
        res.on('error', reject);
        res.on('close', () => {
          if (!res.complete) reject(new Error(`body cut short after ${received} bytes`));
        });
        res.on('end', () => {
          report.bodyBytes += received;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, bytes: received, sha256: hash.digest('hex'), text: keepText ? Buffer.concat(chunks).toString('utf8') : undefined });
        });
      });
      req.end();
    });
  }

  /** One request of `kind`, timed and checked by `check` (which returns why the answer is wrong, or undefined). */
  async function measure(kind: Kind, method: string, path: string, headers: Record<string, string>, expected: number, check: (answer: Answer) => string | undefined): Promise<boolean> {
    const count = counts[kind];
    count.requests++;
    const sent = performance.now();
    let answer: Answer;
    try {
      try {
        answer = await exchange(method, path, headers, kind === 'manage');
      } catch (err) {
        if (!(err instanceof StaleSocket)) throw err;
        report.staleSocketRetries++;
        answer = await exchange(method, path, headers, kind === 'manage');
      }
    } catch (err) {
      count.connectionErrors++;
      fail(`${kind} ${method} ${path} ${headers.Range ?? ''}: ${(err as Error).message}`);
      return false;
    }
    latencies[kind].push((performance.now() - sent) * 1000);
    report.statuses[answer.status] = (report.statuses[answer.status] ?? 0) + 1;
    if (answer.status !== expected) {
      if (answer.status >= 500) count.status5xx++;
      else count.statusUnexpected++;
      fail(`${kind} ${method} ${path} ${headers.Range ?? ''}: status ${answer.status}, expected ${expected}`);
      return false;
    }
    const wrong = check(answer);
    if (wrong !== undefined) {
      count.corrupt++;
      fail(`${kind} ${method} ${path} ${headers.Range ?? ''}: ${wrong}`);
      return false;
    }
    count.ok++;
    return true;
  }

  function fail(description: string): void {
    if (report.failures.length < MAX_FAILURES_KEPT) report.failures.push(description);
  }

  async function wholeImage(i: number): Promise<void> {
    const image = task.images[i]!;
    const kind: Kind = !task.node ? 'full' : warm(i) ? 'hit' : 'miss';
    const epochAtStart = epoch(i);
    const ok = await measure(kind, 'GET', `/v2/images/${image.id}/file`, {}, 200, (answer) => {
      if (answer.bytes !== image.size) return `${answer.bytes} bytes, expected ${image.size}`;
      return answer.sha256 === image.sha256 ? undefined : 'sha256 differs from the image';
    });
    // Cached now, unless a DELETE came in between.
    if (ok && task.node && epoch(i) === epochAtStart) Atomics.store(state, i, 1);
  }

  /** One of the three forms of Range (a-b, a-, -n), checked against the slice of the image it names. */
  async function range(i: number): Promise<void> {
    const image = task.images[i]!;
    const length = 1 + randomInt(Math.min(MAX_RANGE, image.size));
    const form = randomInt(3);
    const start = form === 0 ? randomInt(image.size - length + 1) : image.size - length;
    const end = start + length - 1;
    const header = form === 0 ? `bytes=${start}-${end}` : form === 1 ? `bytes=${start}-` : `bytes=-${length}`;
    const kind: Kind = task.node && !warm(i) ? 'range_miss' : 'range';
    await measure(kind, 'GET', `/v2/images/${image.id}/file`, { Range: header }, 206, (answer) => {
      const contentRange = answer.headers['content-range'];
      if (contentRange !== `bytes ${start}-${end}/${image.size}`) return `Content-Range ${contentRange}, expected bytes ${start}-${end}/${image.size}`;
      if (answer.bytes !== length) return `${answer.bytes} bytes, expected ${length}`;
      const slice = bytes.subarray(image.offset + start, image.offset + end + 1);
      return answer.sha256 === createHash('sha256').update(slice).digest('hex') ? undefined : 'sha256 differs from the slice';
    });
  }

  /** GET /v2/cache: a listing in Glance's shape, naming only our images, each at its full size (never a partial file). */
  async function list(): Promise<void> {
    report.manage.list++;
    await measure('manage', 'GET', '/v2/cache', {}, 200, (answer) => {
      let listing: { cached_images?: unknown; queued_images?: unknown };
      try {
        listing = JSON.parse(answer.text ?? '') as typeof listing;
      } catch {
        return 'the listing is not JSON';
      }
      if (!Array.isArray(listing.cached_images) || !Array.isArray(listing.queued_images)) return 'no cached_images or queued_images array';
      for (const entry of listing.cached_images as Array<{ image_id?: unknown; size?: unknown }>) {
        const image = task.images.find((candidate) => candidate.id === entry.image_id);
        if (image === undefined) return `lists an unknown image ${String(entry.image_id)}`;
        if (entry.size !== image.size) return `lists ${image.id} at ${String(entry.size)} bytes, not ${image.size}`;
      }
      return undefined;
    });
  }

  /** PUT /v2/cache/{id}: queued (a cold image's fill starts in the background, and requests for it follow that fill). */
  async function queue(i: number): Promise<void> {
    report.manage.queue++;
    await measure('manage', 'PUT', `/v2/cache/${task.images[i]!.id}`, {}, 202, () => undefined);
  }

  /** DELETE /v2/cache/{id}: the image is cold again, so that misses (and coalesced fills) recur all through the run. */
  async function remove(i: number): Promise<void> {
    report.manage.delete++;
    const ok = await measure('manage', 'DELETE', `/v2/cache/${task.images[i]!.id}`, {}, 204, () => undefined);
    if (ok) {
      Atomics.add(state, imageCount + i, 1);
      Atomics.store(state, i, 0);
    }
  }

  /** The mix of one connection's requests: whole images 70%, ranges 20%, and (on the node) listings 5% and queueing 5%. */
  function next(): Promise<void> {
    const i = randomInt(imageCount);
    const roll = Math.random() * (task.node ? 100 : 90);
    if (roll < 70) return wholeImage(i);
    if (roll < 90) return range(i);
    return roll < 95 ? list() : queue(i);
  }

  async function connection(deadline: number): Promise<void> {
    while (!stopping && performance.now() < deadline) await next();
  }

  async function deleter(deadline: number): Promise<void> {
    while (!stopping && performance.now() < deadline) {
      await sleep(task.deleteEveryMs);
      const warmImages = task.images.map((_, i) => i).filter(warm);
      if (warmImages.length > 0 && performance.now() < deadline) await remove(warmImages[randomInt(warmImages.length)]!);
    }
  }

  await started;
  const elu = performance.eventLoopUtilization();
  const deadline = performance.now() + task.seconds * 1000;
  const loops = Array.from({ length: task.connections }, () => connection(deadline));
  if (task.node && task.deleteEveryMs > 0) loops.push(deleter(deadline));
  const all = Promise.all(loops);
  // Requests still in flight long after the end are cut off (and so counted as connection errors).
  let timer: NodeJS.Timeout | undefined;
  const cutOff = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), task.seconds * 1000 + DRAIN_MS)));
  const drained = await Promise.race([all.then(() => true), cutOff]);
  clearTimeout(timer);
  if (!drained) {
    stopping = true;
    agent.destroy();
    await all;
  }
  agent.destroy();
  return {
    counts,
    latencies: Object.fromEntries(KINDS.map((kind) => [kind, Float64Array.from(latencies[kind])])) as Record<Kind, Float64Array>,
    ...report,
    eventLoopUtilization: performance.eventLoopUtilization(elu).utilization,
  };
}

function randomInt(n: number): number {
  return Math.floor(Math.random() * n);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** In a worker: says 'ready', starts on 'go' (so that thread start-up is outside the measured time), posts its report. */
if (!isMainThread && parentPort !== null) {
  const port = parentPort;
  const go = new Promise<void>((resolve) => port.once('message', () => resolve()));
  port.postMessage('ready');
  void runClients(workerData as ClientTask, go).then((report) => {
    port.postMessage(report, Object.values(report.latencies).map((values) => values.buffer as ArrayBuffer));
  });
}
