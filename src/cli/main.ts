#!/usr/bin/env node
/**
 * `image-cache COMMAND ...`: the wiring. The commands are in one file per
 * concern (node-commands, manage, prefetch, maintenance); this file sets up
 * the program, the exit statuses (0 done, 1 failed, 2 usage), and how
 * errors are printed.
 */
import { Command, CommanderError } from 'commander';
import { ImageCacheError, RemoteError } from '../errors.js';
import { addMaintenanceCommands } from './maintenance.js';
import { addManageCommands } from './manage.js';
import { addNodeCommands } from './node-commands.js';
import { addGlobalOptions } from './options.js';
import { addPrefetchCommand } from './prefetch.js';

/** The old names, gone for Glance's; each says what replaced it instead of "unknown command". */
const RETIRED: Record<string, string> = {
  queue: 'queue-image IMAGE_ID... (--url URL | --local)',
  'delete-cached': 'delete-cached-image IMAGE_ID, or delete-all-cached-images (--url URL | --local)',
  'delete-queued': 'delete-queued-image IMAGE_ID, or delete-all-queued-images (--url URL | --local)',
  'cache-file': 'import FILE into the local image store, then queue-image ID and prefetch --local',
};

function buildProgram(): Command {
  const program = new Command('image-cache')
    .usage('COMMAND [ARGS] [OPTIONS]')
    .description('The OpenStack Glance image cache: the cache node, and glance-cache-manage\'s commands on a node or a cache directory.')
    .exitOverride((err) => {
      throw err;
    })
    // The program's own help (`image-cache`, `image-cache --help`) has always gone to stderr, and scripts and tests
    // read it there; each command's --help goes to stdout (command.ts).
    .configureOutput({
      writeOut: (text) => process.stderr.write(text),
      getOutHelpWidth: () => (process.stderr.isTTY ? process.stderr.columns : 100),
      outputError: (text, write) => write(text.replace(/^error: /, 'image-cache: ')),
    })
    .showHelpAfterError('(image-cache --help lists the commands)')
    // The commands inherit this: their help lists the program's options too.
    .configureHelp({ showGlobalOptions: true });
  addGlobalOptions(program);
  addNodeCommands(program);
  addManageCommands(program);
  addPrefetchCommand(program);
  addMaintenanceCommands(program);
  // The program's own list: each command by its synopsis, too long to leave room for a description column beside it.
  program.configureHelp({
    subcommandTerm: (cmd) => `${cmd.name()} ${cmd.usage()}`,
    formatItem: (term, _termWidth, description, helper) =>
      (description === '' ? `  ${term}` : `  ${term}\n      ${helper.boxWrap(description, (helper.helpWidth ?? 100) - 6).replaceAll('\n', '\n      ')}`),
  });
  for (const [name, replacement] of Object.entries(RETIRED)) {
    program
      .command(name, { hidden: true })
      .helpOption(false)
      .allowUnknownOption()
      .allowExcessArguments()
      .action(() => program.error(`error: '${name}' is now: ${replacement}`, { exitCode: 2, code: 'image-cache.retired' }));
  }
  program.addHelpText('after', `
Options come from, lowest precedence first: the config file's [DEFAULT] section (a glance-api.conf works), environment
variables (IMAGE_CACHE_ and the option's name in upper case: IMAGE_CACHE_DIR, IMAGE_CACHE_MAX_SIZE, IMAGE_CACHE_BIND_PORT, ...),
then flags. Sizes are bytes or take a binary unit: 512M, 10G (K, M, G, T: powers of 1024; 10GiB too, not 10GB).
The commands on the cache directory use ./var/cache, serve's default, when no image_cache_dir is given and it exists.
import and prefetch --local find the local image store in --filesystem-store-datadir, IMAGE_CACHE_FILESYSTEM_STORE_DATADIR,
the config file's [glance_store] or [DEFAULT] section, else ./var/images. With --url, the token is --token or OS_AUTH_TOKEN.
Exit status: 0 done, 1 failed (the error is on stderr), 2 usage error (nothing was opened or created).
'image-cache COMMAND --help' describes a command.`);
  return program;
}

/** The exit status of an error, printed on stderr. */
function report(err: unknown, command: string): number {
  if (err instanceof CommanderError) {
    // commander has printed it. Help that was asked for exits 0 there; anything else it stops at is a usage error,
    // help shown for want of a command included (commander's 1 is ours 2).
    return err.exitCode === 0 ? 0 : 2;
  }
  const prefix = `image-cache${command === '' ? '' : ` ${command}`}: `;
  // A node's error reads as the node said it (its status and message), without a code of ours.
  if (err instanceof RemoteError) process.stderr.write(`${prefix}${err.message}\n`);
  else if (err instanceof ImageCacheError) process.stderr.write(`${prefix}${err.message} [${err.code}]\n`);
  else process.stderr.write(`${prefix}${(err as Error).stack ?? String(err)}\n`);
  return 1;
}

const program = buildProgram();
let running = '';
program.hook('preAction', (_program, actionCommand) => {
  running = actionCommand.name();
});
program.parseAsync(process.argv).catch((err: unknown) => {
  process.exitCode = report(err, running);
});
