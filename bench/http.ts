/**
 * HTTP benchmark of the cache node (`image-cache serve`) beside its peers, all
 * on this machine in one run: Debian's Glance with its cache on, the same
 * Glance with its cache off (the node's upstream), nginx serving the image
 * file from disk with sendfile, and the bandwidth-limited fake Glance. The
 * machines are shared and noisy, so what counts are the ratios between
 * figures taken side by side; the absolute figures are printed for context.
 *
 *   (a) hits on a cached image: throughput and server CPU per GiB (node, node behind nginx with
 *       X-Accel-Redirect, Glance's cache, nginx)
 *   (b) the first download of an uncached image: fills by the node, by the floor of a verified fill
 *       in Node (fill-floor.ts) and by nginx's proxy_cache, each cold (the first fill of a fresh
 *       process) and warm (its second), throughput and server CPU per GiB, beside Glance's own
 *       cache and the upstream directly; one table of them, with ratios to the floor and to nginx
 *   (c) herds of concurrent first requests: wall time, every body compared with the image, the upstream's reads;
 *       the same herd on nginx is the floor the clients themselves set on this machine
 *   (d) the node's peak RSS during (c), with one client among them that reads nothing for a while
 *   (e) an image queued with PUT /v2/cache/{id} and downloaded by 10 clients at once: the upstream's reads
 *
 *   npm run bench:http
 *   BENCH_HIT_SIZE=64MiB BENCH_HERD_SIZE=16MiB BENCH_IDLE_SECONDS=3 npm run bench:http   # quick
 *   BENCH_PARTS=b npm run bench:http                                                     # the fills only
 *
 * Environment: BENCH_HIT_SIZE (default 1GiB, parts a and e), BENCH_FILL_SIZE (512MiB, part b:
 * small enough that the page cache is not what is measured), BENCH_HERD_SIZE (256MiB, parts c
 * and d), BENCH_IDLE_SECONDS (60), BENCH_REPS (5, hits per server), BENCH_UPSTREAM_BPS (200e6,
 * the fake upstream's bandwidth), BENCH_FIRST_REPS (4, rounds of first downloads), BENCH_PARTS
 * (a,b,c,e; only the parts whose names start so), BENCH_NODE_CLI (the node of another build, e.g.
 * the one before a change: its dist/src/cli/main.js), TMPDIR. Prints the summary table of (b) and the
 * list of every figure, then the whole report as one JSON line.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { startFakeGlance, type FakeGlance } from '../test/support/fake-glance.js';
import { download, type ClientResult, type ClientShare } from './http-clients.js';
import { CLK_TCK, procStat, readProc, type ProcStat } from './proc.js';
import { numberFromEnv, sizeFromEnv } from './settings.js';
import { BenchRun, quotient, round } from './report.js';
import { startCachingNginx, startFrontNginx, startStaticNginx } from '../test/support/nginx.js';
import { processGroup, signalGroup, sleep } from '../test/support/processes.js';
import { glanceAvailable, startGlance, uploadImage, type GlancePeer } from '../test/support/glance-peer.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const HERD_SIZES = [10, 50];
const HERD_PARTS = HERD_SIZES.map((n) => `c_herd_${n}`);
const FAKE_HERD = 10;
const RSS_SAMPLE_MS = 75;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

const config = {
  hitSize: sizeFromEnv('BENCH_HIT_SIZE', GiB),
  herdSize: sizeFromEnv('BENCH_HERD_SIZE', 256 * MiB),
  idleSeconds: numberFromEnv('BENCH_IDLE_SECONDS', 60),
  reps: numberFromEnv('BENCH_REPS', 5),
  fillSize: sizeFromEnv('BENCH_FILL_SIZE', 512 * MiB),
  firstReps: numberFromEnv('BENCH_FIRST_REPS', 4),
  /** BENCH_PARTS=a,c: only the parts whose names start so (default: all). */
  parts: (process.env.BENCH_PARTS ?? 'a,b,c,e').split(',').map((part) => part.trim()).filter(Boolean),
  upstreamBytesPerSecond: numberFromEnv('BENCH_UPSTREAM_BPS', 200e6),
  /** BENCH_NODE_CLI: another build's dist/src/cli/main.js, to measure it with this bench (a before/after comparison). */
  nodeCli: process.env.BENCH_NODE_CLI ? path.resolve(process.env.BENCH_NODE_CLI) : undefined,
};

// ---------------------------------------------------------------- report

const { record, table, progress, printReport, cleanup, cleanups } = new BenchRun('bench:http', config, true);

/** a / b, or null when either side is missing (the node did not run, a peer failed). */
function ratio(part: string, name: string, a: number | undefined, b: number | undefined): void {
  record(part, 'ratio', name, quotient(a, b));
}

// ---------------------------------------------------------------- /proc

/** Every live process's parent and CPU ticks (utime + stime). */
function allProcesses(): ProcStat[] {
  const out: ProcStat[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = procStat(Number(entry));
    if (stat !== undefined && stat.state !== 'Z') out.push(stat);
  }
  return out;
}

/** `root` and all its descendants. */
function processTree(root: number): ProcStat[] {
  const all = allProcesses();
  const tree = all.filter((p) => p.pid === root);
  for (let i = 0; i < tree.length; i++) tree.push(...all.filter((p) => p.ppid === tree[i]!.pid));
  return tree;
}

/** CPU seconds (user + system) used so far by the live processes of a server. */
function cpuSeconds(server: Server): number {
  const pids = new Set(server.pids());
  return allProcesses().filter((p) => pids.has(p.pid)).reduce((sum, p) => sum + p.ticks, 0) / CLK_TCK;
}

