import { MetadataStoreUnavailable } from '../errors.js';
import type { Logger } from '../log.js';
import type { MetadataRepairs } from './metadata-index.js';

/** The first wait before trying an unavailable metadata store again, and the cap the waits double up to. */
const OUTAGE_BASE_DELAY_MS = 100;
const OUTAGE_MAX_DELAY_MS = 2_000;

/**
 * How long to wait before the n-th try (1-based) at a metadata store found
 * unavailable: doubling up to a cap that keeps recovery within seconds of the
 * store's return, while a store that stays down costs one failed connection
 * attempt per cap. Half of it is random, so that the processes and nodes that
 * all saw the same outage do not all come back at the same instant.
 */
export function outageRetryDelay(attempt: number): number {
  const ceiling = Math.min(OUTAGE_MAX_DELAY_MS, OUTAGE_BASE_DELAY_MS * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/**
 * Makes good, once the metadata store is back, what it missed while it was
 * unavailable: the record of an image committed meanwhile (its file was
 * published, its record failed), the removal of an image deleted meanwhile
 * (its file went, its record stayed), and whatever a crash of the store lost
 * of the writes it had already acknowledged (they are written without
 * waiting for the server's WAL flush). Each of these is a disagreement
 * between the files and the records, which is what repairMetadata() (verify's
 * repair) mends from the files, safely beside commits and deletes in flight;
 * so after an outage it is run once, when the store answers again, instead of
 * waiting for the cleaner or an operator.
 *
 * Tries are spaced by outageRetryDelay; the timer does not keep the process
 * alive. Reads (hits) are not this class's business: the access batch keeps
 * and rewrites them itself.
 */
export class StoreRecovery {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  /** The store was found unavailable again while a repair ran: once it succeeds, run another. */
  private again = false;
  private attempts = 0;
  private closed = false;

  constructor(
    private readonly repair: () => Promise<MetadataRepairs>,
    private readonly log: Logger,
    private readonly driverName: () => string,
  ) {}

  /** Whether a repair is waiting for the store (for tests and close()). */
  get pending(): boolean {
    return this.timer !== undefined || this.running !== undefined;
  }

  /** The store was found unavailable: repair once it is back (one repair however many failures ask for it). */
  needed(): void {
    if (this.closed) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.schedule();
  }

  /** Stops trying (the store is being closed); waits for a repair under way. */
  async close(): Promise<void> {
    this.closed = true;
    const unfinished = this.pending;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    if (unfinished) this.log.warn({ driver: this.driverName() }, 'closing before the metadata store was found back: what it missed while unavailable is left to verify()');
  }

  private schedule(): void {
    if (this.timer !== undefined || this.closed) return;
    this.attempts++;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const running = this.run().finally(() => {
        if (this.running === running) this.running = undefined;
      });
      this.running = running;
    }, outageRetryDelay(this.attempts));
    this.timer.unref();
  }

  private async run(): Promise<void> {
    this.again = false;
    let repairs: MetadataRepairs;
    try {
      repairs = await this.repair();
    } catch (err) {
      // The failed try itself reported the store unavailable: the next try covers that.
      this.again = false;
      if (err instanceof MetadataStoreUnavailable) {
        this.log.debug({ driver: this.driverName(), attempt: this.attempts, err }, 'metadata store still unavailable');
        this.schedule();
      } else if (!this.closed) {
        this.attempts = 0;
        this.log.error({ driver: this.driverName(), err }, 'could not repair the metadata after the store came back; verify() will');
      }
      return;
    }
    this.attempts = 0;
    this.log.info({ driver: this.driverName(), ...repairs }, 'metadata store is back; recorded what it missed');
    if (this.again) this.schedule();
  }
}
