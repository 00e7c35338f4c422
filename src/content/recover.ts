import fs from 'node:fs';
import path from 'node:path';
import { InvalidOption } from '../errors.js';
import { listRegularFiles, mapLimit, unlinkIfExists, unlinkIfExistsSync } from '../fs/files.js';
import { LOCK_PROBE_PREFIX } from '../fs/flock.js';
import type { CacheIo } from '../fs/io.js';
import type { CleanResult } from '../types.js';
import { quarantineIfAbandoned, removeIfAbandoned } from './claim.js';
import type { CacheLayout } from './layout.js';

/** How many unlinks prune, clean and delete keep in flight: enough to overlap, few enough to leave the thread pool to readers. */
export const UNLINK_CONCURRENCY = 8;

/** How old a lock probe (fs/flock.ts) must be before clean() takes it for a crash's leftover. */
const PROBE_MAX_AGE_MS = 60_000;

/**
 * Deletes everything in invalid/, and the files in incomplete/ that no live
 * writer holds and that were last written more than `stallTime` seconds ago
 * (0 = all of them). A live writer's file is never removed, however long it
 * has been idle: its writer ends or aborts it. Files that vanish meanwhile
 * (another process cleaning) are skipped.
 */
export async function cleanFiles(layout: CacheLayout, stallTime: number): Promise<CleanResult> {
  if (!Number.isFinite(stallTime) || stallTime < 0) throw new InvalidOption('stall_time', `must be a number of seconds >= 0, not ${stallTime}`);
  const invalidDir = layout.statusDir('invalid');
  const incompleteDir = layout.statusDir('incomplete');
  const invalid = await mapLimit(await listRegularFiles(invalidDir), UNLINK_CONCURRENCY, (name) => unlinkIfExists(path.join(invalidDir, name)));
  const olderThanMs = BigInt(Math.floor(Date.now() - stallTime * 1000));
  let stalled = 0;
  for (const name of await listRegularFiles(incompleteDir)) {
    // A lock probe left by a process that died while configuring. A live one lives for
    // microseconds, and must not even be locked meanwhile (its process would see a lock it did
    // not take): only an old one is touched.
    if (name.startsWith(LOCK_PROBE_PREFIX)) {
      const probe = path.join(incompleteDir, name);
      const st = fs.statSync(probe, { throwIfNoEntry: false });
      if (st !== undefined && st.mtimeMs < Date.now() - PROBE_MAX_AGE_MS && unlinkIfExistsSync(probe)) stalled++;
      continue;
    }
    // Our own names only: anything foreign is not an image's claim.
    if (!layout.isValidImageId(name)) continue;
    if (removeIfAbandoned(path.join(incompleteDir, name), (st) => stallTime === 0 || st.mtimeMs < olderThanMs)) stalled++;
  }
  return { invalid: invalid.filter(Boolean).length, stalled };
}

/**
 * The file half of a recovery: the files of writers that died, which no live
 * writer holds, go to invalid/ whatever their age (a crash's leftovers, kept
 * for inspection until the cleaner removes them). Safe beside live writers in
 * other processes: their files are held. Returns how many were moved.
 */
export async function quarantineAbandonedWrites(layout: CacheLayout, io: CacheIo): Promise<number> {
  let moved = 0;
  // Our own names only (a lock probe's name, with its '@', is none): anything foreign is not an image's claim.
  for (const name of await layout.imageIdsIn(layout.statusDir('incomplete'))) {
    if (quarantineIfAbandoned({ incomplete: layout.imagePath(name, 'incomplete'), invalid: layout.imagePath(name, 'invalid') }, io)) moved++;
  }
  return moved;
}
