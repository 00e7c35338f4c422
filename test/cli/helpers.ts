/**
 * The image-cache command as a real child process, for the CLI's tests.
 * Asynchronous, so that a node started in the test's own process can answer
 * the command while it runs.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeDir } from '../helpers.js';

export const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** This machine's IMAGE_CACHE_* settings and token, blanked: a test sets what it means to. */
const BLANKED: Record<string, string> = {
  ...Object.fromEntries(Object.keys(process.env).filter((name) => name.startsWith('IMAGE_CACHE_')).map((name) => [name, ''])),
  OS_AUTH_TOKEN: '',
};

/** Runs the command to its end. */
export async function runCli(args: string[], { env = {}, cwd }: { env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, ...BLANKED, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const [status] = (await once(child, 'close')) as [number | null];
  return { status, stdout, stderr };
}

/** Runs the command and checks it succeeded; its stdout. */
export async function ok(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Promise<string> {
  const result = await runCli(args, options);
  if (result.status !== 0) throw new Error(`image-cache ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

/** A temporary directory removed after the test. */
export function tempDir(t: TestContext, prefix = 'image-cache-cli-'): string {
  const dir = makeTempDir(prefix);
  t.after(() => removeDir(dir));
  return dir;
}

/** Files named by image ID, as the local image store (and glance-cache-prefetcher's source) holds them. */
export function writeStore(store: string, images: Record<string, Buffer | string>): void {
  fs.mkdirSync(store, { recursive: true });
  for (const [id, data] of Object.entries(images)) fs.writeFileSync(path.join(store, id), data);
}

/** Caches the images in `cacheDir` the way an operator would: queue-image, then prefetch --local from a store. */
export async function seedCache(cacheDir: string, store: string, images: Record<string, Buffer | string>, extra: string[] = []): Promise<void> {
  writeStore(store, images);
  await ok(['queue-image', ...Object.keys(images), '--local', '--image-cache-dir', cacheDir, ...extra]);
  await ok(['prefetch', '--local', '--filesystem-store-datadir', store, '--image-cache-dir', cacheDir, ...extra]);
}

/** ISO-8601 UTC to the second, as the tables print times. */
export const ISO_TIME = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/;
