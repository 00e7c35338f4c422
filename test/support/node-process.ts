/**
 * `image-cache serve` of this build as a process of its own: what the
 * cluster's tests and the benches start when the nodes must be separate
 * processes (one killed with SIGKILL, each with its own event loop, memory
 * and CPU to measure). Each runs in a process group of its own, so that a
 * node's workers go with it, from a config file written in its directory
 * (its cache and its log there too).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { processGroup, request, signalGroup, sleep } from './processes.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** Options of the node's [DEFAULT] section, by their names in the config file. */
export type NodeSettings = Record<string, string | number | boolean | undefined>;

export interface NodeProcess {
  url: string;
  /** Its process group (the id of the process spawned). */
  pgid: number;
  /** Its directory: node.conf, node.log, cache/. */
  dir: string;
  cacheDir: string;
  /** The node's stderr (its structured log). */
  log: string;
  /** SIGTERM, then SIGKILL to whatever is left after a while; resolves once the group is gone. */
  stop(): Promise<void>;
  /** SIGKILL to the whole group at once (a crash); resolves once the group is gone. */
  kill(): Promise<void>;
  /** The node's Prometheus samples, by metric name and labels as written. */
  metrics(): Promise<Map<string, number>>;
  /** The log's lines parsed (JSON), those that parse. */
  logLines(): Record<string, unknown>[];
}

/** Groups not stopped yet: killed if this process exits first. */
const running = new Set<number>();
process.on('exit', () => {
  for (const pgid of running) signalGroup(pgid, 'SIGKILL');
});

/** A process group of the caller's to kill should this process exit before stopGroup() ends it. */
export function killOnExit(pgid: number): void {
  running.add(pgid);
}

async function groupGone(pgid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (processGroup(pgid).length > 0) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** SIGTERM to the group, SIGKILL to whatever is left of it after a while. */
export async function stopGroup(pgid: number): Promise<void> {
  signalGroup(pgid, 'SIGTERM');
  if (!(await groupGone(pgid, STOP_TIMEOUT_MS))) {
    signalGroup(pgid, 'SIGKILL');
    await groupGone(pgid, STOP_TIMEOUT_MS);
  }
  running.delete(pgid);
}

function configText(settings: NodeSettings): string {
  const lines = Object.entries(settings)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name} = ${String(value)}`);
  return `[DEFAULT]\n${lines.join('\n')}\n`;
}

/**
 * Starts `image-cache serve` in `dir` with `settings` (bind_host 127.0.0.1,
 * bind_port 0, auth_strategy noauth and image_cache_dir dir/cache unless
 * given); resolves once it says where it serves.
 */
export async function startNodeProcess(dir: string, settings: NodeSettings, extraEnv: Record<string, string> = {}): Promise<NodeProcess> {
  fs.mkdirSync(dir, { recursive: true });
  const cacheDir = typeof settings.image_cache_dir === 'string' ? settings.image_cache_dir : path.join(dir, 'cache');
  const conf = path.join(dir, 'node.conf');
  const log = path.join(dir, 'node.log');
  fs.writeFileSync(conf, configText({ bind_host: '127.0.0.1', bind_port: 0, auth_strategy: 'noauth', image_cache_dir: cacheDir, ...settings }));
  const logFd = fs.openSync(log, 'a');
  const env = { ...process.env, IMAGE_CACHE_DIR: '', IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: '', ...extraEnv };
  const child = spawn(process.execPath, [CLI, 'serve', '--config-file', conf], { detached: true, env, stdio: ['ignore', 'pipe', logFd] });
  fs.closeSync(logFd);
  running.add(child.pid!);
  let url: string;
  try {
    url = await servingUrl(child, log);
  } catch (err) {
    await stopGroup(child.pid!);
    throw err;
  }
  const pgid = child.pid!;
  return {
    url,
    pgid,
    dir,
    cacheDir,
    log,
    stop: () => stopGroup(pgid),
    kill: async () => {
      signalGroup(pgid, 'SIGKILL');
      await groupGone(pgid, STOP_TIMEOUT_MS);
      running.delete(pgid);
    },
    metrics: async () => parseMetrics((await request(`${url}/metrics`, 'GET', {})).body),
    logLines: () => parseLog(log),
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
        child.removeAllListeners('exit');
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
export function parseMetrics(text: string): Map<string, number> {
  const metrics = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([^#\s][^\s]*)\s+(\S+)$/.exec(line.trim());
    if (match) metrics.set(match[1]!, Number(match[2]));
  }
  return metrics;
}

function parseLog(log: string): Record<string, unknown>[] {
  if (!fs.existsSync(log)) return [];
  const lines: Record<string, unknown>[] = [];
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line cut by a kill
    }
  }
  return lines;
}
