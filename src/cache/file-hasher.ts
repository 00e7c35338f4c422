import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { HASH_STATE, type HashJob, type HashResult } from './hash-state.js';

/**
 * Hashes a file while it is being written, on a worker thread. A fill's
 * checksum (sha512 runs at well under 1 GB/s on one core) is otherwise the
 * main thread's largest cost, and every byte the node receives, writes and
 * sends waits behind it. The thread reads the file back from the page cache
 * through the fill's descriptor (threads share a process's descriptors) as
 * the writer reports progress, so nothing is copied between threads.
 */
export class FileHasher {
  private readonly state = new BigInt64Array(new SharedArrayBuffer(16));
  private readonly result: Promise<HashResult>;

  constructor(fd: number, algorithm: string) {
    Atomics.store(this.state, HASH_STATE.end, -1n);
    this.result = pool.run({ fd, algorithm, state: this.state.buffer as SharedArrayBuffer });
  }

  /** The writer has written `bytes` bytes from the start. */
  written(bytes: number): void {
    Atomics.store(this.state, HASH_STATE.written, BigInt(bytes));
    Atomics.notify(this.state, HASH_STATE.written);
  }

  /** The file is `bytes` long: resolves with its digest (hex) once the thread has read it all. */
  async digest(bytes: number): Promise<string> {
    this.written(bytes);
    Atomics.store(this.state, HASH_STATE.end, BigInt(bytes));
    Atomics.notify(this.state, HASH_STATE.written);
    const result = await this.result;
    if ('digest' in result) return result.digest;
    throw new Error('error' in result ? `hashing the image failed: ${result.error}` : 'hashing the image was cancelled');
  }

  /** Stops the thread's work on this file; resolves when it has let go of the descriptor. */
  async cancel(): Promise<void> {
    Atomics.store(this.state, HASH_STATE.end, HASH_STATE.cancelled);
    Atomics.notify(this.state, HASH_STATE.written);
    await this.result;
  }
}

/**
 * Hash threads, started on demand and kept for the next fill: as many as
 * there are cores (more would only share them). Jobs beyond that wait their
 * turn. Idle threads do not keep the process alive.
 */
class HashThreadPool {
  private readonly idle: Worker[] = [];
  private readonly queue: Array<{ job: HashJob; resolve: (result: HashResult) => void }> = [];
  private started = 0;
  private readonly max = Math.max(1, os.availableParallelism());

  run(job: HashJob): Promise<HashResult> {
    return new Promise((resolve) => {
      this.queue.push({ job, resolve });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const worker = this.idle.pop() ?? this.start();
      if (worker === undefined) return;
      const { job, resolve } = this.queue.shift()!;
      worker.ref();
      const settle = (result: HashResult): void => {
        worker.off('message', settle);
        worker.off('error', failed);
        worker.unref();
        this.idle.push(worker);
        resolve(result);
        this.dispatch();
      };
      const failed = (err: Error): void => {
        worker.off('message', settle);
        this.started--;
        resolve({ error: err.message });
        this.dispatch();
      };
      worker.on('message', settle);
      worker.once('error', failed);
      worker.postMessage(job);
    }
  }

  private start(): Worker | undefined {
    if (this.started >= this.max) return undefined;
    this.started++;
    const worker = new Worker(new URL('./hash-thread.js', import.meta.url));
    worker.unref();
    return worker;
  }
}

const pool = new HashThreadPool();
