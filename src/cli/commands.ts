import fs from 'node:fs';
import path from 'node:path';
import type { ImageCache } from '../cache/image-cache.js';
import { isValidImageId } from '../image-id.js';
import { cachedImageToWire } from '../cache/wire.js';
import { ImageCacheError } from '../errors.js';
import { loadServeConfig, SERVER_FLAG_NAMES, type ServeConfig } from '../server/config.js';
import { serve } from '../server/serve.js';
import { importImage } from '../sources/local-directory.js';
import type { VerifyResult } from '../types.js';
import { loadStoreDir } from './options.js';

type Flags = Record<string, string | boolean | undefined>;

interface CommandBase {
  synopsis: string;
  summary: string;
  minArgs: number;
  maxArgs: number;
  flags: Record<string, { type: 'string' | 'boolean'; default?: string | boolean }>;
  /** What is wrong with the arguments, checked before anything is opened or created (nothing is created for a usage error). */
  check?(args: string[], flags: Flags): string | undefined;
}

/** A command on the image cache: main opens the cache (image_cache_dir is required), runs it, closes the cache. */
interface CacheCommand extends CommandBase {
  opensCache?: true;
  run(cache: ImageCache, args: string[], flags: Flags): Promise<number>;
}

/** A command that needs no image cache (no image_cache_dir): it opens whatever it uses itself. */
interface CachelessCommand extends CommandBase {
  opensCache: false;
  run(args: string[], flags: Flags): Promise<number>;
}

export type Command = CacheCommand | CachelessCommand;

const out = (text: string): void => {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
};
const json = (value: unknown): void => out(JSON.stringify(value, null, 2));

