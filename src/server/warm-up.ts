/**
 * What a node does at its start so that its first fill runs as fast as the
 * later ones: profiled, a fresh node's first fill cost about twice the CPU of
 * its second, most of it in page faults (warmUpMalloc), some in booting the
 * hash thread.
 */
import { Worker } from 'node:worker_threads';
import { startHashThread } from '../cache/file-hasher.js';

/**
 * The size of the block whose release sets glibc's thresholds: the largest
 * that moves them (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit systems),
 * less a margin for the chunk's header and page rounding.
 */
const BLOCK_BYTES = 31 * 1024 * 1024;

let warmedUp: Promise<void> | undefined;

/**
 * Gives this process's malloc the thresholds it otherwise reaches only
 * during its first fills. A fill allocates two short-lived 64 KiB buffers
 * per chunk it receives (Node's socket read and its HTTP parser's copy of the
 * body), freed in bursts by the garbage collector. glibc starts a process
 * with a 128 KiB trim threshold, so each burst hands the top of the heap back
 * to the kernel and the next chunks fault it in again, page by page: profiles
 * of a fresh node's first fill showed more page faults than pages received,
 * most of its system time and about half of its CPU. glibc raises its
 * thresholds by itself (mallopt(3), M_MMAP_THRESHOLD: when a block above the
 * mmap threshold is freed, that threshold becomes its size and the trim
 * threshold twice that), but only once something large happens to be freed,
 * which may be several fills later. So a thread allocates such a block and
 * exits, freeing it, once per process, before the first fill; the process
 * then keeps up to twice BLOCK_BYTES of freed heap for reuse. Elsewhere than
 * glibc it costs a short-lived thread and changes nothing. Never rejects.
 */
export function warmUpMalloc(): Promise<void> {
  warmedUp ??= new Promise<void>((resolve) => {
    try {
      const thread = new Worker(`new ArrayBuffer(${BLOCK_BYTES})`, { eval: true });
      thread.once('exit', () => resolve());
      thread.once('error', () => resolve());
    } catch {
      resolve(); // no thread to be had: the first fills pay, as they would have
    }
  });
  return warmedUp;
}

/** The warm-ups of a node's start; resolves once the first fill can run as a later one would. */
export async function warmUpForFills(): Promise<void> {
  startHashThread();
  await warmUpMalloc();
}
