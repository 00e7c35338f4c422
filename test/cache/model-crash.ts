/**
 * The crash of model.test.ts: another process caching an image on the test's
 * cache directory (and database), SIGKILLed at a moment the test draws. This
 * module is the test's side (Crasher) and what it shares with that process
 * (model-crasher.ts): the image bytes and the messages.
 *
 * Starting a process costs a few hundred milliseconds of CPU, and every crash
 * kills its process, so each crasher is started as soon as its predecessor has
 * been killed, to load (and say 'ready' over IPC) while the test goes on,
 * rather than when the next crash needs it; the crash only sends it its
 * command.
 */
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { DriverName } from '../../src/index.js';

/** The bytes of an image of the model: a function of its size and seed, so that both processes can make them. */
export function bytesOf(size: number, seed: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (seed * 31 + i * 7) & 0xff;
  return data;
}

/** The crasher's descriptor on which it says where it has halted (see halt() in model-crasher.ts). */
export const HALT_FD = 4;

/**
 * Where a crasher can halt, to be killed there: before it writes the last
 * piece of its image (a partial file: none, some or all but one of its pieces),
 * or right after the publish (the rename), before the record.
 */
export type Halt = 'written' | 'published';

/** The cache options the crasher opens the test's cache with (plain data: they cross IPC). */
export interface CrasherOptions {
  imageCacheDir: string;
  imageCacheDriver?: DriverName;
  imageCacheMaxSize?: number;
  databaseConnection?: string;
  workerSelfReferenceUrl?: string;
}

export interface CrasherCommand {
  type: 'cache';
  options: CrasherOptions;
  id: string;
  size: number;
  seed: number;
  pieces: number;
  halt: Halt | null;
}

export type CrasherReport =
  | { type: 'ready' }
  | { type: 'writing' }
  | { type: 'committing' }
  | { type: 'cached'; done: boolean }
  | { type: 'failed'; error: string };

/**
 * Where the kill lands: `delayMs` after the crasher says it starts caching
 * ('writing': before its claim; the write, the commit or what follows it,
 * depending on the delay), or after it says the commit's fsync has begun
 * ('committing': between the fsync, the publish and the record, or after);
 * or where it halts (see Halt), which no delay can aim at: its write takes
 * microseconds, and the sqlite driver records in the same turn of the event
 * loop as it renames. A kill after the crasher has finished lands on an idle
 * process.
 */
export interface CrashPlan {
  id: string;
  size: number;
  seed: number;
  /** Into how many writes (a turn of the event loop apart) the image is cut. */
  pieces: number;
  at: 'writing' | 'committing' | Halt;
  delayMs: number;
}

export interface CrashResult {
  /** What the crasher had said before it was killed; the kill may have landed later. */
  lastReport: 'writing' | 'committing' | Halt | 'cached';
  /** cacheImageStream's answer, when the crasher finished before the kill. */
  done: boolean | undefined;
}

const CRASHER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'model-crasher.js');

/** One crasher process, and what it has said since its command. */
class CrasherProcess {
  readonly child: ChildProcess;
  /** Resolves once the process has exited and its pipes have closed. */
  readonly closed: Promise<void>;
  private readonly seen = new Map<string, CrasherReport | undefined>();
  private readonly waiters = new Set<() => void>();
  private stderr = '';
  private gone = false;

