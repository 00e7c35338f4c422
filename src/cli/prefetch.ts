/**
 * `prefetch`, Glance's glance-cache-prefetcher: every queued image cached.
 * --local copies each from the local image store (filesystem_store_datadir,
 * files named by image ID), as the prefetcher reads Glance's store. --url
 * asks the node: PUT /v2/cache/{id} for each queued image (the node fetches
 * queued images itself, from its upstream, and a PUT of one it is already
 * fetching changes nothing), then follows GET /v2/cache until each has left
 * the queue, so that the command ends when the work is done, as the local
 * one does.
 */
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Option, type Command } from 'commander';
import type { ImageCache } from '../cache/image-cache.js';
import { RemoteError, UsageError } from '../errors.js';
import { action, subcommand } from './command.js';
import { count, formatSize, print, printJson } from './format.js';
import { OPTIONS } from '../config/schema.js';
import { flagOf, loadStoreDir, withCache } from './options.js';
import { startProgress } from './progress.js';
import type { CacheApi } from './remote.js';
import { addTargetOptions, resolveTarget, TARGET_SYNOPSIS } from './target.js';

/** What became of each queued image. `failed`: some image was not cached for a reason other than someone else caching it. */
interface PrefetchReport {
  total: number;
  cached: string[];
  notCached: Record<string, string>;
  failed: boolean;
}

const DEFAULT_TIMEOUT_SECONDS = 3600;
/** How often a node's queue is looked at while it fetches. */
const POLL_MS = 200;

export function addPrefetchCommand(program: Command): void {
  const cmd = subcommand(
    program,
    'prefetch',
    `${TARGET_SYNOPSIS} [--filesystem-store-datadir DIR] [--timeout SECONDS] [--json]`,
    'caches every queued image: --local from the local image store; --url by asking the node (PUT /v2/cache/{id}) and waiting for it',
  );
  addTargetOptions(cmd)
    .addOption(new Option(...flagOf(OPTIONS.filesystemStoreDatadir)).conflicts('url'))
    .addOption(new Option('--timeout <SECONDS>', `--url: how long to wait for the node (default ${DEFAULT_TIMEOUT_SECONDS})`).conflicts('local'))
    .option('--json', 'prints {"cached_images": [...], "not_cached_images": {id: reason}}')
    .addHelpText('after', `
With --local: copies each queued image from the local image store (files named by image ID), as
glance-cache-prefetcher reads Glance's store; an image missing there stays queued (exit 1).
With --url: the node fetches queued images itself, from its own source. This sends PUT /v2/cache/{id}
for each queued image (nothing new for one the node is already fetching), then follows GET /v2/cache
until each has left the queue, for at most --timeout seconds (exit 1 if one is not cached by then).`);
  action(cmd, async (_args, flags) => {
    const target = resolveTarget(flags);
    const timeout = flags.timeout === undefined ? DEFAULT_TIMEOUT_SECONDS : Number(flags.timeout);
    if (!(timeout > 0)) throw new UsageError(`--timeout must be a number of seconds > 0, not ${JSON.stringify(flags.timeout)}`);
    let report: PrefetchReport;
    if (target.kind === 'remote') {
      report = await prefetchThroughNode(target.api, timeout * 1000);
    } else {
      const store = loadStoreDir(flags);
      report = await withCache(target.options, (cache) => prefetchFromStore(cache, store));
    }
    if (flags.json) printJson({ cached_images: report.cached, not_cached_images: report.notCached });
    else print(`Prefetched ${report.cached.length} of ${count(report.total, 'queued image')}.`);
    return report.failed ? 1 : 0;
  });
}

async function prefetchFromStore(cache: ImageCache, store: string): Promise<PrefetchReport> {
  const queued = await cache.getQueuedImages();
  const report: PrefetchReport = { total: queued.length, cached: [], notCached: {}, failed: false };
  const bar = startProgress('prefetch', queued.length);
  const problem = (id: string, reason: string, failed = true): void => {
    report.notCached[id] = reason;
    report.failed ||= failed;
    bar.done(`${id}: ${reason}`, failed);
  };
  for (const id of queued) {
    bar.working(id);
    const source = path.join(store, id);
    if (!fs.existsSync(source)) {
      problem(id, `not in ${store}; left queued`);
      continue;
    }
    try {
      if (await cache.cacheImageFile(id, source)) {
        report.cached.push(id);
        bar.done(`${id}: cached (${formatSize(await cache.getImageSize(id))})`);
      } else if (await cache.isCached(id)) {
        report.cached.push(id);
        bar.done(`${id}: already cached`);
      } else {
        problem(id, 'being cached by another process', false);
      }
    } catch (err) {
      problem(id, `failed: ${(err as Error).message}; left queued`);
    }
  }
  bar.end();
  return report;
}

async function prefetchThroughNode(api: CacheApi, timeoutMs: number): Promise<PrefetchReport> {
  const queued = (await api.list()).queued_images;
  const report: PrefetchReport = { total: queued.length, cached: [], notCached: {}, failed: false };
  const bar = startProgress('prefetch', queued.length);
  const problem = (id: string, reason: string): void => {
    report.notCached[id] = reason;
    report.failed = true;
    bar.done(`${id}: ${reason}`, true);
  };
  const waiting = new Set<string>();
  for (const id of queued) {
    try {
      await api.queue(id);
      waiting.add(id);
    } catch (err) {
      // The node's refusal of one image (its source does not know it, or it is not active) leaves the others to fetch.
      if (!(err instanceof RemoteError) || err.status === undefined) throw err;
      problem(id, `${err.message} (left queued)`);
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (waiting.size > 0) {
    const listing = await api.list();
    for (const id of waiting) {
      if (listing.queued_images.includes(id)) continue;
      waiting.delete(id);
      const image = listing.cached_images.find((cached) => cached.image_id === id);
      if (image === undefined) {
        problem(id, 'left the queue uncached (the node dropped it: see its log)');
      } else {
        report.cached.push(id);
        bar.done(`${id}: cached (${formatSize(image.size)})`);
      }
    }
    if (waiting.size === 0) break;
    if (Date.now() >= deadline) {
      for (const id of waiting) problem(id, `still queued after ${timeoutMs / 1000} s; the node goes on with it`);
      break;
    }
    bar.working([...waiting][0]!);
    await sleep(POLL_MS);
  }
  bar.end();
  return report;
}
