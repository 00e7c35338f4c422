/**
 * A worker thread of FileHasher: hashes a file that the main thread is still
 * writing, reading what has been written (the `written` counter it shares
 * with the main thread) and waiting on that counter for more.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { HASH_STATE, type HashJob, type HashResult } from './hash-state.js';

const CHUNK = 1024 * 1024;
const buffer = Buffer.allocUnsafeSlow(CHUNK);

function run(job: HashJob): HashResult {
  const state = new BigInt64Array(job.state);
  const hash = createHash(job.algorithm);
  let position = 0;
  for (;;) {
    const written = Number(Atomics.load(state, HASH_STATE.written));
    const end = Atomics.load(state, HASH_STATE.end);
    if (end === HASH_STATE.cancelled) return { cancelled: true };
    // A whole chunk, or the rest once the file is complete.
    if (written - position >= CHUNK || (end >= 0n && position < written)) {
      const n = fs.readSync(job.fd, buffer, 0, Math.min(CHUNK, written - position), position);
      if (n === 0) return { error: `the file ended at byte ${position} of the ${written} written` };
      hash.update(buffer.subarray(0, n));
      position += n;
      continue;
    }
    if (end >= 0n && position >= Number(end)) return { digest: hash.digest('hex'), bytes: position };
    // Caught up: sleep until the main thread has written a chunk more, ends or cancels (it
    // notifies on `written` then). Asked before the wait, which returns at once if `written` moved.
    Atomics.store(state, HASH_STATE.wakeAt, BigInt(position + CHUNK));
    Atomics.wait(state, HASH_STATE.written, BigInt(written), 1000);
    Atomics.store(state, HASH_STATE.wakeAt, HASH_STATE.awake);
  }
}

parentPort!.on('message', (job: HashJob) => {
  let result: HashResult;
  try {
    result = run(job);
  } catch (err) {
    result = { error: (err as Error).message };
  }
  parentPort!.postMessage(result);
});
