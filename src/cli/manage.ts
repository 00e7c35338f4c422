/**
 * glance-cache-manage's commands, by Glance's names, on a node (--url) or
 * on the cache directory (--local). --json prints Glance's wire shapes:
 * `{"cached_images": [...]}` as GET /v2/cache sends it, raw numbers.
 */
import type { Command } from 'commander';
import { action, subcommand } from './command.js';
import { count, formatSize, formatTime, print, printJson, table } from './format.js';
import { withManager, type CacheManager, type Outcome, type ProgressFactory } from './managers.js';
import { startProgress } from './progress.js';
import type { WireCachedImage } from '../cache/wire.js';
import type { NodeQueueing } from '../cluster/fleet.js';
import { RemoteError, UsageError } from '../errors.js';
import type { CacheApi } from './remote.js';
import { addTargetOptions, checkImageIds, resolveTarget, TARGET_SYNOPSIS } from './target.js';

export function addManageCommands(program: Command): void {
  program.commandsGroup('Cache management (glance-cache-manage), on a node (--url) or the cache directory (--local):');

  action(manageCommand(program, 'list-cached', '', 'the cached images: size, hits, last access and modification (UTC)'), async (_args, flags) => {
    const images = await withManager(resolveTarget(flags), (manager) => manager.listCached());
    if (flags.json) printJson({ cached_images: images });
    else print(images.length === 0 ? 'No cached images.' : cachedTable(images));
    return 0;
  });

  action(manageCommand(program, 'list-queued', '', 'the images queued for prefetching, in queue order'), async (_args, flags) => {
    const queued = await withManager(resolveTarget(flags), (manager) => manager.listQueued());
    if (flags.json) printJson({ queued_images: queued });
    else print(queued.length === 0 ? 'No queued images.' : `${table([{ header: 'ID' }], queued.map((id) => [id]))}\n${count(queued.length, 'image')}`);
    return 0;
  });

  const queueImage = manageCommand(program, 'queue-image', 'IMAGE_ID... [--all-nodes]', 'queues images for prefetching (a node starts fetching them at once)')
    .argument('<IMAGE_ID...>')
    .option('--all-nodes', 'on every node of the cluster (centralized_db), through the node at --url: each fetches it, almost all from the others');
  action(queueImage, async (ids, flags) => {
    const target = resolveTarget(flags);
    checkImageIds(target, ids);
    if (flags['all-nodes'] === true) {
      if (target.kind !== 'remote') throw new UsageError('--all-nodes queues through a running node: give --url, not --local');
      return queueOnAllNodes(target.api, ids, flags.json === true);
    }
    const queued: string[] = [];
    const notQueued: Record<string, string> = {};
    let failed = false;
    await withManager(target, async (manager) => {
      for (const id of ids) {
        let outcome: Outcome;
        try {
          outcome = await manager.queueImage(id);
        } catch (err) {
          if (!isRefusal(err)) throw err;
          process.stderr.write(`image-cache queue-image: ${err.message}\n`);
          notQueued[id] = err.message;
          failed = true;
          continue;
        }
        if (outcome.done) queued.push(id);
        else notQueued[id] = outcome.reason;
        if (!flags.json) print(outcome.done ? `Queued ${id}.` : `Not queued ${id}: ${outcome.reason}.`);
      }
    });
    if (flags.json) printJson({ queued_images: queued, not_queued_images: notQueued });
    return failed ? 1 : 0;
  });

  deleteOneCommand(program, 'delete-cached-image', 'removes one image from the cache', (manager, id) => manager.deleteCachedImage(id), 'cached');
  deleteOneCommand(program, 'delete-queued-image', 'removes one image from the prefetch queue', (manager, id) => manager.deleteQueuedImage(id), 'queued');
  deleteAllCommand(program, 'delete-all-cached-images', 'removes every cached image', (manager, progress) => manager.deleteAllCachedImages(progress), 'cached');
  deleteAllCommand(program, 'delete-all-queued-images', 'empties the prefetch queue', (manager, progress) => manager.deleteAllQueuedImages(progress), 'queued');
}

