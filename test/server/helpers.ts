/**
 * Helpers for the node's tests: a node started in this process in front of a
 * fake (or real) upstream, on a real socket, and a client that reads whole
 * responses or notices when one is cut short.
 */
import { createHash } from 'node:crypto';
import type { TestContext } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createLogger, silentLogger } from '../../src/log.js';
import { SERVE_DEFAULTS, type ServeConfig, type ServerOptions } from '../../src/server/config.js';
import { startNode, type RunningNode } from '../../src/server/node.js';
import type { ImageCacheOptions } from '../../src/config.js';
import { makeTempDir, removeDir } from '../helpers.js';
import { startFakeGlance, type FakeGlance, type FakeGlanceOptions } from '../support/fake-glance.js';

export interface NodeUnderTest {
  node: RunningNode;
  url: string;
  dir: string;
}

/**
 * A node in this process on an ephemeral port with its own cache directory, closed (and the
 * directory removed) after the test; quiet unless IMAGE_CACHE_TEST_NODE_LOG is set (then it logs at
 * IMAGE_CACHE_LOG_LEVEL). `engine.pruneAfterCommit` false: the node prunes only when asked (for
 * tests that fill past the limit on purpose).
 */
export async function startTestNode(t: TestContext, server: Partial<ServerOptions>, cache: Partial<ImageCacheOptions> = {}, engine: { pruneAfterCommit?: boolean } = {}): Promise<NodeUnderTest> {
  const dir = makeTempDir('image-cache-node-');
  const config: ServeConfig = {
    cache: { imageCacheDir: `${dir}/cache`, ...cache },
    server: { ...SERVE_DEFAULTS, filesystemStoreDatadir: `${dir}/images`, bindPort: 0, upstreamUrl: undefined, ...server },
  };
  const node = await startNode(config, { log: process.env.IMAGE_CACHE_TEST_NODE_LOG ? createLogger() : silentLogger, ...engine });
  t.after(async () => {
    await node.close();
    removeDir(dir);
  });
  return { node, url: node.url, dir };
}

/** A fake Glance and a test node in front of it (its upstream_url), both stopped after the test. */
export async function startFakeGlanceAndNode(
  t: TestContext,
  options: { fake?: FakeGlanceOptions; server?: Partial<ServerOptions>; cache?: Partial<ImageCacheOptions>; engine?: { pruneAfterCommit?: boolean } } = {},
): Promise<{ fake: FakeGlance } & NodeUnderTest> {
  const fake = await startFakeGlance(options.fake);
  t.after(() => fake.close());
  return { fake, ...(await startTestNode(t, { upstreamUrl: fake.url, ...options.server }, options.cache, options.engine)) };
}

/** The image data path of a node (or Glance) at `url`. */
/** The explanation of one of the node's JSON error answers (webob's {"message"} carries its page's `<br /><br />` and blank detail after it). */
export function errorMessage(body: Buffer): string {
  return (JSON.parse(body.toString()) as { message: string }).message.replace(/(<br \/>)*\s*$/, '');
}

export const fileUrl = (url: string, id: string): string => `${url}/v2/images/${id}/file`;

export interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  /** A body, whole or streamed. */
  body?: Buffer | string | Readable;
  signal?: AbortSignal;
}

/**
 * A request on a connection of its own (so that the requests of a test are
 * spread over a cluster's workers as separate clients would be); resolves
 * with the response once its headers are in.
 */
export function send(url: string, options: RequestOptions = {}): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: options.method ?? 'GET', headers: options.headers, agent: false, signal: options.signal });
    req.once('response', resolve);
    req.once('error', reject);
    const body = options.body;
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
    else pipeline(body, req).catch(reject);
  });
}

/** A whole response. Rejects when the body is cut short (a reset, or fewer bytes than its Content-Length). */
export async function fetchAll(url: string, options: RequestOptions = {}): Promise<Fetched> {
  const response = await send(url, options);
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  // Node's client ends a body that stopped short of its Content-Length with 'aborted'; say so.
  if (!response.complete) throw new Error(`the response to ${url} ended before its last byte`);
  return { status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) };
}

/** The outcome of a download that may fail: the body, or the error that cut it. */
export async function download(url: string, headers: Record<string, string> = {}): Promise<{ ok: true; response: Fetched } | { ok: false; error: Error }> {
  try {
    return { ok: true, response: await fetchAll(url, { headers }) };
  } catch (error) {
    return { ok: false, error: error as Error };
  }
}

export function sha512(data: Buffer): string {
  return createHash('sha512').update(data).digest('hex');
}

/**
 * Resolves once `condition` holds, checking after each turn of the event
 * loop's timers; fails after `timeoutMs`. For state another process or
 * socket changes (a counter of the node's), where no event tells us.
 */
export async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The value of a counter or gauge in the node's Prometheus text. */
export async function metric(url: string, name: string): Promise<number> {
  const text = (await fetchAll(`${url}/metrics`)).body.toString();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** The built `image-cache` command. */
export const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');
/** The environment for the command, without the settings this machine's environment may hold. */
export const CLEAN_ENV = { ...process.env, IMAGE_CACHE_DIR: '', IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: '', IMAGE_CACHE_LOG_LEVEL: 'warn' };

/** Starts `image-cache serve ARGS`, resolves with its URL once it says it is serving; stopped (SIGTERM) after the test. */
export async function startServe(t: TestContext, args: string[], cwd: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [CLI, 'serve', ...args], { cwd, env: CLEAN_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });
  let stdout = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /serving on (http:\/\/\S+)/.exec(stdout);
      if (match) resolve(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`serve exited with ${code} before serving: ${stderr}`)));
  });
  return { url, child };
}
