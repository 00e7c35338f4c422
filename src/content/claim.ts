import fs from 'node:fs';
import { errorCode } from '../fs/files.js';
import { isUnlocked, tryLockExclusive } from '../fs/flock.js';
import type { CacheIo } from '../fs/io.js';

/**
 * The claim on an image being written: incomplete/<id>, created exclusively
 * and held under an exclusive flock(2) by the open file of its writer until
 * the writer has published or discarded it.
 *
 * The rule every process of this library follows, and on which everything
 * here rests: only the holder of the lock on the file at incomplete/<id> may
 * rename or unlink that path. While a writer holds its lock, the path is its
 * own: no other writer, taker or cleaner can move it, so a check that the path
 * still names the writer's file stays true until the writer itself renames it.
 * (A process that ignores locks — an operator's rm, Glance's own cleaner — can
 * still break it; the commit checks for that before and after publishing.)
 *
 * A file that nobody holds belongs to a writer that died: the kernel released
 * its lock when the process went, so it may be taken over at once.
 */
export interface Claim {
  readonly fd: number;
  readonly ino: bigint;
  readonly dev: bigint;
  /** incomplete/<id> */
  readonly path: string;
  /** A dead writer's file had to be moved to invalid/ first. */
  readonly tookOver: boolean;
}

export interface ClaimPaths {
  incomplete: string;
  invalid: string;
}

/**
 * Claim attempts before giving up as if a live writer held the image. Each
 * lost race means another process made progress (claimed, took over, or
 * cleaned), so a few are plenty.
 */
const CLAIM_ATTEMPTS = 4;

/**
 * Claims incomplete/<id>: creates it (O_EXCL) and locks it. A leftover file
 * that no live writer holds is moved to invalid/ first. Undefined when a live
 * writer holds the image.
 */
export function claimIncomplete(paths: ClaimPaths, io: CacheIo): Claim | undefined {
  let tookOver = false;
  for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    let fd: number;
    try {
      fd = fs.openSync(paths.incomplete, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    } catch (err) {
      if (errorCode(err) !== 'EEXIST') throw err;
      const outcome = takeOverIfAbandoned(paths, io);
      if (outcome === 'held') return undefined;
      tookOver ||= outcome === 'moved';
      continue;
    }
    // Between the create and the lock, another process may have found the
    // file unlocked and moved it (it cannot tell a newborn from a dead one):
    // the lock then holds a file that is no longer at the path. Start again.
    let locked = false;
    try {
      locked = tryLockExclusive(fd);
      const st = fs.fstatSync(fd, { bigint: true });
      if (locked && isAt(paths.incomplete, st)) return { fd, ino: st.ino, dev: st.dev, path: paths.incomplete, tookOver };
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    fs.closeSync(fd);
  }
  return undefined;
}

/** Moves incomplete/<id> to invalid/ if no live writer holds it (a writer that died left it); true when it did. */
export function quarantineIfAbandoned(paths: ClaimPaths, io: CacheIo): boolean {
  return takeOverIfAbandoned(paths, io) === 'moved';
}

/**
 * incomplete/<id> when nobody holds it: moved to invalid/ ('moved'); 'held'
 * when a live writer does; 'gone' when the path is empty or names another
 * file by the time we hold a lock on what we opened.
 */
function takeOverIfAbandoned(paths: ClaimPaths, io: CacheIo): 'moved' | 'held' | 'gone' {
  return withLockedFile(paths.incomplete, (st) => {
    if (st === 'held') return 'held';
    io.rename(paths.incomplete, paths.invalid);
    return 'moved';
  }) ?? 'gone';
}

/**
 * Removes the file at `filePath` (in incomplete/) if no live writer holds it
 * and `abandoned` agrees (clean's stall time); true when it was removed.
 */
export function removeIfAbandoned(filePath: string, abandoned: (st: fs.BigIntStats) => boolean): boolean {
  return withLockedFile(filePath, (st) => {
    if (st === 'held' || !abandoned(st)) return false;
    fs.unlinkSync(filePath);
    return true;
  }) ?? false;
}

/** True while a live writer holds the file at `filePath`. */
export function isHeld(filePath: string): boolean {
  return withLockedFile(filePath, (st) => st === 'held') ?? false;
}

/**
 * Opens the file at `filePath`, tries to lock it exclusively and, holding the
 * lock, checks that the path still names it; then calls `fn` with its stat,
 * or with 'held' when a live writer holds it. Undefined when there is no file
 * at the path (any more). The lock is held only for the duration of `fn`.
 */
function withLockedFile<T>(filePath: string, fn: (st: fs.BigIntStats | 'held') => T): T | undefined {
  // Usually there is no file (no writer): say so without the cost of a thrown ENOENT.
  if (!fs.existsSync(filePath)) return undefined;
  let fd: number;
  try {
    fd = fs.openSync(filePath, fs.constants.O_RDONLY);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    if (!tryLockExclusive(fd)) return fn('held');
    const st = fs.fstatSync(fd, { bigint: true });
    // Committed (renamed away) or replaced between our open and our lock.
    if (!isAt(filePath, st)) return undefined;
    return fn(st);
  } finally {
    fs.closeSync(fd);
  }
}

/** The claimed file is still at its path and still linked there. */
export function claimIntact(claim: Claim): boolean {
  return fs.fstatSync(claim.fd, { bigint: true }).nlink > 0n && isAt(claim.path, claim);
}

/** True when `filePath` names the file with this inode and device. */
export function isAt(filePath: string, file: { ino: bigint; dev: bigint }): boolean {
  const st = fs.statSync(filePath, { bigint: true, throwIfNoEntry: false });
  return st !== undefined && st.ino === file.ino && st.dev === file.dev;
}

/**
 * What became of the file a writer was writing, seen by another process
 * through its own descriptor `fd` on it: still being written (the writer
 * holds its lock), published at `activePath`, or abandoned (the writer let go
 * without publishing it: it aborted, or died).
 */
export function writerOutcome(fd: number, activePath: string): 'writing' | 'published' | 'abandoned' {
  if (!isUnlocked(fd)) return 'writing';
  // A writer publishes (renames) before it lets go, so once it has let go the rename is visible.
  return isAt(activePath, fs.fstatSync(fd, { bigint: true })) ? 'published' : 'abandoned';
}