/** A node's refusal of one image (404: unknown to its source; 400: not active), which does not stop the others. */
function isRefusal(err: unknown): err is RemoteError {
  return err instanceof RemoteError && err.status !== undefined;
}

/**
 * queue-image --all-nodes: each image queued through the node at --url on
 * every node of its cluster; a line per image, and one per node that did
 * not queue it. Exit 1 when any node did not.
 */
async function queueOnAllNodes(api: CacheApi, ids: string[], json: boolean): Promise<number> {
  const queued: string[] = [];
  const notQueued: Record<string, string> = {};
  const nodes: Record<string, NodeQueueing[]> = {};
  for (const id of ids) {
    let answers: NodeQueueing[];
    try {
      answers = await api.queueOnAllNodes(id);
    } catch (err) {
      if (!isRefusal(err)) throw err;
      process.stderr.write(`image-cache queue-image: ${err.message}\n`);
      notQueued[id] = err.message;
      continue;
    }
    nodes[id] = answers;
    const missed = answers.filter((answer) => answer.status !== 202);
    if (missed.length === 0) queued.push(id);
    else notQueued[id] = `not queued on ${count(missed.length, 'node')}`;
    if (json) continue;
    print(`Queued ${id} on ${answers.length - missed.length} of ${count(answers.length, 'node')}.`);
    for (const answer of missed) print(`  not on ${answer.url}: ${answer.status === undefined ? '' : `${answer.status} `}${answer.error ?? ''}`.trimEnd());
  }
  if (json) printJson({ queued_images: queued, not_queued_images: notQueued, nodes });
  return Object.keys(notQueued).length > 0 ? 1 : 0;
}

/** A command with --url/--local and --json, its synopsis ending with them. */
function manageCommand(program: Command, name: string, args: string, summary: string): Command {
  const cmd = subcommand(program, name, `${args === '' ? '' : `${args} `}${TARGET_SYNOPSIS} [--json]`, summary);
  return addTargetOptions(cmd).option('--json', 'prints Glance\'s wire shape (JSON) instead of text');
}

function deleteOneCommand(program: Command, name: string, summary: string, run: (manager: CacheManager, id: string) => Promise<Outcome>, kind: string): void {
  action(manageCommand(program, name, 'IMAGE_ID', summary).argument('<IMAGE_ID>'), async ([id], flags) => {
    const target = resolveTarget(flags);
    checkImageIds(target, [id!]);
    const outcome = await withManager(target, (manager) => run(manager, id!));
    if (flags.json) printJson(outcome.done ? { image_id: id, deleted: true } : { image_id: id, deleted: false, reason: outcome.reason });
    else print(outcome.done ? `Deleted ${kind} image ${id}.` : `Nothing deleted: ${outcome.reason}.`);
    return 0;
  });
}

function deleteAllCommand(program: Command, name: string, summary: string, run: (manager: CacheManager, progress: ProgressFactory) => Promise<number>, kind: string): void {
  action(manageCommand(program, name, '', summary), async (_args, flags) => {
    const deleted = await withManager(resolveTarget(flags), (manager) => run(manager, (total) => startProgress(name, total)));
    if (flags.json) printJson({ deleted });
    else print(`Deleted ${count(deleted, `${kind} image`)}.`);
    return 0;
  });
}

function cachedTable(images: WireCachedImage[]): string {
  const columns = [{ header: 'ID' }, { header: 'Last Accessed (UTC)' }, { header: 'Last Modified (UTC)' }, { header: 'Size', align: 'right' as const }, { header: 'Hits', align: 'right' as const }];
  const rows = images.map((image) => [image.image_id, formatTime(image.last_accessed), formatTime(image.last_modified), formatSize(image.size), String(image.hits)]);
  const total = images.reduce((sum, image) => sum + image.size, 0);
  return `${table(columns, rows)}\n${count(images.length, 'image')}, ${formatSize(total)}`;
}
