/**
 * The cache node (`serve`) and its local image store (`import`). Neither
 * needs an image_cache_dir on the command line: serve has its embedded
 * default (./var/cache), import writes to the store only.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { optionsOf, OPTIONS } from '../config/schema.js';
import { UsageError } from '../errors.js';
import { isValidImageId } from '../image-id.js';
import { serveConfigFrom, type ServeConfig } from '../server/config.js';
import { serve } from '../server/serve.js';
import { importImage } from '../sources/local-directory.js';
import { action, subcommand, type Flags } from './command.js';
import { print, printJson } from './format.js';
import { addOptionFlags, flagOf, loadStoreDir, readConfiguration } from './options.js';

export function addNodeCommands(program: Command): void {
  program.commandsGroup('The cache node and its local image store:');

  const serveCommand = subcommand(
    program,
    'serve',
    '[--bind-host HOST] [--bind-port PORT] [--upstream-url URL] [--workers N] ...',
    'the cache node: Glance\'s image download path in front of upstream_url (or the local image store), on bind_host:bind_port',
  );
  addOptionFlags(serveCommand, optionsOf('node'));
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
    .option(...flagOf(OPTIONS.filesystemStoreDatadir))
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
  return readConfiguration(flags, serveConfigFrom);
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