export const COMMANDS: Record<string, Command> = {
  'list-cached': {
    synopsis: 'list-cached [--json]',
    summary: 'the cached images, with hits, size and times',
    minArgs: 0,
    maxArgs: 0,
    flags: {},
    async run(cache, _args, flags) {
      const images = await cache.getCachedImages();
      if (flags.json) json(images.map(cachedImageToWire));
      else out(table(['ID', 'Last Accessed (UTC)', 'Last Modified (UTC)', 'Size', 'Hits'], images.map((i) => [i.imageId, isoTime(i.lastAccessed), isoTime(i.lastModified), String(i.size), String(i.hits)])));
      return 0;
    },
  },
  'list-queued': {
    synopsis: 'list-queued [--json]',
    summary: 'the images queued for prefetching, in queue order',
    minArgs: 0,
    maxArgs: 0,
    flags: {},
    async run(cache, _args, flags) {
      const queued = await cache.getQueuedImages();
      if (flags.json) json(queued);
      else out(queued.length === 0 ? 'No queued images.' : queued.join('\n'));
      return 0;
    },
  },
  'cache-file': {
    synopsis: 'cache-file IMAGE_ID FILE [--checksum MD5] [--os-hash-algo ALGO --os-hash-value HEX]',
    summary: 'caches a local file as the image, verifying a checksum when given',
    minArgs: 2,
    maxArgs: 2,
    flags: { checksum: { type: 'string' }, 'os-hash-algo': { type: 'string' }, 'os-hash-value': { type: 'string' } },
    async run(cache, [imageId, file], flags) {
      const cached = await cache.cacheImageFile(imageId!, path.resolve(file!), {
        checksum: flags.checksum as string | undefined,
        osHashAlgo: flags['os-hash-algo'] as string | undefined,
        osHashValue: flags['os-hash-value'] as string | undefined,
      });
      out(cached ? `Cached image ${imageId} (${await cache.getImageSize(imageId!)} bytes).` : `Image ${imageId} is already cached or being cached.`);
      return 0;
    },
  },
  queue: {
    synopsis: 'queue IMAGE_ID [IMAGE_ID...]',
    summary: 'queues images for prefetching',
    minArgs: 1,
    maxArgs: Infinity,
    flags: {},
    async run(cache, ids) {
      for (const id of ids) {
        if (await cache.queueImage(id)) out(`Queued ${id}.`);
        else if (await cache.isCached(id)) out(`Not queued ${id}: already cached.`);
        else out(`Not queued ${id}: being cached or queued already.`);
      }
      return 0;
    },
  },
  prefetch: {
    synopsis: 'prefetch --filesystem-store-datadir DIR',
    summary: 'caches every queued image from a local image directory (files named by image ID)',
    minArgs: 0,
    maxArgs: 0,
    flags: { 'filesystem-store-datadir': { type: 'string' } },
    check: (_args, flags) => (typeof flags['filesystem-store-datadir'] === 'string' ? undefined : '--filesystem-store-datadir DIR is required'),
    async run(cache, _args, flags) {
      const store = flags['filesystem-store-datadir'] as string;
      const queued = await cache.getQueuedImages();
      let failed = 0;
      for (const [index, id] of queued.entries()) {
        const source = path.join(path.resolve(store), id);
        const label = `[${index + 1}/${queued.length}] ${id}`;
        if (!fs.existsSync(source)) {
          failed++;
          process.stderr.write(`${label}: not in ${store}; left queued\n`);
          continue;
        }
        try {
          const cached = await cache.cacheImageFile(id, source);
          process.stderr.write(`${label}: ${cached ? `cached (${await cache.getImageSize(id)} bytes)` : 'already cached or being cached'}\n`);
        } catch (err) {
          failed++;
          process.stderr.write(`${label}: failed: ${(err as Error).message}\n`);
        }
      }
      out(`Prefetched ${queued.length - failed} of ${queued.length} queued images.`);
      return failed === 0 ? 0 : 1;
    },
  },
  'delete-cached': deleteCommand('cached', (cache, id) => cache.deleteCachedImage(id), (cache) => cache.deleteAllCachedImages()),
  'delete-queued': deleteCommand('queued', (cache, id) => cache.deleteQueuedImage(id), (cache) => cache.deleteAllQueuedImages()),
  prune: {
    synopsis: 'prune',
    summary: 'evicts least recently used images until the cache fits image_cache_max_size',
    minArgs: 0,
    maxArgs: 0,
    flags: {},
    async run(cache, _args, flags) {
      const result = await cache.prune();
      if (flags.json) json({ total_files_pruned: result.totalFilesPruned, total_bytes_pruned: result.totalBytesPruned });
      else out(`Pruned ${result.totalFilesPruned} images (${result.totalBytesPruned} bytes).`);
      return 0;
    },
  },
  clean: {
    synopsis: 'clean [--stall-time SECONDS]',
    summary: 'removes invalid files and abandoned incomplete ones, then verifies the metadata (as verify)',
    minArgs: 0,
    maxArgs: 0,
    flags: { 'stall-time': { type: 'string' } },
    check: (_args, flags) => (flags['stall-time'] === undefined || Number(flags['stall-time']) >= 0 ? undefined : '--stall-time SECONDS must be a number >= 0'),
    async run(cache, _args, flags) {
      const stall = flags['stall-time'] === undefined ? undefined : Number(flags['stall-time']);
      const result = await cache.clean(stall);
      if (flags.json) json(result);
      else out(`Removed ${result.invalid} invalid and ${result.stalled} stalled files.\n${describeRepairs(result)}`);
      return 0;
    },
  },
  verify: {
    synopsis: 'verify',
    summary: 'brings the metadata back into agreement with the files and says what it repaired',
    minArgs: 0,
    maxArgs: 0,
    flags: {},
    async run(cache, _args, flags) {
      const result = await cache.verify();
      if (flags.json) json(result);
      else out(describeRepairs(result));
      return 0;
    },
  },
  import: {
    synopsis: 'import FILE [--id ID] [--name NAME] [--filesystem-store-datadir DIR] [--json]',
    summary: 'copies FILE into the local image store as a new active image and prints its ID (--json: its image document)',
    opensCache: false,
    minArgs: 1,
    maxArgs: 1,
    flags: { id: { type: 'string' }, name: { type: 'string' }, 'filesystem-store-datadir': { type: 'string' } },
    check([file], flags) {
      if (flags.id !== undefined && !isValidImageId(flags.id as string)) {
        return `--id ${JSON.stringify(flags.id)} is not a valid image ID (A-Z a-z 0-9 . _ ~ -, at most 255 characters)`;
      }
      return unreadableFile(file!);
    },
    async run([file], flags) {
      const document = await importImage(loadStoreDir(flags), path.resolve(file!), { id: flags.id as string | undefined, name: flags.name as string | undefined });
      if (flags.json) json(document);
      else out(document.id);
      return 0;
    },
  },
  serve: {
    synopsis: 'serve [--config-file glance-api.conf] [--bind-host HOST] [--bind-port PORT] [--upstream-url URL] [--workers N] ...',
    summary: 'the cache node: Glance\'s image download path in front of upstream_url (or the local image store), on bind_host:bind_port',
    opensCache: false,
    minArgs: 0,
    maxArgs: 0,
    flags: Object.fromEntries(SERVER_FLAG_NAMES.map((name) => [name, { type: 'string' as const }])),
    check(_args, flags) {
      try {
        serveConfig(flags);
        return undefined;
      } catch (err) {
        if (err instanceof ImageCacheError) return err.message;
        throw err;
      }
    },
    async run(_args, flags) {
      await serve(serveConfig(flags));
      return 0;
    },
  },
};