/** A number field (`name: value ...`) of /proc/PID/status or /proc/PID/io, summed over processes. */
function procField(pids: number[], file: 'status' | 'io', name: string): number {
  let sum = 0;
  for (const pid of pids) {
    const match = readProc(pid, file)?.match(new RegExp(`^${name}:\\s*(\\d+)`, 'm'));
    if (match) sum += Number(match[1]);
  }
  return sum;
}

/** Bytes the server's processes have read so far (rchar: files, and sockets too; requests are small). */
const bytesRead = (server: Server): number => procField(server.pids(), 'io', 'rchar');
const rssBytes = (server: Server): number => procField(server.pids(), 'status', 'VmRSS') * 1024;

/** Starts sampling a server's RSS (summed over its processes); the function returned stops it and gives the peak. */
function rssPeak(server: Server): () => number {
  let peak = rssBytes(server);
  const timer = setInterval(() => (peak = Math.max(peak, rssBytes(server))), RSS_SAMPLE_MS);
  return () => {
    clearInterval(timer);
    return Math.max(peak, rssBytes(server));
  };
}

// ---------------------------------------------------------------- servers

interface Server {
  name: string;
  url: string;
  pids(): number[];
}

/** A child in its own process group (so that its workers go with it), stopped by SIGTERM, killed if this process exits first. */
class Spawned implements Server {
  private exited: Promise<void>;
  exitReason: string | undefined;

  constructor(readonly name: string, readonly child: ChildProcess, readonly logFile: string, public url = '') {
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      this.exitReason = `exited (${signal ?? `code ${code}`})`;
      resolve();
    }));
    spawnedGroups.add(child.pid!);
  }

  pids(): number[] {
    return processTree(this.child.pid!).map((p) => p.pid);
  }

  async stop(): Promise<void> {
    const pgid = this.child.pid!;
    if (this.exitReason === undefined) {
      this.child.kill('SIGTERM');
      await Promise.race([this.exited, sleep(STOP_TIMEOUT_MS)]);
    }
    // Workers that outlive their primary are still in its group: given a moment, then killed.
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (processGroup(pgid).length > 0 && Date.now() < deadline) await sleep(50);
    signalGroup(pgid, 'SIGKILL');
    spawnedGroups.delete(pgid);
  }

  logTail(lines = 20): string {
    return fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '';
  }

  failure(what: string): Error {
    return new Error(`${this.name} ${what}; ${this.logFile}:\n${this.logTail()}`);
  }
}

const spawnedGroups = new Set<number>();
process.on('exit', () => {
  for (const pgid of spawnedGroups) signalGroup(pgid, 'SIGKILL');
});

function spawnServer(name: string, command: string, args: string[], logFile: string): Spawned {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log);
  if (child.pid === undefined) throw new Error(`${name}: ${command} could not be spawned`);
  const server = new Spawned(name, child, logFile);
  cleanups.push(() => server.stop());
  return server;
}

