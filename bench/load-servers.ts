/**
 * The servers of bench/load.ts, each a child process in a process group of
 * its own (so that a node's workers go with it): the fake upstream, and the
 * cache node from the build this script belongs to. Plus what the bench
 * reads of them from /proc: resident memory and CPU time, summed over the group.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { processGroup, request, signalGroup, sleep } from '../test/support/processes.js';
import type { UpstreamStats } from './load-upstream.js';
import { CLK_TCK, procStat, readProc } from './proc.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
const here = path.dirname(fileURLToPath(import.meta.url));

export interface Server {
  url: string;
  /** Its process group (the id of the process spawned). */
  pgid: number;
  stop(): Promise<void>;
}

export interface Upstream extends Server {
  stats(): Promise<UpstreamStats>;
}

export interface CacheNode extends Server {
  log: string;
  /** The node's Prometheus counters (all workers added up), by metric name and labels as written. */
  metrics(): Promise<Map<string, number>>;
}

/** Groups not stopped yet: killed if this process exits first. */
const running = new Set<number>();
process.on('exit', () => {
  for (const pgid of running) signalGroup(pgid, 'SIGKILL');
});

/** SIGTERM to the group, SIGKILL to whatever is left of it after a while. */
async function stopGroup(pgid: number): Promise<void> {
  signalGroup(pgid, 'SIGTERM');
  for (const signal of ['SIGKILL', undefined] as const) {
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (processGroup(pgid).length > 0 && Date.now() < deadline) await sleep(50);
    if (signal !== undefined && processGroup(pgid).length > 0) signalGroup(pgid, signal);
  }
  running.delete(pgid);
}

/** The fake Glance of load-upstream.ts, forked with an IPC channel; resolves once it listens. */
export async function startUpstream(): Promise<Upstream> {
  const child = fork(path.join(here, 'load-upstream.js'), [], { detached: true, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  running.add(child.pid!);
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the fake upstream did not listen within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    child.once('exit', (code) => reject(new Error(`the fake upstream exited (code ${code}) before it listened`)));
    child.once('message', (message: { url: string }) => {
      clearTimeout(timer);
      resolve(message.url);
    });
  });
  child.removeAllListeners('exit');
  return {
    url,
    pgid: child.pid!,
    stats: () =>
      new Promise((resolve, reject) => {
        if (!child.connected) return reject(new Error('the fake upstream has exited'));
        const timer = setTimeout(() => reject(new Error('the fake upstream did not answer for its counts')), STOP_TIMEOUT_MS);
        child.once('message', (message: { stats: UpstreamStats }) => {
          clearTimeout(timer);
          resolve(message.stats);
        });
        child.send('stats');
      }),
    stop: async () => {
      if (child.connected) child.disconnect();
      await stopGroup(child.pid!);
    },
  };
}

/** `image-cache serve` of this build in `dir` (its config, cache and log there), in front of `upstreamUrl`. */
export async function startNode(dir: string, upstreamUrl: string, workers: number, maxSize: number): Promise<CacheNode> {
  const conf = path.join(dir, 'node.conf');
  const log = path.join(dir, 'node.log');
  fs.writeFileSync(conf, `[DEFAULT]
bind_host = 127.0.0.1
bind_port = 0
auth_strategy = noauth
image_cache_dir = ${path.join(dir, 'cache')}
image_cache_driver = sqlite
image_cache_max_size = ${maxSize}
upstream_url = ${upstreamUrl}
workers = ${workers}
`);
  const logFd = fs.openSync(log, 'a');
  const child = spawn(process.execPath, [path.join(here, '../src/cli/main.js'), 'serve', '--config-file', conf], { detached: true, stdio: ['ignore', 'pipe', logFd] });
  fs.closeSync(logFd);
  running.add(child.pid!);
  let url: string;
  try {
    url = await servingUrl(child, log);
  } catch (err) {
    await stopGroup(child.pid!);
    throw err;
  }
  return {
    url,
    pgid: child.pid!,
    log,
    stop: () => stopGroup(child.pid!),
    metrics: async () => parseMetrics((await request(`${url}/metrics`, 'GET', {})).body),
  };
}

/** The URL of the node's `serving on URL` line; rejects if it exits first or takes too long. */
function servingUrl(child: ChildProcess, log: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const tail = (): string => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trimEnd().split('\n').slice(-20).join('\n') : '');
    const timer = setTimeout(() => reject(new Error(`the node did not start within ${START_TIMEOUT_MS} ms; ${log}:\n${tail()}`)), START_TIMEOUT_MS);
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /serving on (http:\/\/\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the node exited (${signal ?? `code ${code}`}) before it served; ${log}:\n${tail()}`));
    });
  });
}

/** `name{labels} value` lines of the Prometheus text format (comments skipped). */
function parseMetrics(text: string): Map<string, number> {
  const metrics = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([^#\s][^\s]*)\s+(\S+)$/.exec(line.trim());
    if (match) metrics.set(match[1]!, Number(match[2]));
  }
  return metrics;
}

/** Resident memory of a process group: VmRSS summed over its live processes, in bytes. */
export function groupRss(pgid: number): number {
  let kib = 0;
  for (const pid of processGroup(pgid)) kib += Number(/^VmRSS:\s*(\d+)/m.exec(readProc(pid, 'status') ?? '')?.[1] ?? 0);
  return kib * 1024;
}

/** CPU seconds (user + system) used so far by the live processes of a group. */
export function groupCpuSeconds(pgid: number): number {
  let ticks = 0;
  for (const pid of processGroup(pgid)) ticks += procStat(pid)?.ticks ?? 0;
  return ticks / CLK_TCK;
}

/** Samples a group's RSS every `everyMs` until the function returned is called: it gives the peak and the last sample. */
export function sampleRss(pgid: number, everyMs: number): () => { peak: number; last: number; samples: number } {
  let peak = groupRss(pgid);
  let last = peak;
  let samples = 1;
  const timer = setInterval(() => {
    last = groupRss(pgid);
    peak = Math.max(peak, last);
    samples++;
  }, everyMs);
  return () => {
    clearInterval(timer);
    last = groupRss(pgid);
    return { peak: Math.max(peak, last), last, samples: samples + 1 };
  };
}
