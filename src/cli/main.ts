#!/usr/bin/env node
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ImageCache } from '../cache/image-cache.js';
import { ImageCacheError, InvalidOption } from '../errors.js';
import { COMMANDS, usage } from './commands.js';
import { GLOBAL_FLAGS, loadOptions } from './options.js';

/** `image-cache COMMAND [ARGS] [--image-cache-dir DIR] ...`: the cache from the shell and from cron. */
async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const command = name === undefined ? undefined : COMMANDS[name];
  if (command === undefined || name === '--help' || name === '-h') {
    process.stderr.write(usage());
    return name === undefined || name === '--help' || name === '-h' ? 0 : 2;
  }
  const { values, positionals } = parseArgs({ args: rest, options: { ...GLOBAL_FLAGS, ...command.flags }, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(`${command.synopsis}\n`);
    return 0;
  }
  const flags = values as Record<string, string | boolean | undefined>;
  const problem = positionals.length < command.minArgs || positionals.length > command.maxArgs
    ? 'wrong number of arguments'
    : command.check?.(positionals, flags);
  if (problem !== undefined) {
    process.stderr.write(`image-cache ${name}: ${problem}\nusage: image-cache ${command.synopsis}\n`);
    return 2;
  }
  if (command.opensCache === false) return command.run(positionals, flags);
  const options = loadOptions(values);
  if (!options.imageCacheDir) throw new InvalidOption('image_cache_dir', 'is required: pass --image-cache-dir DIR, set IMAGE_CACHE_DIR, or give a --config-file');
  options.imageCacheDir = path.resolve(options.imageCacheDir);
  const cache = await ImageCache.create(options);
  try {
    return await command.run(cache, positionals, flags);
  } finally {
    await cache.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ImageCacheError) {
      process.stderr.write(`image-cache: ${err.message} [${err.code}]\n`);
      process.exitCode = 1;
    } else if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`image-cache: ${(err as Error).message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`image-cache: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    }
  },
);
