import fs from 'node:fs';
import { tryLockExclusive } from '../fs/flock.js';
import type { Logger } from '../log.js';
import type { CleanReport, PruneResult, RecoverReport } from '../types.js';
import type { ImageCache } from './image-cache.js';

export interface MaintenanceOptions {
  /** image_cache_prune_interval, seconds; 0: never on a timer. */
  pruneIntervalSeconds: number;
  /** image_cache_clean_interval, seconds; 0: never on a timer. */
  cleanIntervalSeconds: number;
  log: Logger;
}

/** How often a maintenance call asked for by a client tries again for the lock another process holds. */
const LOCK_RETRY_MS = 50;
/** How long it waits for it before it gives up. */
const LOCK_WAIT_MS = 60_000;

/**
 * Prune and clean without cron (Glance needs cron or API calls for both, and
 * operators have filled disks for want of them): on timers, and a prune as
 * soon as a commit takes the cache past image_cache_max_size. Never two at
 * once, in this process or any other on the directory: each holds an
 * exclusive flock(2) on the cache directory itself while it runs (a lock on
 * the directory needs no file of its own, which Glance's tools would list).
 */
export class Maintenance {
  private readonly timers: NodeJS.Timeout[] = [];
  private running: Promise<unknown> = Promise.resolve();
  /** The size check (and prune) of the last afterCommit, for close() to wait for. */
  private checking: Promise<unknown> = Promise.resolve();
  private pruneWanted = false;
  private closed = false;

  constructor(
    private readonly cache: ImageCache,
    private readonly options: MaintenanceOptions,
  ) {}

  /** Starts the timers (they do not keep the process alive). */
  start(): void {
    const every = (seconds: number, task: () => Promise<unknown>): void => {
      if (seconds <= 0) return;
      const timer = setInterval(() => void task().catch((err: unknown) => this.options.log.error({ err }, 'cache maintenance failed')), seconds * 1000);
      timer.unref();
      this.timers.push(timer);
    };
    every(this.options.pruneIntervalSeconds, () => this.run('prune', false));
    every(this.options.cleanIntervalSeconds, () => this.run('clean', false));
  }

  /** A commit may have taken the cache past its size: prune if it did (once, however many commits ask meanwhile). */
  afterCommit(): void {
    if (this.pruneWanted || this.closed) return;
    this.pruneWanted = true;
    this.checking = this.cache.getCacheSize().then(
      (size) => {
        if (size <= this.cache.options.imageCacheMaxSize) {
          this.pruneWanted = false;
          return undefined;
        }
        return this.run('prune', false).finally(() => {
          this.pruneWanted = false;
        });
      },
      (err: unknown) => {
        this.pruneWanted = false;
        this.options.log.error({ err }, 'could not read the cache size after a commit');
      },
    );
  }

  /** A prune now, waiting for one running elsewhere to finish first. */
  prune(): Promise<PruneResult> {
    return this.run('prune', true) as Promise<PruneResult>;
  }

  /** A clean (and verify) now, waiting for maintenance running elsewhere to finish first. */
  clean(): Promise<CleanReport> {
    return this.run('clean', true) as Promise<CleanReport>;
  }

  /** The recovery of a process starting on the directory (see ImageCache.recover), waiting for maintenance running elsewhere. */
  recover(): Promise<RecoverReport> {
    return this.run('recover', true) as Promise<RecoverReport>;
  }

  /** Stops the timers and waits for what is running. */
  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.checking;
    await this.running.catch(() => {});
  }

  /**
   * One task at a time in this process (chained), and under the directory's
   * lock across processes. A timer's task skips its turn when another
   * process holds the lock (it will come again); a client's waits for it.
   */
  private run(task: 'prune' | 'clean' | 'recover', wait: boolean): Promise<PruneResult | CleanReport | RecoverReport | undefined> {
    const next = this.running.catch(() => {}).then(async () => {
      const release = await this.lock(wait);
      if (release === undefined) return undefined;
      try {
        if (task === 'prune') return await this.cache.prune();
        return task === 'clean' ? await this.cache.clean() : await this.cache.recover();
      } finally {
        release();
      }
    });
    this.running = next;
    return next;
  }

  private async lock(wait: boolean): Promise<(() => void) | undefined> {
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      const fd = fs.openSync(this.cache.options.imageCacheDir, 'r');
      if (tryLockExclusive(fd)) return () => fs.closeSync(fd);
      fs.closeSync(fd);
      if (!wait) return undefined;
      if (Date.now() > deadline) throw new Error(`another process has held the cache's maintenance lock for ${LOCK_WAIT_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
    }
  }
}