/** Resolves once the child has written a stdout line that `pattern` matches (its first group); rejects on exit or deadline. */
function waitForLine(server: Spawned, pattern: RegExp): Promise<string> {
  const stdout = server.child.stdout!;
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => finish(server.failure(`wrote no line matching ${pattern} within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    const onData = (chunk: Buffer): void => {
      seen += chunk.toString();
      const match = seen.match(pattern);
      if (match) finish(undefined, match[1]);
    };
    const onExit = (): void => finish(server.failure(`exited before it was ready${seen ? ` (stdout: ${seen.trim()})` : ''}`));
    const finish = (err?: Error, value?: string): void => {
      clearTimeout(timer);
      stdout.off('data', onData);
      server.child.off('exit', onExit);
      stdout.resume(); // keep draining, so that a full pipe never blocks it
      if (err) reject(err);
      else resolve(value!);
    };
    stdout.on('data', onData);
    server.child.once('exit', onExit);
  });
}

interface NodeServer extends Server {
  cacheDir: string;
  stop(): Promise<void>;
}

/**
 * The cache node, from the build this script belongs to, in front of `upstreamUrl` (`extra`: more
 * lines of its [DEFAULT]), in root/name; started there again, it restarts on the cache it left.
 */
async function startNode(root: string, name: string, upstreamUrl: string, workers: number, extra: string[] = []): Promise<NodeServer> {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  const cacheDir = path.join(dir, 'cache');
  const conf = path.join(dir, 'node.conf');
  // Everything this run caches fits, so that no prune runs in the middle of a measurement.
  const maxSize = 4 * config.hitSize + 8 * config.herdSize;
  fs.writeFileSync(conf, `[DEFAULT]
bind_host = 127.0.0.1
bind_port = 0
image_cache_dir = ${cacheDir}
image_cache_driver = sqlite
image_cache_max_size = ${maxSize}
upstream_url = ${upstreamUrl}
workers = ${workers}
${extra.join('\n')}
`);
  const cli = config.nodeCli ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
  const server = spawnServer(name, process.execPath, [cli, 'serve', '--config-file', conf], path.join(dir, 'node.log'));
  server.url = await waitForLine(server, /serving on (http:\/\/\S+)/);
  return Object.assign(server, { cacheDir });
}

async function startGlancePeer(name: string, cache: 'on' | 'off'): Promise<GlancePeer & Server> {
  const peer = await startGlance({ cache });
  cleanups.push(() => peer.stop());
  return Object.assign(peer, { name });
}

/** nginx serving the images' directory with sendfile (one process, as the node and Glance run one worker here). */
async function startNginx(dir: string): Promise<Server> {
  const peer = await startStaticNginx(dir);
  cleanups.push(() => peer.stop());
  return { name: 'nginx', url: peer.url, pids: () => processTree(peer.pid).map((p) => p.pid) };
}

/** The node with nginx in front: the node authorizes, nginx sends hits with sendfile (X-Accel-Redirect); the CPU of both counts. */
async function startFrontedNode(root: string, upstreamUrl: string): Promise<Server> {
  const node = await startNode(root, 'node_behind_nginx_internal', upstreamUrl, 1, ['x_accel_redirect = /_image_cache/']);
  const front = await startFrontNginx(node.url, node.cacheDir);
  cleanups.push(() => front.stop());
  const nodePids = node.pids.bind(node);
  return { name: 'node_behind_nginx', url: front.url, pids: () => [...nodePids(), ...processTree(front.pid).map((p) => p.pid)] };
}

async function startFake(bytesPerSecond: number): Promise<FakeGlance> {
  const fake = await startFakeGlance({ bytesPerSecond });
  cleanups.push(() => fake.close());
  return fake;
}

// ---------------------------------------------------------------- clients

/** A herd's clients, spread over one worker thread per core; resolves when every body has been read and compared with `image`. */
async function runClients(url: string, n: number, image: string): Promise<{ seconds: number; results: ClientResult[] }> {
  const threads = Math.min(n, os.availableParallelism());
  const workers = Array.from({ length: threads }, (_, i) => {
    const share: ClientShare = { url, image, count: Math.floor(((i + 1) * n) / threads) - Math.floor((i * n) / threads) };
    return new Worker(new URL('./http-clients.js', import.meta.url), { workerData: share });
  });
  try {
    await Promise.all(workers.map((worker) => nextMessage(worker)));
    const started = performance.now();
    for (const worker of workers) worker.postMessage('go');
    const shares = await Promise.all(workers.map((worker) => nextMessage(worker) as Promise<ClientResult[]>));
    return { seconds: (performance.now() - started) / 1000, results: shares.flat() };
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

function nextMessage(worker: Worker): Promise<unknown> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

interface CurlResult {
  bytesPerSecond: number;
  cpuSeconds: number;
}

/** One curl download to /dev/null, and the CPU seconds `server` spent meanwhile. */
async function curl(url: string, size: number, server: Server, expectHeaders: Record<string, string> = {}): Promise<CurlResult> {
  const names = Object.keys(expectHeaders);
  const before = cpuSeconds(server);
  const out = await run('curl', ['-sS', '-o', '/dev/null', '-H', 'X-Auth-Token: x', '-w', ['%{http_code} %{size_download} %{speed_download}', ...names.map((name) => `%header{${name}}`)].join(' '), url]);
  const cpu = cpuSeconds(server) - before;
  const [status, bytes, speed, ...headers] = out.trim().split(' ');
  if (Number(status) !== 200 || Number(bytes) !== size) throw new Error(`GET ${url}: status ${status}, ${bytes} bytes of ${size}`);
  for (const [i, name] of names.entries()) {
    if (headers[i] !== expectHeaders[name]) throw new Error(`GET ${url}: ${name} is ${headers[i] || 'absent'}, expected ${expectHeaders[name]}`);
  }
  return { bytesPerSecond: Number(speed), cpuSeconds: cpu };
}

interface Image {
  id: string;
  sha512: string;
}

/** Uploads `file` to a Glance and takes its sha512 from Glance's own os_hash_value. */
async function upload(glance: Server, file: string, name: string): Promise<Image> {
  const id = await uploadImage(glance.url, file, name);
  const doc = JSON.parse(await run('curl', ['-sSf', '-H', 'X-Auth-Token: x', `${glance.url}/v2/images/${id}`])) as { os_hash_value: string };
  return { id, sha512: doc.os_hash_value };
}

const fileUrl = (server: Server, id: string): string => `${server.url}/v2/images/${id}/file`;

// ---------------------------------------------------------------- data

/** `size` random bytes in a file (Glance's os_hash_value of the upload is the reference hash). */
async function randomFile(file: string, size: number): Promise<void> {
  await pipeline(async function* () {
    for (let done = 0; done < size; done += 8 * MiB) yield randomBytes(Math.min(8 * MiB, size - done));
  }, fs.createWriteStream(file));
}

async function sha512OfFile(file: string): Promise<string> {
  const hash = createHash('sha512');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Waits for a cache to publish an image's file (it may do so just after the response's last byte). */
async function cachedFile(dir: string, id: string): Promise<string> {
  const file = path.join(dir, id);
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!fs.existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${START_TIMEOUT_MS} ms`);
    await sleep(50);
  }
  return file;
}

// ---------------------------------------------------------------- (a) hits

interface HitTarget {
  server: Server;
  url: string;
}

/** Repetitions interleaved across the servers, so that each sees the same weather; median throughput, CPU per GiB. */
async function hits(targets: HitTarget[], size: number): Promise<Map<string, { mbps: number; cpuPerGiB: number }>> {
  const speeds = new Map<string, number[]>(targets.map((t) => [t.server.name, []]));
  const cpu = new Map<string, number>(targets.map((t) => [t.server.name, 0]));
  for (let rep = 0; rep < config.reps; rep++) {
    for (const { server, url } of targets) {
      const result = await curl(url, size, server);
      speeds.get(server.name)!.push(result.bytesPerSecond);
      cpu.set(server.name, cpu.get(server.name)! + result.cpuSeconds);
    }
  }
  const gib = (config.reps * size) / GiB;
  return new Map(targets.map((t) => [t.server.name, { mbps: median(speeds.get(t.server.name)!) / 1e6, cpuPerGiB: cpu.get(t.server.name)! / gib }]));
}

