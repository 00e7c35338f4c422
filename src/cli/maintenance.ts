/**
 * prune, clean and verify: the work Glance leaves to cron
 * (glance-cache-pruner, glance-cache-cleaner), on the cache directory. Safe
 * beside a running node, which shares the directory and its locks.
 */
import type { Command } from 'commander';
import type { VerifyResult } from '../types.js';
import { OPTIONS } from '../config/schema.js';
import { UsageError } from '../errors.js';
import { action, subcommand, type Flags } from './command.js';
import { count, formatSize, print, printJson } from './format.js';
import { localCacheOptions, withCache } from './options.js';

export function addMaintenanceCommands(program: Command): void {
  program.commandsGroup('Maintenance, on the cache directory (safe from cron beside a running node):');

  action(maintenanceCommand(program, 'prune', '', 'evicts least recently used images until the cache fits image_cache_max_size'), async (_args, flags) => {
    const result = await withCache(localCacheOptions(flags), (cache) => cache.prune());
    // The shape of the node's POST /v2/cache/prune (and of Glance's pruner log line).
    if (flags.json) printJson({ total_files_pruned: result.totalFilesPruned, total_bytes_pruned: result.totalBytesPruned });
    else print(`Pruned ${count(result.totalFilesPruned, 'image')} (${formatSize(result.totalBytesPruned)}).`);
    return 0;
  });

  const clean = maintenanceCommand(program, 'clean', '[--stall-time SECONDS]', 'removes invalid files and abandoned incomplete ones, then verifies the metadata (as verify)')
    .option('--stall-time <SECONDS>', 'removes incomplete files no writer holds once this old (default image_cache_stall_time)');
  action(clean, async (_args, flags) => {
    const stallTime = stallTimeOf(flags);
    const result = await withCache(localCacheOptions(flags), (cache) => cache.clean(stallTime));
    if (flags.json) printJson(result);
    else print(`Removed ${result.invalid} invalid and ${result.stalled} stalled files.\n${describeRepairs(result)}`);
    return 0;
  });

  action(maintenanceCommand(program, 'verify', '', 'brings the metadata back into agreement with the files and says what it repaired'), async (_args, flags) => {
    const result = await withCache(localCacheOptions(flags), (cache) => cache.verify());
    if (flags.json) printJson(result);
    else print(describeRepairs(result));
    return 0;
  });
}

function maintenanceCommand(program: Command, name: string, args: string, summary: string): Command {
  return subcommand(program, name, `${args === '' ? '' : `${args} `}[--json]`, summary).option('--json', 'prints the counts as JSON');
}

/** --stall-time: image_cache_stall_time for this run, by that option's rule. */
function stallTimeOf(flags: Flags): number | undefined {
  const raw = flags['stall-time'];
  if (typeof raw !== 'string') return undefined;
  const parsed = OPTIONS.imageCacheStallTime.type.parse(raw);
  if ('invalid' in parsed) throw new UsageError(`--stall-time SECONDS ${parsed.invalid}`);
  return parsed.value;
}

function describeRepairs(result: VerifyResult): string {
  return `Verified: dropped ${result.recordsDropped} records without files, adopted ${result.filesAdopted} files without records, ` +
    `corrected ${result.sizesCorrected} sizes, dropped ${result.queueMarkersDropped} queue markers of cached images.`;
}
