/**
 * Where a cache management command acts: a running node (`--url`, through
 * its API: the node then sees every change at once, and keeps its own
 * bookkeeping such as prefetching), or the cache directory itself
 * (`--local`, as cron and Glance's own tools do). Exactly one is required:
 * guessing would mean a command run on the wrong machine quietly creates
 * an empty cache, or misses the node's.
 */
import { Option, type Command } from 'commander';
import type { ImageCacheOptions } from '../config.js';
import { httpUrl } from '../config/option-types.js';
import { InvalidImageId, UsageError } from '../errors.js';
import { validateImageId } from '../image-id.js';
import type { Flags } from './command.js';
import { localCacheOptions } from './options.js';
import { CacheApi } from './remote.js';

export type Target = { kind: 'remote'; api: CacheApi } | { kind: 'local'; options: ImageCacheOptions };

export const TARGET_SYNOPSIS = '(--url URL [--token TOKEN] | --local)';

export function addTargetOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--url <URL>', 'a running node (http://host:9292): works through its cache API').conflicts('local'))
    .addOption(new Option('--token <TOKEN>', 'X-Auth-Token for the node (default: OS_AUTH_TOKEN)').conflicts('local'))
    .option('--local', 'works on the cache directory itself (--image-cache-dir, IMAGE_CACHE_DIR or --config-file; else ./var/cache, serve\'s default, if it exists)');
}

/** The target the flags name, checked (commander has already refused --url with --local). */
export function resolveTarget(flags: Flags): Target {
  const url = flags.url;
  if (typeof url === 'string') {
    const parsed = httpUrl.parse(url);
    if ('invalid' in parsed) throw new UsageError(`--url ${parsed.invalid}`);
    const token = typeof flags.token === 'string' ? flags.token : process.env.OS_AUTH_TOKEN;
    return { kind: 'remote', api: new CacheApi(url, token) };
  }
  if (flags.local === true) return { kind: 'local', options: localCacheOptions(flags) };
  throw new UsageError('say where the cache is: --url URL (a running node) or --local (the cache directory)');
}

/**
 * On the cache directory, an ID that cannot name a file there is a usage
 * error, found before the cache is opened. A node judges its IDs itself (it
 * answers 400 or 404), so they are passed on as given.
 */
export function checkImageIds(target: Target, ids: string[]): void {
  if (target.kind === 'remote') return;
  for (const id of ids) {
    try {
      validateImageId(id);
    } catch (err) {
      if (err instanceof InvalidImageId) throw new UsageError(err.message);
      throw err;
    }
  }
}