function serveConfig(flags: Flags): ServeConfig {
  const strings: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(flags)) if (typeof value === 'string') strings[name] = value;
  return loadServeConfig(strings['config-file'], strings);
}

/** Why FILE cannot be imported, if it cannot. */
function unreadableFile(file: string): string | undefined {
  try {
    if (!fs.statSync(file).isFile()) return `${file} is not a regular file`;
    fs.accessSync(file, fs.constants.R_OK);
    return undefined;
  } catch (err) {
    return `cannot read ${file}: ${(err as Error).message}`;
  }
}

function describeRepairs(result: VerifyResult): string {
  return `Verified: dropped ${result.recordsDropped} records without files, adopted ${result.filesAdopted} files without records, ` +
    `corrected ${result.sizesCorrected} sizes, dropped ${result.queueMarkersDropped} queue markers of cached images.`;
}

/** delete-cached / delete-queued: one image by ID, or all of them with --all. */
function deleteCommand(kind: 'cached' | 'queued', deleteOne: (cache: ImageCache, id: string) => Promise<void>, deleteAll: (cache: ImageCache) => Promise<number>): Command {
  const synopsis = `delete-${kind} IMAGE_ID | delete-${kind} --all`;
  return {
    synopsis,
    summary: `removes one ${kind} image, or all of them`,
    minArgs: 0,
    maxArgs: 1,
    flags: { all: { type: 'boolean', default: false } },
    check: ([id], flags) => (flags.all === (id !== undefined) ? `give either an IMAGE_ID or --all: ${synopsis}` : undefined),
    async run(cache, [id], flags) {
      if (id === undefined) {
        out(`Deleted ${await deleteAll(cache)} ${kind} images.`);
      } else {
        await deleteOne(cache, id);
        out(`Deleted ${kind} image ${id}.`);
      }
      return 0;
    },
  };
}

export function usage(): string {
  const lines = Object.values(COMMANDS).map((c) => `  ${c.synopsis}\n      ${c.summary}`);
  return [
    'usage: image-cache COMMAND [ARGS] [--image-cache-dir DIR] [--image-cache-driver sqlite|xattr|centralized_db]',
    '                   [--image-cache-max-size BYTES] [--config-file glance-api.conf] [--json]',
    '',
    'Options come from the config file\'s [DEFAULT] section, then IMAGE_CACHE_DIR-style environment variables, then flags.',
    'import needs no image cache: it writes to filesystem_store_datadir, from --filesystem-store-datadir, IMAGE_CACHE_FILESYSTEM_STORE_DATADIR,',
    'the config file\'s [glance_store] or [DEFAULT] section, else ./var/images.',
    '',
    'commands:',
    ...lines,
    '',
  ].join('\n');
}

function isoTime(epochSeconds: number): string {
  return epochSeconds > 0 ? new Date(epochSeconds * 1000).toISOString().replace('T', ' ').slice(0, 19) : 'N/A';
}

function table(header: string[], rows: string[][]): string {
  if (rows.length === 0) return 'No cached images.';
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
