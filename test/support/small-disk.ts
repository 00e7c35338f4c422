import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import type { TestContext } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';

/**
 * A real file system of `bytes` bytes (tmpfs), mounted for one test, so that
 * a disk that fills is a real ENOSPC from the kernel, not an injected one.
 * Needs what mount(8) needs (root, as on the CI machines). Unmounted lazily
 * when the test ends: a node closing in another after-hook may still hold
 * files on it, and a lazy unmount does not wait for them.
 */
export function mountSmallDisk(t: TestContext, bytes: number): string {
  const dir = makeTempDir('image-cache-small-disk-');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (err) {
    removeDir(dir);
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`cannot mount a ${bytes}-byte tmpfs for the disk-full tests (they need root): ${stderr || (err as Error).message}`);
  }
  t.after(() => {
    execFileSync('umount', ['-l', dir]);
    fs.rmdirSync(dir);
  });
  return dir;
}

/** Bytes free on the file system holding `dir`. */
export function freeBytes(dir: string): number {
  const st = fs.statfsSync(dir);
  return st.bavail * st.bsize;
}
