import fs from 'node:fs';
import { CacheNotConfigured } from '../errors.js';
import type { CacheIo } from './io.js';

/**
 * fsync of one directory, shared by everyone who needs it. A rename is durable
 * only once its directory is synced; when several commits finish at once, one
 * fsync that starts after all their renames covers them all, so callers that
 * arrive while a sync runs join the single next one instead of queueing their own.
 */
export class DirectorySync {
  private fd: number | undefined;
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;

  constructor(
    readonly path: string,
    private readonly io: CacheIo,
  ) {}

  open(): void {
    if (this.fd === undefined) this.fd = fs.openSync(this.path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  }

  /** Resolves once an fsync of the directory that began after this call has finished. */
  sync(): Promise<void> {
    if (this.running === undefined) {
      this.running = this.run();
      return this.running;
    }
    // The running sync may have started before the caller's rename: wait for the next one.
    this.next ??= this.running.then(noop, noop).then(() => {
      this.next = undefined;
      this.running = this.run();
      return this.running;
    });
    return this.next;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.running, this.next]);
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private async run(): Promise<void> {
    try {
      if (this.fd === undefined) throw new CacheNotConfigured(`the directory ${this.path}, for syncing,`);
      await this.io.fsync(this.fd);
    } finally {
      this.running = undefined;
    }
  }
}

function noop(): void {}
