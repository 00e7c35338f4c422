import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import fsExt from 'fs-ext';
import { errorCode } from './files.js';

/**
 * flock(2) on open files, through the fs-ext addon (Node has no binding of
 * its own). A lock belongs to the open file description: the kernel drops it
 * when the last descriptor closes, which happens when its process exits,
 * however it exits (crash, SIGKILL, OOM). That is what makes it the claim on
 * an image being written: a dead writer's claim is gone at once, and a live
 * writer's is never lost, whatever its disk or its clock do.
 *
 * Node opens every file with O_CLOEXEC, so child processes never inherit a
 * descriptor and with it a lock.
 */

/** Takes an exclusive lock without waiting; false when another open file description holds one. */
export function tryLockExclusive(fd: number): boolean {
  try {
    fsExt.flockSync(fd, 'exnb');
    return true;
  } catch (err) {
    if (errorCode(err) === 'EAGAIN' || errorCode(err) === 'EWOULDBLOCK') return false;
    throw err;
  }
}

/**
 * Takes a shared lock without waiting and drops it at once: true when no
 * writer holds the file (an exclusive lock would have refused it). Held for
 * microseconds, so it never keeps a claim or a takeover from happening for longer.
 */
export function isUnlocked(fd: number): boolean {
  try {
    fsExt.flockSync(fd, 'shnb');
  } catch (err) {
    if (errorCode(err) === 'EAGAIN' || errorCode(err) === 'EWOULDBLOCK') return false;
    throw err;
  }
  fsExt.flockSync(fd, 'un');
  return true;
}

/** The probe's name starts so; with '@' it is never a valid image ID, so a probe left behind by a crash is never taken for an image. */
export const LOCK_PROBE_PREFIX = '.lock-probe@';

/** Why flock(2) cannot be relied on in `dir`, or undefined when it can. */
export function lockingProblem(dir: string, lock: (fd: number) => boolean = tryLockExclusive): string | undefined {
  const probe = path.join(dir, `${LOCK_PROBE_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  let first: number | undefined;
  let second: number | undefined;
  try {
    first = fs.openSync(probe, 'wx');
    second = fs.openSync(probe, 'r');
    if (!lock(first)) return 'flock() refused a lock nobody holds';
    if (lock(second)) return 'flock() granted two exclusive locks on one file at once';
    return undefined;
  } catch (err) {
    return `flock() failed: ${(err as Error).message}`;
  } finally {
    if (first !== undefined) fs.closeSync(first);
    if (second !== undefined) fs.closeSync(second);
    fs.rmSync(probe, { force: true });
  }
}
