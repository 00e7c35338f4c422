/**
 * The servers of bench/load.ts, each a child process in a process group of
 * its own (so that a node's workers go with it): the fake upstream, and the
 * cache node from the build this script belongs to. Plus what the bench
 * reads of them from /proc: resident memory and CPU time, summed over the group.
 */
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { killOnExit, startNodeProcess, stopGroup, type NodeProcess } from '../test/support/node-process.js';
import { processGroup } from '../test/support/processes.js';
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

export type CacheNode = NodeProcess;

/** The fake Glance of load-upstream.ts, forked with an IPC channel; resolves once it listens. */
export async function startUpstream(): Promise<Upstream> {
  const child = fork(path.join(here, 'load-upstream.js'), [], { detached: true, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  killOnExit(child.pid!);
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
  return startNodeProcess(dir, { image_cache_driver: 'sqlite', image_cache_max_size: maxSize, upstream_url: upstreamUrl, workers });
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