async function partHits(ctx: Context): Promise<void> {
  progress('(a) hits: uploading and caching the image');
  const [onImage, offImage] = await Promise.all([upload(ctx.glanceOn, ctx.hitFile, 'hit'), upload(ctx.glanceOff, ctx.hitFile, 'hit')]);
  // Glance's cache and the node's are each filled by one download.
  await curl(fileUrl(ctx.glanceOn, onImage.id), config.hitSize, ctx.glanceOn);
  await cachedFile(path.join(ctx.glanceOn.root, 'cache'), onImage.id);
  const targets: HitTarget[] = [
    { server: ctx.glanceOn, url: fileUrl(ctx.glanceOn, onImage.id) },
    { server: ctx.nginx, url: staticUrl(ctx, ctx.hitFile) },
  ];
  if (ctx.node) {
    await curl(fileUrl(ctx.node, offImage.id), config.hitSize, ctx.node);
    await cachedFile(ctx.node.cacheDir, offImage.id);
    targets.unshift({ server: ctx.node, url: fileUrl(ctx.node, offImage.id) });
  }
  if (ctx.frontedNode) {
    await curl(fileUrl(ctx.frontedNode, offImage.id), config.hitSize, ctx.frontedNode);
    targets.push({ server: ctx.frontedNode, url: fileUrl(ctx.frontedNode, offImage.id) });
  }
  const upstreamCpu = cpuSeconds(ctx.glanceOff);
  const results = await hits(targets, config.hitSize);
  for (const [name, { mbps, cpuPerGiB }] of results) {
    record('a_hits', name, 'MB_per_s_median', mbps);
    record('a_hits', name, 'cpu_s_per_GiB', cpuPerGiB);
  }
  // A hit through the node may still ask the upstream about the image: its CPU, per GiB the node served.
  if (ctx.node) record('a_hits', 'upstream_during_node_hits', 'cpu_s_per_GiB', (cpuSeconds(ctx.glanceOff) - upstreamCpu) / ((config.reps * config.hitSize) / GiB));
  const node = results.get('node');
  const glance = results.get('glance_cache_on')!;
  const nginx = results.get('nginx')!;
  ratio('a_hits', 'node_over_glance_throughput', node?.mbps, glance.mbps);
  ratio('a_hits', 'node_over_nginx_throughput', node?.mbps, nginx.mbps);
  ratio('a_hits', 'node_over_glance_cpu_per_GiB', node?.cpuPerGiB, glance.cpuPerGiB);
  const fronted = results.get('node_behind_nginx');
  ratio('a_hits', 'node_behind_nginx_over_nginx_throughput', fronted?.mbps, nginx.mbps);
  ratio('a_hits', 'node_behind_nginx_over_glance_cpu_per_GiB', fronted?.cpuPerGiB, glance.cpuPerGiB);
}

// ---------------------------------------------------------------- (b) first download: fills, warm and cold

/**
 * One fill in a process: the first download of an image it does not have.
 * `cold` is the first fill of a fresh process, `warm` its second.
 */
interface Fill {
  bytesPerSecond: number;
  cpuSeconds: number;
}

/** A server restarted for every round of (b), so that its first fill there is cold; `forget` removes what a fill cached. */
interface FillServer extends Server {
  /** The URL of the image's file on it. */
  url: string;
  /** Waits for the cached copy of the fill just done and removes it (`check`: compares it with the image first). */
  forget(check: boolean): Promise<void>;
  stop(): Promise<void>;
}

interface FillSubject {
  name: string;
  start(): Promise<FillServer>;
}

/** The cache node, restarted on its cache directory for every round (as after a reboot), in front of the upstream. */
function nodeFillSubject(ctx: Context, image: Image): FillSubject {
  return {
    name: 'node',
    start: async () => {
      const node = await startNode(ctx.root, 'fill_node', ctx.glanceOff.url, 1);
      return Object.assign(node, {
        url: fileUrl(node, image.id),
        forget: async (check: boolean) => {
          const cached = await cachedFile(node.cacheDir, image.id);
          if (check) record('b_first', 'node', 'cached_file_sha512_ok', String((await sha512OfFile(cached)) === image.sha512));
          fs.rmSync(cached);
        },
      });
    },
  };
}

/** bench/fill-floor.ts: Node doing only what a verified fill must, in front of the upstream; `warmMalloc`: after the node's malloc warm-up. */
function floorFillSubject(ctx: Context, image: Image, warmMalloc: boolean): FillSubject {
  const name = warmMalloc ? 'node_floor_malloc_warm' : 'node_floor';
  const dir = mkdir(ctx.root, name);
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fill-floor.js');
  return {
    name,
    start: async () => {
      const server = spawnServer(name, process.execPath, [script, ctx.glanceOff.url, dir, ...(warmMalloc ? ['--warm-malloc'] : [])], path.join(dir, 'floor.log'));
      server.url = `${await waitForLine(server, /serving on (http:\/\/\S+)/)}/v2/images/${image.id}/file`;
      return Object.assign(server, { forget: async () => fs.rmSync(await cachedFile(dir, image.id)) });
    },
  };
}

