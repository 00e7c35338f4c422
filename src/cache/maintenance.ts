import fs from 'node:fs';
import { MaintenanceLockTimeout } from '../errors.js';
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

/** How often a task waiting for the lock another process holds tries again. */
const LOCK_RETRY_MS = 50;
/** How long a client's task (and the prune a closing cache still owes) waits for it before it gives up. */
const LOCK_WAIT_MS = 60_000;

type Task = 'prune' | 'clean' | 'recover';
type TaskResult = PruneResult | CleanReport | RecoverReport;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Prune and clean without cron (Glance needs cron or API calls for both, and
 * operators have filled disks for want of them), in one place for the
 * library, the CLI and the node: a prune after every commit that takes the
 * cache past image_cache_max_size, and, when started, timers. Never two at
 * once, in this process or any other on the directory: each holds an
 * exclusive flock(2) on the cache directory itself while it runs (a lock on
 * the directory needs no file of its own, which Glance's tools would list).
 *
 * The prune after a commit is owed until a size check or a prune that began
 * after the commit has run: commits that arrive while one runs make it run
 * again when it ends, and while another process holds the lock it is tried
 * again until it is taken or the cache is found within its limit (the other
 * process's prune covered it). So once every commit has settled (close()
 * waits for what is owed), the cache is at or under its limit, whichever
 * process committed and however the commits interleaved.
 */
export class Maintenance {
  private timers: NodeJS.Timeout[] = [];
  /** Tasks of this process, one after another. */
  private running: Promise<unknown> = Promise.resolve();
  /** A commit arrived that no size check or prune begun since has covered. */
  private owed = false;
  /** The loop paying what is owed, while one runs. */
  private settling: Promise<void> | undefined;
  private closing = false;

  constructor(
    private readonly cache: ImageCache,
    private options: MaintenanceOptions,
  ) {}

  /** Starts the timers (they do not keep the process alive); the intervals given here replace the constructor's. */
  start(intervals: Partial<Pick<MaintenanceOptions, 'pruneIntervalSeconds' | 'cleanIntervalSeconds'>> = {}): void {
    this.options = { ...this.options, ...intervals };
    const every = (seconds: number, task: Task): void => {
      if (seconds <= 0) return;
      const timer = setInterval(() => void this.run(task, 'try').catch((err: unknown) => this.options.log.error({ err, task }, 'cache maintenance failed')), seconds * 1000);
      timer.unref();
      this.timers.push(timer);
    };
    every(this.options.pruneIntervalSeconds, 'prune');
    every(this.options.cleanIntervalSeconds, 'clean');
  }

  /** A commit was published: the cache may be past its limit. Returns at once; settled() says when it is paid. */
  afterCommit(): void {
    this.owed = true;
    this.settling ??= this.settle().finally(() => {
      this.settling = undefined;
    });
  }

  /** Resolves once the prunes owed for the commits so far have run. */
  async settled(): Promise<void> {
    while (this.settling !== undefined) await this.settling;
  }

  /** A prune now, waiting for one running elsewhere to finish first. */
  prune(): Promise<PruneResult> {
    return this.run('prune', 'wait') as Promise<PruneResult>;
  }

  /** A clean (and verify) now, waiting for maintenance running elsewhere to finish first. */
  clean(): Promise<CleanReport> {
    return this.run('clean', 'wait') as Promise<CleanReport>;
  }

  /** The recovery of a process starting on the directory (see ImageCache.recover), waiting for maintenance running elsewhere. */
  recover(): Promise<RecoverReport> {
    return this.run('recover', 'wait') as Promise<RecoverReport>;
  }

  /** Stops the timers and waits for what is running and for what the commits so far are owed. */
  async close(): Promise<void> {
    this.closing = true;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    await this.settled();
    await this.running.catch(() => {});
  }

  /** The cache was opened again after a close(). */
  reopen(): void {
    this.closing = false;
  }

  /** Pays what the commits are owed, again for as long as commits arrive meanwhile. */
  private async settle(): Promise<void> {
    while (this.owed) {
      this.owed = false;
      try {
        await this.pruneIfOverLimit();
      } catch (err) {
        this.options.log.error({ err }, 'could not prune the cache after a commit');
      }
    }
  }

  /**
   * Prunes if the cache is past its limit. While another process holds the
   * lock, waits for it (a lock attempt every LOCK_RETRY_MS, not a look at
   * the size: that lists the whole cache) rather than skipping; the prune
   * that then runs evicts only what is still over, if that process's own
   * prune left anything. After LOCK_WAIT_MS it looks at the size again and
   * goes on waiting; a closing cache gives up then, saying so.
   */
  private async pruneIfOverLimit(): Promise<void> {
    while ((await this.cache.getCacheSize()) > this.cache.options.imageCacheMaxSize) {
      try {
        await this.run('prune', 'wait');
        return;
      } catch (err) {
        if (!(err instanceof MaintenanceLockTimeout)) throw err;
        if (this.closing) {
          this.options.log.warn({ dir: this.cache.options.imageCacheDir, waitedMs: LOCK_WAIT_MS }, 'closing over image_cache_max_size: another process kept the maintenance lock; its next prune will bring the cache down');
          return;
        }
      }
    }
  }

  /**
   * One task at a time in this process (chained), and under the directory's
   * lock across processes. With 'try', undefined when another process holds
   * the lock; with 'wait', waits up to LOCK_WAIT_MS for it.
   */
  private run(task: Task, mode: 'try' | 'wait'): Promise<TaskResult | undefined> {
    const next = this.running.catch(() => {}).then(async () => {
      const release = await this.lock(mode);
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

  private async lock(mode: 'try' | 'wait'): Promise<(() => void) | undefined> {
    const dir = this.cache.options.imageCacheDir;
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      const fd = fs.openSync(dir, 'r');
      if (tryLockExclusive(fd)) return () => fs.closeSync(fd);
      fs.closeSync(fd);
      if (mode === 'try') return undefined;
      if (Date.now() > deadline) throw new MaintenanceLockTimeout(dir, LOCK_WAIT_MS / 1000);
      await sleep(LOCK_RETRY_MS);
    }
  }
}