  constructor(driver: DriverName) {
    // stderr is kept for the error message; HALT_FD is a pipe of its own. Nothing goes to the test's
    // stdout, which the test runner parses.
    this.child = fork(CRASHER, [driver], { stdio: ['ignore', 'ignore', 'pipe', 'ipc', 'pipe'] });
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => {
      this.stderr = (this.stderr + text).slice(-4000);
    });
    // One line, once: the crasher halts only once.
    (this.child.stdio[HALT_FD] as Readable).setEncoding('utf8').on('data', (line: string) => this.saw(line.trim(), undefined));
    this.child.on('message', (report: CrasherReport) => this.saw(report.type, report));
    this.closed = new Promise((resolve) => {
      this.child.once('close', () => {
        this.gone = true;
        this.wake();
        resolve();
      });
      // A process that could not be started emits 'error' (and 'close').
      this.child.once('error', (err) => {
        this.stderr += `\n${err.message}`;
      });
    });
  }

  send(command: CrasherCommand): void {
    this.seen.clear();
    this.child.send(command);
  }

  /**
   * The first of `types` the process has said since the last command, once it
   * has said one; 'gone' if it exits (or fails) first. Never rejects: a wait
   * that lost a race must not become an unhandled rejection.
   */
  async until(...types: Array<CrasherReport['type'] | Halt>): Promise<string> {
    for (;;) {
      for (const type of types) if (this.seen.has(type)) return type;
      if (this.gone || this.seen.has('failed')) return 'gone';
      await new Promise<void>((resolve) => this.waiters.add(resolve));
    }
  }

  has(type: CrasherReport['type'] | Halt): boolean {
    return this.seen.has(type);
  }

  /** The process has exited (whoever ended it). */
  exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  report(type: CrasherReport['type']): CrasherReport | undefined {
    return this.seen.get(type);
  }

  /** Why the process failed: its error report or its exit, and its stderr. */
  failure(doing: string): Error {
    const failed = this.seen.get('failed');
    const why = failed?.type === 'failed' ? failed.error : `exited (code ${this.child.exitCode}, signal ${this.child.signalCode})`;
    return new Error(`the crasher process ${doing}: ${why}${this.stderr === '' ? '' : `\nits stderr:\n${this.stderr}`}`);
  }

  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.closed;
  }

  private saw(type: string, report: CrasherReport | undefined): void {
    this.seen.set(type, report);
    this.wake();
  }

  private wake(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const resolve of waiters) resolve();
  }
}

/**
 * The test's handle on the crasher: crash() has it cache an image and kills
 * it (so no crasher ever keeps a cache open on a directory, or a connection
 * to a database, that a sequence is done with); stop() kills and reaps the
 * successor (an after hook's job, so that no process is left behind however
 * the test ends).
 */
export class Crasher {
  private current: CrasherProcess | undefined;
  private starting: Promise<string> | undefined;

  /** Has the crasher cache the plan's image with `options`, kills it where the plan says, and starts its successor. */
  async crash(options: CrasherOptions, plan: CrashPlan): Promise<CrashResult> {
    const driver = options.imageCacheDriver ?? 'sqlite';
    const proc = await this.ready(driver);
    try {
      proc.send({ type: 'cache', options, id: plan.id, size: plan.size, seed: plan.seed, pieces: plan.pieces, halt: plan.at === 'written' || plan.at === 'published' ? plan.at : null });
      const reached = await proc.until(plan.at, 'cached');
      if (reached === 'gone') throw proc.failure(`ended before it said '${plan.at}'`);
      if (reached !== 'cached' && plan.delayMs > 0) {
        // Whichever comes first: no point in waiting out the delay for a process that has finished.
        await Promise.race([delay(plan.delayMs), proc.until('cached')]);
      }
      // Only our kill may end it: anything else is a failure of its own, which the outcome must not hide.
      if (proc.has('failed') || proc.exited()) throw proc.failure('ended before it was killed');
    } finally {
      await this.replace(proc, driver);
    }
    const lastReport = (['cached', 'published', 'committing', 'written', 'writing'] as const).find((type) => proc.has(type))!;
    const cached = proc.report('cached');
    return { lastReport, done: cached?.type === 'cached' ? cached.done : undefined };
  }

  /** Kills and reaps the crasher, and forgets it. */
  async stop(): Promise<void> {
    const proc = this.current;
    this.current = undefined;
    this.starting = undefined;
    await proc?.kill();
  }

  /** The crasher, once it has said 'ready'; started if there is none. */
  private async ready(driver: DriverName): Promise<CrasherProcess> {
    if (this.current === undefined) this.start(driver);
    const proc = this.current!;
    if ((await this.starting) !== 'ready') {
      // Reaped and forgotten: the next crash tries a new one.
      await this.stop();
      throw proc.failure('did not start');
    }
    return proc;
  }

  private start(driver: DriverName): void {
    this.current = new CrasherProcess(driver);
    this.starting = this.current.until('ready');
  }

  /** Kills `proc` (reaping it) and starts its successor, which loads while the test goes on. */
  private async replace(proc: CrasherProcess, driver: DriverName): Promise<void> {
    this.current = undefined;
    await proc.kill();
    this.start(driver);
  }
}