/** nginx's proxy_cache in front of the upstream: each fill a MISS (checked), its cache file removed after it. */
function nginxFillSubject(ctx: Context, image: Image): FillSubject {
  const dir = mkdir(ctx.root, 'fill_nginx');
  return {
    name: 'nginx_proxy_cache',
    start: async () => {
      const peer = await startCachingNginx(ctx.glanceOff.url, dir);
      cleanups.push(() => peer.stop());
      return {
        name: 'nginx_proxy_cache',
        url: `${peer.url}/v2/images/${image.id}/file`,
        pids: () => processTree(peer.pid).map((p) => p.pid),
        forget: async () => fs.rmSync(await nginxCacheFile(dir, config.fillSize), { force: true }),
        stop: () => peer.stop(),
      };
    },
  };
}

/** The one cache file nginx keeps under `dir` (levels 1:2, named by the key's MD5), once it is complete and no temporary file is left. */
async function nginxCacheFile(dir: string, size: number): Promise<string> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const files = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((entry) => entry.isFile());
    const done = files.filter((entry) => /^[0-9a-f]{32}$/.test(entry.name));
    if (files.length === 1 && done.length === 1) {
      const file = path.join(done[0]!.parentPath, done[0]!.name);
      if (fs.statSync(file).size > size) return file;
    }
    if (Date.now() > deadline) throw new Error(`nginx's cache file under ${dir} did not appear within ${START_TIMEOUT_MS} ms`);
    await sleep(50);
  }
}

/**
 * (b) The first download of an uncached image (BENCH_FILL_SIZE), by fills
 * (the node, the floor of a verified fill in Node, nginx's proxy_cache; each
 * cold, the first fill of a fresh process, and warm, its second) and by the
 * first downloads that are no fill of ours (Glance's own cache, the upstream
 * directly), all from the same upstream, in rounds that alternate them.
 */
async function partFirst(ctx: Context): Promise<void> {
  progress('(b) first download: uploading');
  const [onImage, offImage] = await Promise.all([upload(ctx.glanceOn, ctx.fillFile, 'first'), upload(ctx.glanceOff, ctx.fillFile, 'first')]);
  const subjects = [nodeFillSubject(ctx, offImage), floorFillSubject(ctx, offImage, false), floorFillSubject(ctx, offImage, true), nginxFillSubject(ctx, offImage)];
  const others: Array<{ name: string; server: Server; url: string; forget: () => Promise<void> }> = [
    { name: 'glance_cache_on', server: ctx.glanceOn, url: fileUrl(ctx.glanceOn, onImage.id), forget: async () => fs.rmSync(await cachedFile(path.join(ctx.glanceOn.root, 'cache'), onImage.id)) },
    { name: 'upstream_direct', server: ctx.glanceOff, url: fileUrl(ctx.glanceOff, offImage.id), forget: async () => {} },
  ];
  const fills = { cold: new Map<string, Fill[]>(), warm: new Map<string, Fill[]>() };
  const measure = async (kind: 'cold' | 'warm', name: string, server: Server, url: string): Promise<void> => {
    // Every contender starts with no dirty pages to flush behind it (a cache write leaves plenty).
    execFileSync('sync');
    const result = await curl(url, config.fillSize, server, name === 'nginx_proxy_cache' ? { 'x-cache-status': 'MISS' } : {});
    (fills[kind].get(name) ?? fills[kind].set(name, []).get(name)!).push(result);
  };
  for (let round = 0; round < config.firstReps; round++) {
    progress(`(b) first download: round ${round + 1} of ${config.firstReps}`);
    // Each round in another order, so that no subject always follows the same one.
    const order = rotate(subjects, round);
    const running: FillServer[] = [];
    try {
      for (const subject of order) {
        const server = await subject.start();
        running.push(server);
        await measure('cold', subject.name, server, server.url);
        await server.forget(round === 0);
      }
      for (const [i, server] of running.entries()) {
        await measure('warm', order[i]!.name, server, server.url);
        await server.forget(false);
      }
    } finally {
      for (const server of running) await server.stop();
    }
    for (const other of rotate(others, round)) {
      await measure('warm', other.name, other.server, other.url);
      await other.forget();
    }
  }
  const figures = (kind: 'cold' | 'warm', name: string): { mbps: number; cpuPerGiB: number } | undefined => {
    const list = fills[kind].get(name);
    if (list === undefined) return undefined;
    return { mbps: median(list.map((f) => f.bytesPerSecond)) / 1e6, cpuPerGiB: median(list.map((f) => f.cpuSeconds)) / (config.fillSize / GiB) };
  };
  for (const kind of ['warm', 'cold'] as const) {
    for (const [name, list] of fills[kind]) {
      const { mbps, cpuPerGiB } = figures(kind, name)!;
      record('b_first', name, `${kind}_MB_per_s_median`, mbps);
      record('b_first', name, `${kind}_MB_per_s_range`, spread(list.map((f) => f.bytesPerSecond / 1e6)));
      record('b_first', name, `${kind}_cpu_s_per_GiB_median`, cpuPerGiB);
      record('b_first', name, `${kind}_cpu_s_per_GiB_range`, spread(list.map((f) => f.cpuSeconds / (config.fillSize / GiB))));
    }
  }
  const warm = (name: string) => figures('warm', name);
  const cold = (name: string) => figures('cold', name);
  const node = warm('node');
  ratio('b_first', 'node_over_direct_throughput', node?.mbps, warm('upstream_direct')?.mbps);
  ratio('b_first', 'node_over_glance_first_throughput', node?.mbps, warm('glance_cache_on')?.mbps);
  // Item 7's targets: a cold fill near a warm one, a warm one at Node's floor.
  ratio('b_first', 'node_cold_over_node_warm_throughput', cold('node')?.mbps, node?.mbps);
  for (const floor of ['node_floor', 'node_floor_malloc_warm']) {
    ratio('b_first', `node_warm_over_${floor}_warm_throughput`, node?.mbps, warm(floor)?.mbps);
    ratio('b_first', `node_warm_over_${floor}_warm_cpu_per_GiB`, node?.cpuPerGiB, warm(floor)?.cpuPerGiB);
  }
  // What a verified, cached first download cannot avoid on this machine: hashing the image and
  // writing it to the cache's file system (each on one core; the node does them on two threads).
  execFileSync('sync');
  const hashRate = await timed(() => sha512OfFile(ctx.fillFile), config.fillSize);
  const writeRate = await timed(() => writeCopy(ctx.fillFile, path.join(ctx.root, 'write-floor.img')), config.fillSize);
  record('b_first', 'floor', 'sha512_MB_per_s', hashRate / 1e6);
  record('b_first', 'floor', 'cache_write_MB_per_s', writeRate / 1e6);
  ratio('b_first', 'node_over_sha512_floor_throughput', node?.mbps === undefined ? undefined : node.mbps * 1e6, hashRate);
  fillTable([...subjects.map((s) => s.name), ...others.map((o) => o.name)], warm, cold);
}

