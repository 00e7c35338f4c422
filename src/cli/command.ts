/**
 * How every subcommand is declared and run on commander: its synopsis in
 * the command list, in its help and after a usage error; its options as
 * one kebab-case record (the names Glance's options have on the command
 * line); usage errors as exit 2, raised before anything is opened.
 */
import { Command } from 'commander';
import { UsageError } from '../errors.js';

/** Moved to errors.ts with the other error classes; exported here still for the code that imports it from here. */
export { UsageError } from '../errors.js';

/** Options by their flag names (`image-cache-dir`), the command's own and the global ones. */
export type Flags = Record<string, string | boolean | undefined>;

/** commander's code for the usage errors our checks raise (its own are `commander.*`). */
export const USAGE_ERROR_CODE = 'image-cache.usage';

/**
 * A subcommand of `program`. Its errors read `image-cache NAME: ...` and are
 * followed by its synopsis; its help goes to stdout (the program's own does not: see main.ts).
 */
export function subcommand(program: Command, name: string, synopsis: string, summary: string): Command {
  return program
    .command(name)
    .usage(synopsis)
    .description(summary)
    .configureOutput({
      writeOut: (text) => process.stdout.write(text),
      outputError: (text, write) => write(text.replace(/^error: /, `image-cache ${name}: `)),
    })
    .showHelpAfterError(`usage: image-cache ${name} ${synopsis}\n(image-cache ${name} --help for every option)`);
}

/**
 * The command's action: `run` gets its arguments (a variadic one spread) and
 * its flags, and returns the exit status. A UsageError from it becomes
 * commander's usage error, so that it reads like one of commander's own.
 */
export function action(cmd: Command, run: (args: string[], flags: Flags) => Promise<number>): Command {
  return cmd.action(async () => {
    try {
      process.exitCode = await run(cmd.processedArgs.flat() as string[], flagsOf(cmd));
    } catch (err) {
      if (err instanceof UsageError) cmd.error(`error: ${err.message}`, { exitCode: 2, code: USAGE_ERROR_CODE });
      throw err;
    }
  });
}

/** Every option value set on the command or its ancestors (the global options are the program's), by flag name. */
function flagsOf(cmd: Command): Flags {
  const flags: Flags = {};
  for (let current: Command | null = cmd; current !== null; current = current.parent) {
    for (const option of current.options) {
      const name = option.long?.replace(/^--/, '');
      const value = current.getOptionValue(option.attributeName()) as string | boolean | undefined;
      if (name !== undefined && flags[name] === undefined) flags[name] = value;
    }
  }
  return flags;
}
