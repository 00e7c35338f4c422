import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { HashingFailed } from '../errors.js';
import { HASH_STATE, HASH_STATE_BYTES, type HashJob, type HashResult } from './hash-state.js';

/**
 * Hashes a file while it is being written, on a worker thread. A fill's
 * checksum (sha512 runs at well under 1 GB/s on one core) is otherwise the
 * main thread's largest cost, and every byte the node receives, writes and
 * sends waits behind it. The thread reads the file back from the page cache
 * through the fill's descriptor (threads share a process's descriptors) as
 * the writer reports progress, so nothing is copied between threads.
 */
export class FileHasher {
  private readonly state = new BigInt64Array(new SharedArrayBuffer(HASH_STATE_BYTES));
  private readonly result: Promise<HashResult>;

  private constructor(fd: number, algorithm: string, worker: Worker) {
    Atomics.store(this.state, HASH_STATE.end, -1n);
    Atomics.store(this.state, HASH_STATE.wakeAt, HASH_STATE.awake);
    this.result = pool.run(worker, { fd, algorithm, state: this.state.buffer as SharedArrayBuffer });
  }

  /** A hasher on a free hash thread; undefined when every thread is busy (the caller hashes inline). */
  static tryStart(fd: number, algorithm: string): FileHasher | undefined {
    const worker = pool.take();
    return worker === undefined ? undefined : new FileHasher(fd, algorithm, worker);
  }

  /** The writer has written `bytes` bytes from the start. */
  written(bytes: number): void {
    Atomics.store(this.state, HASH_STATE.written, BigInt(bytes));
    // A notify per write woke the thread for every 64 KiB received; it asks for what it will read.
    if (BigInt(bytes) >= Atomics.load(this.state, HASH_STATE.wakeAt)) Atomics.notify(this.state, HASH_STATE.written);
  }

  /** The file is `bytes` long: resolves with its digest (hex) once the thread has read it all. */
  async digest(bytes: number): Promise<string> {
    this.written(bytes);
    Atomics.store(this.state, HASH_STATE.end, BigInt(bytes));
    Atomics.notify(this.state, HASH_STATE.written);
    const result = await this.result;
    if ('digest' in result) return result.digest;
    throw new HashingFailed('error' in result ? result.error : 'it was cancelled');
  }

  /** Stops the thread's work on this file; resolves when it has let go of the descriptor. */
  async cancel(): Promise<void> {
    Atomics.store(this.state, HASH_STATE.end, HASH_STATE.cancelled);
    Atomics.notify(this.state, HASH_STATE.written);
    await this.result;
  }
}

/**
 * Hash threads, started on demand and kept for the next fill. Each costs
 * about 10 MB of memory (a V8 isolate), so there are few: one for every two
 * cores, the other core being the main thread's. A fill that finds them all
 * busy hashes inline instead of waiting. Idle threads do not keep the process alive.
 */
class HashThreadPool {
  private readonly idle: Worker[] = [];
  private started = 0;
  private readonly max = Math.max(1, Math.floor(os.availableParallelism() / 2));

  /** A thread for one job, or undefined when all are busy. */
  take(): Worker | undefined {
    const worker = this.idle.pop();
    if (worker !== undefined) return worker;
    if (this.started >= this.max) return undefined;
    this.started++;
    return new Worker(new URL('./hash-thread.js', import.meta.url));
  }

  run(worker: Worker, job: HashJob): Promise<HashResult> {
    return new Promise((resolve) => {
      worker.ref();
      const settle = (result: HashResult): void => {
        worker.off('error', failed);
        worker.unref();
        this.idle.push(worker);
        resolve(result);
      };
      const failed = (err: Error): void => {
        worker.off('message', settle);
        this.started--;
        resolve({ error: err.message });
      };
      worker.once('message', settle);
      worker.once('error', failed);
      worker.postMessage(job);
    });
  }
}

const pool = new HashThreadPool();

/**
 * Starts a hash thread ahead of the first fill, which would otherwise wait
 * for it to boot: an empty job (nothing written, the end at 0) leaves it idle.
 */
export function startHashThread(): void {
  const worker = pool.take();
  if (worker === undefined) return;
  // All zero: nothing written, the end at 0 (so the descriptor is never read).
  void pool.run(worker, { fd: -1, algorithm: 'sha512', state: new SharedArrayBuffer(HASH_STATE_BYTES) });
}