type FillFigures = (name: string) => { mbps: number; cpuPerGiB: number } | undefined;

/** The table of (b): each subject warm and cold, its ratios to the floor of Node and to nginx, and item 7's targets met or missed. */
function fillTable(names: string[], warm: FillFigures, cold: FillFigures): void {
  const floor = warm('node_floor');
  const nginx = warm('nginx_proxy_cache');
  const cell = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : String(round(x)));
  const rows = names.map((name) => {
    const w = warm(name);
    const c = cold(name);
    return [
      name,
      cell(w?.mbps), cell(w?.cpuPerGiB), cell(c?.mbps), cell(c?.cpuPerGiB),
      cell(quotient(w?.mbps, floor?.mbps)), cell(quotient(w?.cpuPerGiB, floor?.cpuPerGiB)),
      cell(quotient(c?.mbps, floor?.mbps)), cell(quotient(c?.cpuPerGiB, floor?.cpuPerGiB)),
      cell(quotient(w?.mbps, nginx?.mbps)), cell(quotient(c?.mbps, nginx?.mbps)),
      cell(quotient(c?.mbps, w?.mbps)),
    ];
  });
  table(
    `(b) first download of a ${config.fillSize / MiB} MiB image, medians of ${config.firstReps} alternated rounds; cold: the first fill of a fresh process, warm: its second; ÷floor, ÷nginx: over node_floor's and nginx_proxy_cache's warm figure`,
    ['subject', 'warm MB/s', 'warm CPU-s/GiB', 'cold MB/s', 'cold CPU-s/GiB', 'warm MB/s ÷floor', 'warm CPU ÷floor', 'cold MB/s ÷floor', 'cold CPU ÷floor', 'warm MB/s ÷nginx', 'cold MB/s ÷nginx', 'cold ÷ warm MB/s'],
    rows,
    [
      'node_floor: bench/fill-floor.ts, Node doing only what a verified fill must (upstream read, sha512 inline, file write, fsync, send);',
      'nginx_proxy_cache: a MISS, no hash, no fsync (C). glance_cache_on and upstream_direct are first downloads in processes that keep running (warm only).',
      'node_floor_malloc_warm: the same after the malloc warm-up the node does at its start (src/server/warm-up.ts).',
      'targets (issue 14, item 7):',
      target('node cold ÷ warm MB/s', quotient(cold('node')?.mbps, warm('node')?.mbps), '>=', 0.8),
      ...['node_floor', 'node_floor_malloc_warm'].flatMap((name) => [
        target(`node warm MB/s ÷ ${name}'s`, quotient(warm('node')?.mbps, warm(name)?.mbps), '>=', 1),
        target(`node warm CPU-s/GiB ÷ ${name}'s`, quotient(warm('node')?.cpuPerGiB, warm(name)?.cpuPerGiB), '<=', 1.1),
      ]),
    ],
  );
}

/** One line of the targets: the figure, the bound, met or missed. */
function target(what: string, value: number | null, relation: '>=' | '<=', bound: number): string {
  const verdict = value === null ? 'not measured' : (relation === '>=' ? value >= bound : value <= bound) ? 'met' : 'MISSED';
  return `  ${what} = ${value === null ? '-' : round(value)} (${relation} ${bound}: ${verdict})`;
}

/** `items` turned left `by` places. */
function rotate<T>(items: T[], by: number): T[] {
  const n = by % items.length;
  return [...items.slice(n), ...items.slice(0, n)];
}

/** "min-max" of a list of figures. */
function spread(values: number[]): string {
  return `${round(Math.min(...values))}-${round(Math.max(...values))}`;
}

/** Bytes per second of `fn` over `bytes`. */
async function timed(fn: () => Promise<unknown>, bytes: number): Promise<number> {
  const started = performance.now();
  await fn();
  return bytes / ((performance.now() - started) / 1000);
}

/** Copies a file by reading it and writing it (as a cache fill writes), then removes the copy. */
async function writeCopy(from: string, to: string): Promise<void> {
  const out = fs.openSync(to, 'w');
  try {
    for await (const chunk of fs.createReadStream(from, { highWaterMark: MiB })) fs.writeSync(out, chunk as Buffer);
  } finally {
    fs.closeSync(out);
    fs.rmSync(to, { force: true });
  }
}

// ---------------------------------------------------------------- (c, d) herds

interface HerdResult {
  seconds: number;
  ok: number;
  failures: string[];
}

