/**
 * The cache node (`serve`) and its local image store (`import`). Neither
 * needs an image_cache_dir on the command line: serve has its embedded
 * default (./var/cache), import writes to the store only.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { ImageCacheError } from '../errors.js';
import { isValidImageId } from '../image-id.js';
import { loadServeConfig, SERVER_FLAG_NAMES, type ServeConfig } from '../server/config.js';
import { serve } from '../server/serve.js';
import { importImage } from '../sources/local-directory.js';
import { action, subcommand, UsageError, type Flags } from './command.js';
import { print, printJson } from './format.js';
import { loadStoreDir } from './options.js';

/** What each of the node's flags sets (the README's table says more); a flag missing here still works, described by its option's name. */
const SERVER_FLAG_HELP: Record<string, string> = {
  'bind-host': 'the address to listen on (default 127.0.0.1)',
  'bind-port': 'the port (default 9292; 0 picks a free one)',
  'upstream-url': 'the Glance to front (default: none, images come from filesystem_store_datadir)',
  'filesystem-store-datadir': 'the local image directory, without an upstream (default ./var/images)',
  workers: 'processes sharing the port and the cache directory (default 1)',
  'upstream-timeout': 'seconds the source may keep a request or a fill waiting (default 60)',
  'client-header-timeout': 'seconds a client may take to send its request headers; then 408 (default 60)',
  'auth-strategy': 'noauth or keystone: whether an upstream 404 proves an image gone (default noauth)',
  'x-accel-redirect': 'with nginx in front: the internal location it serves the cache directory under',
  'upstream-token': 'the token of the fetches nobody asked for (prefetching)',
  'image-cache-prefetch-workers': 'queued images fetched at once (default 1)',
  'image-cache-prune-interval': 'seconds between prunes on a timer (default 300; 0: none)',
  'image-cache-clean-interval': 'seconds between cleans on a timer (default 3600; 0: none)',
};

export function addNodeCommands(program: Command): void {
  program.commandsGroup('The cache node and its local image store:');

  const serveCommand = subcommand(
    program,
    'serve',
    '[--bind-host HOST] [--bind-port PORT] [--upstream-url URL] [--workers N] ...',
    'the cache node: Glance\'s image download path in front of upstream_url (or the local image store), on bind_host:bind_port',
  );
  for (const name of SERVER_FLAG_NAMES) serveCommand.option(`--${name} <VALUE>`, SERVER_FLAG_HELP[name] ?? name.replaceAll('-', '_'));
  action(serveCommand, async (_args, flags) => {
    await serve(serveConfig(flags));
    return 0;
  });

  const importCommand = subcommand(
    program,
    'import',
    'FILE [--id ID] [--name NAME] [--filesystem-store-datadir DIR] [--json]',
    'copies FILE into the local image store as a new active image and prints its ID (--json: its image document)',
  )
    .argument('<FILE>')
    .option('--id <ID>', 'the image\'s ID (default: a new UUID)')
    .option('--name <NAME>', 'the image\'s name (default: the file\'s)')
    .option('--filesystem-store-datadir <DIR>', 'the store (default: IMAGE_CACHE_FILESYSTEM_STORE_DATADIR, the config file\'s [glance_store] or [DEFAULT], ./var/images)')
    .option('--json', 'prints the image document instead of the ID');
  action(importCommand, async ([file], flags) => {
    const id = flags.id as string | undefined;
    if (id !== undefined && !isValidImageId(id)) throw new UsageError(`--id ${JSON.stringify(id)} is not a valid image ID (A-Z a-z 0-9 . _ ~ -, at most 255 characters)`);
    const problem = unreadableFile(file!);
    if (problem !== undefined) throw new UsageError(problem);
    const store = loadStoreDir(flags);
    const document = await importImage(store, path.resolve(file!), { id, name: flags.name as string | undefined });
    if (flags.json) printJson(document);
    else print(document.id);
    return 0;
  });
}

/** The node's configuration; a bad value is a usage error that names the option and where it was set, before anything is created. */
function serveConfig(flags: Flags): ServeConfig {
  const strings: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(flags)) if (typeof value === 'string') strings[name] = value;
  try {
    return loadServeConfig(strings['config-file'], strings);
  } catch (err) {
    if (err instanceof ImageCacheError) throw new UsageError(err.message);
    throw err;
  }
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