/**
 * `n` concurrent first requests for one image (the file `image`), every body
 * compared with it; with `idle`, one more client, sent first, that reads
 * nothing for that long (not counted in the wall time, but waited for and checked).
 */
async function herd(url: string, n: number, image: string, idleMs?: number): Promise<HerdResult & { idle?: string }> {
  const check = (body: ClientResult): string => {
    if ('error' in body) return body.error;
    if (body.status !== 200) return `status ${body.status}`;
    return body.identical ? 'ok' : `body differs from the image (${body.bytes} bytes)`;
  };
  const stalled = idleMs === undefined ? undefined : download(url, fs.readFileSync(image), idleMs).then(check, (err: Error) => err.message);
  const { seconds, results } = await runClients(url, n, image);
  const failures = results.map(check).filter((r) => r !== 'ok');
  return { seconds, ok: n - failures.length, failures, ...(stalled ? { idle: await stalled } : {}) };
}

function recordHerd(part: string, subject: string, result: HerdResult & { idle?: string }, n: number): void {
  record(part, subject, 'seconds', result.seconds);
  record(part, subject, 'bodies_identical', `${result.ok}/${n}`);
  if (result.failures.length > 0) record(part, subject, 'first_failure', result.failures[0]!);
  if (result.idle !== undefined) record(part, subject, 'idle_client', result.idle);
}

/** A node herd with its stalled client, the node's peak RSS sampled throughout. */
async function nodeHerd(part: string, subject: string, node: Server, id: string, n: number, image: string): Promise<HerdResult> {
  record(part, subject, 'rss_before_MiB', rssBytes(node) / MiB);
  const peak = rssPeak(node);
  const result = await herd(fileUrl(node, id), n, image, config.idleSeconds * 1000);
  record(part, subject, 'peak_rss_MiB', peak() / MiB);
  recordHerd(part, subject, result, n);
  return result;
}

/** Herds on Glance (cache off) through the node and on Glance's own cache, with the reads each caused of the image. */
async function partHerd(ctx: Context, n: number): Promise<void> {
  const part = `c_herd_${n}`;
  progress(`(c) herd of ${n}: uploading`);
  const [onImage, offImage] = await Promise.all([upload(ctx.glanceOn, ctx.herdFile, part), upload(ctx.glanceOff, ctx.herdFile, part)]);
  let nodeSeconds: number | undefined;
  if (ctx.node) {
    execFileSync('sync');
    const before = bytesRead(ctx.glanceOff);
    nodeSeconds = (await nodeHerd(part, 'node', ctx.node, offImage.id, n, ctx.herdFile)).seconds;
    record(part, 'node', 'upstream_reads_rchar', (bytesRead(ctx.glanceOff) - before) / config.herdSize);
    record(part, 'node', 'upstream_file_GETs_logged', countFileGets(ctx.glanceOff, offImage.id));
  }
  execFileSync('sync');
  const before = bytesRead(ctx.glanceOn);
  const glance = await herd(fileUrl(ctx.glanceOn, onImage.id), n, ctx.herdFile);
  recordHerd(part, 'glance_cache_on', glance, n);
  // Its store and its cache file alike: any read of the image by its processes.
  record(part, 'glance_cache_on', 'image_reads_rchar', (bytesRead(ctx.glanceOn) - before) / config.herdSize);
  ratio(part, 'node_over_glance_seconds', nodeSeconds, glance.seconds);
  const floor = await staticHerd(ctx, part, n);
  ratio(part, 'node_over_nginx_seconds', nodeSeconds, floor);
}

/**
 * The same herd on nginx serving the file from disk: the floor of this
 * machine, where the clients' own work (receiving and hashing every body,
 * on the cores the server runs on) may be most of the time.
 */
async function staticHerd(ctx: Context, part: string, n: number): Promise<number> {
  const result = await herd(staticUrl(ctx, ctx.herdFile), n, ctx.herdFile);
  recordHerd(part, 'nginx_static', result, n);
  return result.seconds;
}

const staticUrl = (ctx: Context, file: string): string => `${ctx.nginx.url}/${path.basename(file)}`;

/** Access lines of file downloads of `id` in a Glance's log (eventlet writes one per request served). */
function countFileGets(glance: GlancePeer, id: string): number {
  const needle = `"GET /v2/images/${id}/file `;
  return fs.readFileSync(glance.log, 'utf8').split('\n').filter((line) => line.includes(needle)).length;
}

/** The fake upstream at a fixed bandwidth: FAKE_HERD clients straight from it, then through a node of 1 and of 2 workers. */
async function partFakeUpstream(ctx: Context): Promise<void> {
  const part = 'c_limited_upstream';
  progress(`(c) herd of ${FAKE_HERD} on an upstream limited to ${config.upstreamBytesPerSecond} B/s`);
  const fake = await startFake(config.upstreamBytesPerSecond);
  const direct = await fake.addImage({ data: { file: ctx.herdFile } });
  const directResult = await herd(`${fake.url}/v2/images/${direct.id}/file`, FAKE_HERD, ctx.herdFile);
  recordHerd(part, 'direct', directResult, FAKE_HERD);
  record(part, 'direct', 'upstream_file_requests', fake.fileRequests(direct.id));
  // The best ratio a node can reach here: its upstream fetch taking no time at all.
  ratio(part, 'nginx_static_over_direct_seconds', await staticHerd(ctx, part, FAKE_HERD), directResult.seconds);
  for (const workers of [1, 2]) {
    const subject = `node_workers_${workers}`;
    const node = await optionalNode(ctx.root, subject, fake.url, workers);
    if (node === undefined) {
      ratio(part, `${subject}_over_direct_seconds`, undefined, directResult.seconds);
      continue;
    }
    const image = await fake.addImage({ data: { file: ctx.herdFile } });
    const result = await nodeHerd(part, subject, node, image.id, FAKE_HERD, ctx.herdFile);
    record(part, subject, 'upstream_file_requests', fake.fileRequests(image.id));
    ratio(part, `${subject}_over_direct_seconds`, result.seconds, directResult.seconds);
    await node.stop();
  }
}

// ---------------------------------------------------------------- (e) a queued image downloaded meanwhile

/** PUT /v2/cache/{id} on the node, and at once 10 clients download the image: the upstream must serve it once. */
async function partPrefetch(ctx: Context): Promise<void> {
  if (!ctx.node) return;
  const part = 'e_prefetch';
  progress('(e) a queued image downloaded by 10 clients meanwhile: uploading');
  const image = await upload(ctx.glanceOff, ctx.hitFile, part);
  execFileSync('sync');
  const queued = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'PUT', '-H', 'X-Auth-Token: x', `${ctx.node.url}/v2/cache/${image.id}`]);
  record(part, 'node', 'queue_status', queued.trim());
  const result = await herd(fileUrl(ctx.node, image.id), FAKE_HERD, ctx.hitFile);
  recordHerd(part, 'node', result, FAKE_HERD);
  record(part, 'node', 'upstream_file_GETs_logged', countFileGets(ctx.glanceOff, image.id));
}

// ---------------------------------------------------------------- main

interface Context {
  root: string;
  /** The images of parts a and e, c, and b; each written only if a part that reads it runs. */
  hitFile: string;
  herdFile: string;
  fillFile: string;
  glanceOn: GlancePeer & Server;
  glanceOff: GlancePeer & Server;
  nginx: Server;
  node: NodeServer | undefined;
  frontedNode: Server | undefined;
}

/** A node, or undefined (with the reason recorded) when it cannot run yet: the peers are measured all the same. */
async function optionalNode(root: string, name: string, upstreamUrl: string, workers: number): Promise<NodeServer | undefined> {
  try {
    return await startNode(root, name, upstreamUrl, workers);
  } catch (err) {
    record('nodes', name, 'error', (err as Error).message.split('\n').slice(0, 6).join(' | '));
    return undefined;
  }
}

async function setUp(): Promise<Context> {
  if (!glanceAvailable()) throw new Error("Debian's glance-api and glance-manage are not on PATH (apt-get install glance-api python3-glanceclient)");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-bench-http-'));
  cleanups.push(() => fs.rmSync(root, { recursive: true, force: true }));
  const data = mkdir(root, 'data');
  const hitFile = path.join(data, 'hit.img');
  const herdFile = path.join(data, 'herd.img');
  const fillFile = path.join(data, 'fill.img');
  progress('writing the images and starting the peers');
  const images: Array<[string, number, string[]]> = [[hitFile, config.hitSize, ['a_hits', 'e_prefetch']], [herdFile, config.herdSize, [...HERD_PARTS, 'c_limited_upstream']], [fillFile, config.fillSize, ['b_first']]];
  await Promise.all(images.filter(([, , parts]) => parts.some(selected)).map(([file, size]) => randomFile(file, size)));
  const [glanceOn, glanceOff, nginx] = await Promise.all([
    startGlancePeer('glance_cache_on', 'on'),
    startGlancePeer('upstream_glance_cache_off', 'off'),
    startNginx(data),
  ]);
  // The long-running node and its nginx front: for (a), (c) and (e); (b) starts its own.
  const node = ['a_hits', ...HERD_PARTS, 'e_prefetch'].some(selected) ? await optionalNode(root, 'node', glanceOff.url, 1) : undefined;
  let frontedNode: Server | undefined;
  try {
    if (selected('a_hits')) frontedNode = await startFrontedNode(root, glanceOff.url);
  } catch (err) {
    record('nodes', 'node_behind_nginx', 'error', (err as Error).message.split('\n').slice(0, 6).join(' | '));
  }
  return { root, hitFile, herdFile, fillFile, glanceOn, glanceOff, nginx, node, frontedNode };
}

async function main(): Promise<void> {
  try {
    const ctx = await setUp();
    const parts: Array<[string, () => Promise<void>]> = [
      ['a_hits', () => partHits(ctx)],
      ['b_first', () => partFirst(ctx)],
      ...HERD_SIZES.map((n, i): [string, () => Promise<void>] => [HERD_PARTS[i]!, () => partHerd(ctx, n)]),
      ['c_limited_upstream', () => partFakeUpstream(ctx)],
      ['e_prefetch', () => partPrefetch(ctx)],
    ];
    for (const [name, fn] of parts) if (selected(name)) await attempt(name, fn);
  } finally {
    await cleanup();
    printReport();
  }
}

/** Whether BENCH_PARTS selects the part `name` (or the parts whose names start so). */
function selected(name: string): boolean {
  return config.parts.some((prefix) => name.startsWith(prefix));
}

/** Runs one part; a failure is recorded (and fails the run) without keeping the other parts from running. */
async function attempt(part: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    record(part, 'part', 'error', (err as Error).message.split('\n').slice(0, 6).join(' | '));
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------- helpers

function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${command} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

function mkdir(parent: string, name: string): string {
  const dir = path.join(parent, name);
  fs.mkdirSync(dir);
  return dir;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}


main().catch((err: Error) => {
  progress(`failed: ${err.stack ?? err.message}`);
  process.exitCode = 1;
});
