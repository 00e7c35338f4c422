/**
 * The claim stress test: several writer processes claim, write, commit, abort
 * and SIGKILL themselves on one image while a janitor cleans, deletes, verifies
 * and prunes, and readers check that every read is one writer's complete bytes
 * with the size the listing gives. runStress() runs one driver for a while and
 * reports what happened, with every broken invariant as a violation.
 *
 * This module has two halves: the harness (runStress, run in the test process)
 * and what the harness shares with its child processes (writer.ts, janitor.ts,
 * reader.ts): the self-verifying image format, the seeded PRNG, the event log
 * and the child runtime. The children import it for the second half only.
 *
 * Every process reports through its own JSON-lines log, appended with
 * appendFileSync, because a SIGKILL loses anything still buffered in memory or
 * in a pipe: what was appended before the kill is on disk. The harness reads
 * the logs once everyone has gone, and judges from them.
 *
 * Coordination is by messages and files, never by sleeping: a child opens its
 * cache, says 'ready' over IPC and waits for 'go' (so that everyone starts
 * together, and so that each writer has a spare standing ready to replace it
 * the moment it kills itself: starting a process costs some 0.4 s of CPU,
 * which would otherwise leave the slot empty); stopping is a file the harness
 * creates and the children look for between operations; the harness then
 * waits for every child to exit.
 *
 * A run exercises every path whatever the timing (see MILESTONES): each path
 * has a file that the first child to take it removes; until then the janitor
 * holds off what would keep a path from being taken (its clean races the
 * takeover of a dead writer's file, its deletes and prunes race the reads),
 * and the run goes on past its time until every file is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash, randomInt } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImageCache, silentLogger, type DriverName } from '../../src/index.js';

/** The one image every process fights over. */
export const IMAGE_ID = 'img';

export type StressDriver = DriverName;

export interface StressOptions {
  driver: StressDriver;
  /** How long writers are respawned and everyone works; then the stop file is created. */
  seconds: number;
  writers: number;
  /** Reader processes (default 2). */
  readers?: number;
  /** Seeds every process's PRNG (uint32); random when absent, and printed in the report to replay a run. */
  seed?: number;
  /** centralized_db only: the PostgreSQL URL. */
  databaseConnection?: string;
  /** centralized_db only: the same URL in every process, so that they act as one node. */
  workerSelfReferenceUrl?: string;
  /** Size of a complete image, in bytes (defaults 64 KiB and 2 MiB). */
  minImageBytes?: number;
  maxImageBytes?: number;
  /** image_cache_max_size: 1 MiB by default, so that prune evicts the larger images and leaves the smaller. */
  maxCacheSize?: number;
  /** How long children have to exit after the stop file appears before they count as hung (default 30 s). */
  stopGraceSeconds?: number;
  /** How long past `seconds` the run goes on for a path (MILESTONES) not yet exercised (default 20 s). */
  overtimeSeconds?: number;
}

export interface StressReport {
  driver: StressDriver;
  seed: number;
  seconds: number;
  writers: number;
  readers: number;
  /** The whole call, process starts and final check included. */
  elapsedSeconds: number;
  /** From the 'go' to the last child's exit. */
  runSeconds: number;
  /** The paths (MILESTONES) not yet exercised when `seconds` were up, for which the run went on. */
  awaitedPastDeadline: Milestone[];
  /** Child processes started: the first ones, and every writer's spares (a spare that was never needed included). */
  processes: number;
  /** Complete reads whose bytes verified. */
  reads: number;
  readsNotCached: number;
  /** Reads whose listed size could be checked (the file stayed in place around the listing), and those skipped because it did not. */
  listingChecks: number;
  listingSkipped: number;
  /** Successful openForWrite calls. */
  claims: number;
  commits: number;
  aborts: number;
  /** Writers that SIGKILLed themselves: while writing, and after calling end(). */
  kills: number;
  killsInWrite: number;
  killsInCommit: number;
  takeovers: number;
  busy: number;
  alreadyCached: number;
  cleans: number;
  deletes: number;
  verifies: number;
  prunes: number;
  violations: string[];
}

// ---- shared with the children: PRNG --------------------------------------------------

/** splitmix32: turns a seed into well-mixed state words. */
function splitmix32(state: number): { value: number; state: number } {
  const next = (state + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return { value: (z ^ (z >>> 16)) >>> 0, state: next };
}

/**
 * sfc32, keyed by a list of integers (run seed, role, slot, incarnation), so
 * that every process of a run draws its own reproducible sequence: the same
 * seed replays the same choices (the timing between processes is the OS's).
 */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(...keys: number[]) {
    let state = 0x2545f491;
    for (const key of keys) state = splitmix32((state ^ key) >>> 0).value;
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      const out = splitmix32(state);
      state = out.state;
      words.push(out.value);
    }
    [this.a, this.b, this.c, this.d] = words as [number, number, number, number];
    for (let i = 0; i < 12; i++) this.uint32();
  }

  uint32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** [0, 1) */
  next(): number {
    return this.uint32() / 2 ** 32;
  }

  /** An integer in [lo, hi], both inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  u64(): bigint {
    return (BigInt(this.uint32()) << 32n) | BigInt(this.uint32());
  }

  /** One of the keys, with probability proportional to its weight. */
  pick<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as Array<[K, number]>;
    let total = 0;
    for (const [, w] of entries) total += w;
    let r = this.next() * total;
    for (const [key, w] of entries) {
      r -= w;
      if (r < 0) return key;
    }
    return entries[entries.length - 1]![0];
  }
}

// ---- shared with the children: the self-verifying image format ------------------------

/** Seed (u64 BE) then total length including the header (u64 BE). */
export const HEADER_BYTES = 16;

/**
 * The body: AES-128-CTR keystream under a key derived from the seed. Any image
 * checks itself from its own header, so a reader needs no word from the writer
 * to tell a complete image from a torn, truncated or spliced one; and seeds are
 * 64-bit random, so two writers never produce the same bytes.
 */
function body(seed: bigint, length: number): Buffer {
  const seedBytes = Buffer.alloc(8);
  seedBytes.writeBigUInt64BE(seed);
  const key = createHash('sha256').update('image-cache claim stress').update(seedBytes).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

export function makeImage(seed: bigint, length: number): Buffer {
  if (length < HEADER_BYTES) throw new RangeError(`an image needs at least ${HEADER_BYTES} bytes`);
  const image = Buffer.allocUnsafe(length);
  image.writeBigUInt64BE(seed, 0);
  image.writeBigUInt64BE(BigInt(length), 8);
  body(seed, length - HEADER_BYTES).copy(image, HEADER_BYTES);
  return image;
}

/** Hex name of an image seed, as the logs and violations show it. */
export function imageName(seed: bigint): string {
  return seed.toString(16).padStart(16, '0');
}

export type ImageCheck = { ok: true; image: string; length: number } | { ok: false; problem: string };

/** Whether `bytes` are exactly one complete image, and whose. */
export function checkImage(bytes: Buffer): ImageCheck {
  if (bytes.length < HEADER_BYTES) return { ok: false, problem: `${bytes.length} bytes, shorter than the ${HEADER_BYTES}-byte header` };
  const seed = bytes.readBigUInt64BE(0);
  const declared = bytes.readBigUInt64BE(8);
  const image = imageName(seed);
  if (declared !== BigInt(bytes.length)) {
    return { ok: false, problem: `image ${image}: ${bytes.length} bytes, but its header says ${declared}` };
  }
  const expected = body(seed, bytes.length - HEADER_BYTES);
  const actual = bytes.subarray(HEADER_BYTES);
  if (!actual.equals(expected)) {
    let at = 0;
    while (at < expected.length && actual[at] === expected[at]) at++;
    return { ok: false, problem: `image ${image} (${bytes.length} bytes): body differs from its seed's bytes from offset ${HEADER_BYTES + at}` };
  }
  return { ok: true, image, length: bytes.length };
}

// ---- shared with the children: the protocol and the runtime --------------------------

export type Role = 'writer' | 'janitor' | 'reader';
const ROLE_KEY: Record<Role, number> = { writer: 1, janitor: 2, reader: 3 };

export type WriterAction = 'commit' | 'abort' | 'kill-in-write' | 'kill-in-commit';

/**
 * The paths every run must exercise, whatever the timing between processes.
 * A file per path, in the run's milestone directory, is removed by the first
 * child to log the event that takes it (milestoneOf), and the run goes on
 * past its time until all are gone: on a loaded machine, where a process
 * start takes seconds, a short run can end before its writers have made a
 * claim each (FIRST_ACTIONS in writer.ts script each path first). Two paths
 * time alone does not bring: a takeover, when the janitor's clean(0) removes
 * a dead writer's file before any writer comes for it, and a read, when
 * deletes and prunes remove each commit before a reader gets to it. The
 * janitor holds those off while their path is pending, so that once a writer
 * dies holding its claim the next claim of the image is certainly a
 * takeover, and once an image is committed it stays until a reader has read it.
 */
export const MILESTONES = ['commits', 'aborts', 'kills', 'takeovers', 'reads'] as const;
export type Milestone = (typeof MILESTONES)[number];

/** The path a logged event takes, if it is one of MILESTONES. */
function milestoneOf(event: ChildEvent): Milestone | undefined {
  switch (event.ev) {
    case 'commit': return 'commits';
    case 'abort': return 'aborts';
    case 'kill': return 'kills';
    case 'claim': return event.tookOver ? 'takeovers' : undefined;
    case 'read': return 'reads';
    default: return undefined;
  }
}

/** What a child is told, as argv[2] (JSON). */
export interface ChildConfig {
  role: Role;
  name: string;
  slot: number;
  incarnation: number;
  seed: number;
  logFile: string;
  stopFile: string;
  /** Holds a file per path of MILESTONES not yet exercised. */
  milestoneDir: string;
  cache: {
    imageCacheDir: string;
    imageCacheDriver: StressDriver;
    imageCacheMaxSize: number;
    databaseConnection?: string;
    workerSelfReferenceUrl?: string;
  };
  minImageBytes: number;
  maxImageBytes: number;
}

/** One line of a child's log. */
export type ChildEvent =
  | { ev: 'start'; pid: number; driver: string }
  | { ev: 'go' }
  | { ev: 'claim'; image: string; length: number; action: WriterAction; tookOver: boolean }
  | { ev: 'commit'; image: string }
  | { ev: 'abort'; image: string }
  /** holding: the claim was certainly still held at the kill (not so once a commit may have released it). */
  | { ev: 'kill'; image: string; phase: 'write' | 'commit'; at: string; holding: boolean }
  | { ev: 'read'; image: string; length: number; listing: 'checked' | 'skipped' }
  | { ev: 'violation'; message: string }
  | { ev: 'error'; op: string; code?: string; message: string; stack?: string }
  | { ev: 'counts'; counts: Record<string, number> }
  | { ev: 'exit' };

/** A log line as written: the event and when (Date.now(), one clock for every process of the machine). */
export type LoggedEvent = ChildEvent & { t: number };

/** Past this many unexpected errors a child gives up (exit 1) rather than fill its log with the same one. */
const MAX_CHILD_ERRORS = 20;

/** Messages between the harness and a child over the IPC channel: the child's 'ready', the harness's answer. */
export type ChildMessage = 'ready' | 'go' | 'stop';

export interface ChildRuntime {
  config: ChildConfig;
  cache: ImageCache;
  prng: Prng;
  /** Counters reported at exit (and by a writer just before it kills itself). */
  counts: Record<string, number>;
  log(event: ChildEvent): void;
  /** Time to finish the current operation and exit: the stop file exists, or the harness is gone. */
  stopped(): boolean;
  /** No child has exercised this path yet (see MILESTONES). */
  pending(milestone: Milestone): boolean;
  /** Logs an error that none of the expected codes explains (a violation). */
  unexpected(op: string, err: unknown): void;
  /** Logs the counts and the kill, then SIGKILLs this process. */
  killSelf(event: Extract<ChildEvent, { ev: 'kill' }>): Promise<never>;
  /** Closes the cache and logs the counts and the exit. */
  finish(): Promise<void>;
}

/** The `code` of an error, if it has one. */
export function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * The child's side: config from argv, the log, crash reporting, its cache,
 * and the start: the child opens its cache (the slow part of starting: loading
 * the drivers' native modules takes a few hundred milliseconds of CPU), says
 * 'ready' and waits for the harness's 'go'. That lets every process start
 * working at once, and lets a spare writer stand ready to replace, the moment
 * it dies, one that kills itself.
 */
export async function childRuntime(): Promise<ChildRuntime> {
  const config = JSON.parse(process.argv[2] ?? '') as ChildConfig;
  const parent = process.ppid;
  const milestoneFile = (milestone: Milestone): string => path.join(config.milestoneDir, milestone);
  const log = (event: ChildEvent): void => {
    fs.appendFileSync(config.logFile, `${JSON.stringify({ t: Date.now(), ...event })}\n`);
    // Logged first: by the time the path is no longer pending, the harness's count of it is on disk.
    const milestone = milestoneOf(event);
    if (milestone !== undefined) fs.rmSync(milestoneFile(milestone), { force: true });
  };
  let errors = 0;
  const unexpected = (op: string, err: unknown): void => {
    const e = err instanceof Error ? err : new Error(String(err));
    const code = codeOf(err);
    log({ ev: 'error', op, ...(code === undefined ? {} : { code }), message: e.message, ...(e.stack === undefined ? {} : { stack: e.stack }) });
    if (++errors >= MAX_CHILD_ERRORS) process.exit(1);
  };
  const crash = (op: string) => (err: unknown): never => {
    unexpected(op, err);
    process.exit(1);
  };
  process.on('uncaughtException', crash('uncaughtException'));
  process.on('unhandledRejection', crash('unhandledRejection'));

  let cache: ImageCache;
  try {
    cache = await ImageCache.create({ ...config.cache, logger: silentLogger });
  } catch (err) {
    return crash('ImageCache.create')(err);
  }
  log({ ev: 'start', pid: process.pid, driver: cache.driver.name });
  let halted = false;
  if (process.send !== undefined && !fs.existsSync(config.stopFile)) {
    const answer = await new Promise<ChildMessage | 'disconnected'>((resolve) => {
      process.once('message', (message: ChildMessage) => resolve(message));
      process.once('disconnect', () => resolve('disconnected'));
      process.send!('ready' satisfies ChildMessage);
    });
    halted = answer !== 'go';
    if (answer === 'go') log({ ev: 'go' });
  }
  // Nothing more comes over the channel, and an open one would keep the process alive.
  if (process.connected) process.disconnect();
  const counts: Record<string, number> = {};
  return {
    config,
    cache,
    prng: new Prng(config.seed, ROLE_KEY[config.role], config.slot, config.incarnation),
    counts,
    log,
    // A new parent means the harness died without stopping us: an orphan must not loop forever.
    stopped: () => halted || process.ppid !== parent || fs.existsSync(config.stopFile),
    pending: (milestone) => fs.existsSync(milestoneFile(milestone)),
    unexpected,
    async killSelf(event) {
      log({ ev: 'counts', counts });
      log(event);
      process.kill(process.pid, 'SIGKILL');
      // SIGKILL cannot be caught: nothing after this line runs.
      return new Promise<never>(() => {});
    },
    async finish() {
      await cache.close();
      log({ ev: 'counts', counts });
      log({ ev: 'exit' });
    },
  };
}

/** Adds 1 to a counter. */
export function bump(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

// ---- the harness ---------------------------------------------------------------------

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SCRIPTS: Record<Role, string> = {
  writer: path.join(HERE, 'writer.js'),
  janitor: path.join(HERE, 'janitor.js'),
  reader: path.join(HERE, 'reader.js'),
};

/** Distinct violations kept in a report; the rest are counted in one last line. */
const MAX_VIOLATIONS = 100;

interface Spawned {
  config: ChildConfig;
  outFile: string;
  child: ChildProcess;
  /** The child said 'ready' (its cache is open). */
  ready: boolean;
  /** The harness said 'go'. */
  released: boolean;
  /** A spare whose writer has died: to be released as soon as it is ready. */
  wanted: boolean;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

/** What the writers' logs say about each image (by name). */
interface ImageInfo {
  writer: string;
  action: WriterAction;
  length: number;
}

/** How long the first processes have to open their caches and say 'ready'. */
const STARTUP_TIMEOUT_MS = 60_000;

export async function runStress(options: StressOptions): Promise<StressReport> {
  const seed = options.seed ?? randomInt(2 ** 32);
  const readers = options.readers ?? 2;
  const minImageBytes = options.minImageBytes ?? 64 * 1024;
  const maxImageBytes = options.maxImageBytes ?? 2 * 1024 * 1024;
  if (!(Number.isSafeInteger(minImageBytes) && minImageBytes >= HEADER_BYTES && maxImageBytes >= minImageBytes)) {
    throw new RangeError(`image sizes must be whole numbers with ${HEADER_BYTES} <= minImageBytes <= maxImageBytes, not ${minImageBytes} and ${maxImageBytes}`);
  }
  if (!(Number.isSafeInteger(seed) && seed >= 0 && seed < 2 ** 32)) throw new RangeError(`seed must be a uint32, not ${seed}`);
  if (!(Number.isSafeInteger(options.writers) && options.writers >= 1 && Number.isSafeInteger(readers) && readers >= 1 && options.seconds > 0)) {
    throw new RangeError(`a run needs seconds > 0, and at least one writer and one reader (whole numbers), not ${options.seconds} s, ${options.writers} writers and ${readers} readers`);
  }
  const started = Date.now();
  // Each distinct violation once, with how often it happened: a reader that
  // keeps finding the same broken file would otherwise bury everything else.
  const seen = new Map<string, number>();
  const violation = (message: string): void => {
    seen.set(message, (seen.get(message) ?? 0) + 1);
  };
  const violationList = (): string[] => {
    const list = [...seen].slice(0, MAX_VIOLATIONS).map(([message, n]) => (n === 1 ? message : `${message} (${n} times)`));
    if (seen.size > MAX_VIOLATIONS) list.push(`... and ${seen.size - MAX_VIOLATIONS} more distinct violations`);
    return list;
  };

  const root = fs.mkdtempSync(path.join(os.tmpdir(), `image-cache-stress-${options.driver}-`));
  const logDir = path.join(root, 'logs');
  const stopFile = path.join(root, 'stop');
  const milestoneDir = path.join(root, 'milestones');
  const pendingMilestones = (): Milestone[] => MILESTONES.filter((m) => fs.existsSync(path.join(milestoneDir, m)));
  const cacheOptions: ChildConfig['cache'] = {
    imageCacheDir: path.join(root, 'cache'),
    imageCacheDriver: options.driver,
    imageCacheMaxSize: options.maxCacheSize ?? 1024 * 1024,
    ...(options.driver === 'centralized_db'
      ? { databaseConnection: options.databaseConnection, workerSelfReferenceUrl: options.workerSelfReferenceUrl ?? 'http://stress-node:9292' }
      : {}),
  };

  const spawned: Spawned[] = [];
  const live = new Set<Spawned>();
  /** Per writer slot, the next incarnation, started ahead so that a killed writer is replaced at once. */
  const spares = new Map<number, Spawned>();
  let phase: 'starting' | 'running' | 'stopping' = 'starting';
  /** Re-checks what the harness is waiting for; called on every 'ready' and every exit. */
  let wake: (() => void) | undefined;

  const send = (entry: Spawned, message: ChildMessage): void => {
    // A child that died meanwhile cannot be told anything; its exit is judged from its log.
    if (entry.child.connected) entry.child.send(message, () => {});
  };

  /** When the stop file is due. */
  let deadline = Infinity;
  /** The quickest any child has gone from spawn to 'ready'. */
  let fastestStartupMs = Infinity;

  const release = (entry: Spawned): void => {
    entry.released = true;
    send(entry, 'go');
    const { role, slot, incarnation } = entry.config;
    // Each writer released gets a spare started behind it, which takes its
    // place the moment it kills itself; unless even the quickest start seen
    // so far could not make it ready before the end, when it would only hold
    // the stop up. While a path is still to be exercised the run goes on
    // past its end, and needs writers alive: a takeover needs one after the
    // kill, and on a loaded machine a start can take longer than the run.
    if (role === 'writer' && (Date.now() + fastestStartupMs < deadline || pendingMilestones().length > 0)) {
      spares.set(slot, start(role, slot, incarnation + 1));
    }
  };

  const start = (role: Role, slot: number, incarnation: number): Spawned => {
    const name = `${role}-${slot}.${incarnation}`;
    const config: ChildConfig = {
      role,
      name,
      slot,
      incarnation,
      seed,
      logFile: path.join(logDir, `${name}.log`),
      stopFile,
      milestoneDir,
      cache: cacheOptions,
      minImageBytes,
      maxImageBytes,
    };
    const outFile = path.join(logDir, `${name}.out`);
    const out = fs.openSync(outFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [SCRIPTS[role], JSON.stringify(config)], { stdio: ['ignore', out, out, 'ipc'] });
    } finally {
      fs.closeSync(out);
    }
    const spawnedAt = Date.now();
    const entry: Spawned = { config, outFile, child, ready: false, released: false, wanted: false };
    spawned.push(entry);
    live.add(entry);
    child.on('error', (err) => violation(`${name}: ${err.message}`));
    child.on('message', (message: ChildMessage) => {
      if (message !== 'ready') return;
      entry.ready = true;
      fastestStartupMs = Math.min(fastestStartupMs, Date.now() - spawnedAt);
      if (phase === 'stopping') send(entry, 'stop');
      else if (entry.wanted) release(entry);
      wake?.();
    });
    child.on('exit', (code, signal) => {
      entry.exit = { code, signal };
      live.delete(entry);
      // A writer that killed itself is replaced by its slot's spare until the time is up; any other exit is judged at the end.
      if (phase === 'running' && role === 'writer' && entry.released && signal === 'SIGKILL' && lastEvent(config.logFile)?.ev === 'kill') {
        const spare = spares.get(slot);
        if (spare !== undefined && !spare.released) {
          spare.wanted = true;
          if (spare.ready) release(spare);
        }
      }
      wake?.();
    });
    return entry;
  };

  /** Resolves true once `condition` holds (checked on each 'ready' and exit), false after `timeoutMs`. */
  const waitFor = (condition: () => boolean, timeoutMs: number): Promise<boolean> => new Promise((resolve) => {
    const timer = setTimeout(() => {
      wake = undefined;
      resolve(false);
    }, timeoutMs);
    const check = (): void => {
      if (!condition()) return;
      clearTimeout(timer);
      wake = undefined;
      resolve(true);
    };
    wake = check;
    check();
  });

  try {
    fs.mkdirSync(logDir);
    fs.mkdirSync(milestoneDir);
    for (const milestone of MILESTONES) fs.writeFileSync(path.join(milestoneDir, milestone), '');
    const first = [start('janitor', 0, 0)];
    for (let i = 0; i < readers; i++) first.push(start('reader', i, 0));
    for (let i = 0; i < options.writers; i++) first.push(start('writer', i, 0));

    // Everyone starts at once, when all have opened their caches: the clock runs from there.
    if (!(await waitFor(() => first.every((e) => e.ready || e.exit !== undefined), STARTUP_TIMEOUT_MS))) {
      for (const e of first) if (!e.ready && e.exit === undefined) violation(`${e.config.name} did not open its cache within ${STARTUP_TIMEOUT_MS / 1000} s`);
    }
    phase = 'running';
    const running = Date.now();
    deadline = running + options.seconds * 1000;
    for (const e of first) {
      if (e.ready) release(e);
      else e.wanted = true;
    }

    // The length of the run: a timer, not a handshake; then, for as long as a
    // path is still to be exercised (up to the overtime), until it has been.
    await new Promise((resolve) => setTimeout(resolve, deadline - Date.now()));
    const awaitedPastDeadline = pendingMilestones();
    if (awaitedPastDeadline.length > 0) await untilEmpty(milestoneDir, (options.overtimeSeconds ?? 20) * 1000);
    phase = 'stopping';
    fs.writeFileSync(stopFile, '');
    // Spares waiting for 'go' get 'stop' (those not ready yet get it when they are, or see the file first).
    for (const e of live) if (e.ready && !e.released) send(e, 'stop');
    const grace = (options.stopGraceSeconds ?? 30) * 1000;
    if (!(await waitFor(() => live.size === 0, grace))) {
      for (const e of live) violation(`${e.config.name} (pid ${e.child.pid}) did not exit within ${grace / 1000} s of the stop signal; killed`);
      await killAll(live);
    }
    const runSeconds = (Date.now() - running) / 1000;

    // ---- what the children logged -----------------------------------------------------
    const totals: Record<string, number> = {};
    const images = new Map<string, ImageInfo>();
    const reads: Array<{ reader: string; image: string; length: number }> = [];
    const claimed: Array<{ writer: string; image: string; t: number }> = [];
    /** Claims certainly held from before `from` until after `to`: claimed, then killed while writing. */
    const held: Array<{ writer: string; image: string; from: number; to: number }> = [];
    let claims = 0, commits = 0, aborts = 0, killsInWrite = 0, killsInCommit = 0, takeovers = 0;
    for (const { config, outFile, exit } of spawned) {
      const events = readEvents(config.logFile, config.name, violation);
      let current: { image: string; t: number } | undefined;
      const startEvent = events.find((e) => e.ev === 'start');
      if (startEvent !== undefined && startEvent.driver !== options.driver) {
        violation(`${config.name}: ImageCache.create fell back from ${options.driver} to ${startEvent.driver}`);
      }
      for (const event of events) {
        switch (event.ev) {
          case 'claim':
            claims++;
            if (event.tookOver) takeovers++;
            images.set(event.image, { writer: config.name, action: event.action, length: event.length });
            current = { image: event.image, t: event.t };
            claimed.push({ writer: config.name, ...current });
            break;
          case 'commit': commits++; break;
          case 'abort': aborts++; break;
          case 'kill':
            if (event.phase === 'write') killsInWrite++;
            else killsInCommit++;
            if (event.holding && current?.image === event.image) held.push({ writer: config.name, image: event.image, from: current.t, to: event.t });
            break;
          case 'read': reads.push({ reader: config.name, image: event.image, length: event.length }); break;
          case 'violation': violation(`${config.name}: ${event.message}`); break;
          case 'error':
            violation(`${config.name}: unexpected error in ${event.op}: ${event.code === undefined ? '' : `[${event.code}] `}${event.message}\n${event.stack ?? ''}`);
            break;
          case 'counts':
            for (const [key, n] of Object.entries(event.counts)) totals[key] = (totals[key] ?? 0) + n;
            break;
          default:
            break;
        }
      }
      const last = events[events.length - 1];
      const selfKilled = exit?.signal === 'SIGKILL' && last?.ev === 'kill';
      if (exit === undefined) {
        violation(`${config.name}: no exit status`);
      } else if (!selfKilled && (exit.code !== 0 || exit.signal !== null)) {
        violation(`${config.name}: exited with ${exit.signal ?? `code ${exit.code}`} (last event ${JSON.stringify(last ?? null)}); output: ${tail(outFile)}`);
      } else if (!selfKilled && last?.ev !== 'exit') {
        violation(`${config.name}: exited without logging its exit (last event ${JSON.stringify(last ?? null)})`);
      }
    }

    // One writer at a time: nobody else's claim is logged while a writer that
    // went on to die holding its claim held it (strictly between its two log
    // lines, so that the millisecond clock cannot make a false alarm).
    for (const hold of held) {
      for (const other of claimed) {
        if (other.t > hold.from && other.t < hold.to) {
          violation(`${other.writer} claimed the image (image ${other.image}) at ${other.t}, while ${hold.writer} held it (claimed at ${hold.from} for image ${hold.image}, killed itself holding it at ${hold.to})`);
        }
      }
    }

    // Every complete image read was written whole by a writer that went on to commit it.
    for (const read of reads) {
      const info = images.get(read.image);
      if (info === undefined) violation(`${read.reader}: read image ${read.image}, which no writer claimed`);
      else if (info.action !== 'commit' && info.action !== 'kill-in-commit') {
        violation(`${read.reader}: read image ${read.image}, which ${info.writer} claimed to ${info.action}, never to commit`);
      }
    }

    await checkFinalState(cacheOptions, images, violation);

    const count = (key: string): number => totals[key] ?? 0;
    return {
      driver: options.driver,
      seed,
      seconds: options.seconds,
      writers: options.writers,
      readers,
      elapsedSeconds: Math.round((Date.now() - started) / 100) / 10,
      runSeconds: Math.round(runSeconds * 10) / 10,
      awaitedPastDeadline,
      processes: spawned.length,
      reads: reads.length,
      readsNotCached: count('readsNotCached'),
      listingChecks: count('listingChecks'),
      listingSkipped: count('listingSkipped'),
      claims,
      commits,
      aborts,
      kills: killsInWrite + killsInCommit,
      killsInWrite,
      killsInCommit,
      takeovers,
      busy: count('busy'),
      alreadyCached: count('alreadyCached'),
      cleans: count('cleans'),
      deletes: count('deletes'),
      verifies: count('verifies'),
      prunes: count('prunes'),
      violations: violationList(),
    };
  } finally {
    phase = 'stopping';
    await killAll(live);
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/**
 * With every process gone: nothing in incomplete/ is held, the active file
 * (if any) is one committed image, verify() makes the listing agree with it,
 * and a second verify() finds nothing left to repair.
 */
async function checkFinalState(cacheOptions: ChildConfig['cache'], images: Map<string, ImageInfo>, violation: (message: string) => void): Promise<void> {
  let cache: ImageCache;
  try {
    cache = await ImageCache.create({ ...cacheOptions, logger: silentLogger });
  } catch (err) {
    violation(`final check: could not open the cache: ${(err as Error).stack ?? String(err)}`);
    return;
  }
  try {
    if (cache.driver.name !== cacheOptions.imageCacheDriver) violation(`final check: ImageCache.create fell back to ${cache.driver.name}`);
    const incompleteDir = path.join(cacheOptions.imageCacheDir, 'incomplete');
    for (const name of fs.readdirSync(incompleteDir)) {
      if (name === IMAGE_ID && (await cache.isBeingCached(name))) violation(`final check: incomplete/${name} is held by a live writer after every process has exited`);
    }

    const activePath = cache.getImageFilepath(IMAGE_ID);
    let activeSize: number | undefined;
    if (fs.existsSync(activePath)) {
      const bytes = fs.readFileSync(activePath);
      activeSize = bytes.length;
      const check = checkImage(bytes);
      if (!check.ok) violation(`final check: the active file is not one complete image: ${check.problem}`);
      else {
        const info = images.get(check.image);
        if (info === undefined || (info.action !== 'commit' && info.action !== 'kill-in-commit')) {
          violation(`final check: the active file is image ${check.image}, which ${info === undefined ? 'no writer claimed' : `${info.writer} claimed to ${info.action}`}`);
        }
      }
    }

    await cache.verify();
    const listed = (await cache.getCachedImages()).filter((image) => image.imageId === IMAGE_ID);
    if (activeSize === undefined && listed.length > 0) violation(`final check: ${IMAGE_ID} has no active file but is listed: ${JSON.stringify(listed)}`);
    if (activeSize !== undefined && (listed.length !== 1 || listed[0]!.size !== activeSize)) {
      violation(`final check: the active file has ${activeSize} bytes but after verify() the listing says ${JSON.stringify(listed)}`);
    }
    const again = await cache.verify();
    if (Object.values(again).some((n) => n !== 0)) violation(`final check: a second verify() still repaired something: ${JSON.stringify(again)}`);

    // And the cleaner can empty what no writer holds.
    await cache.clean(0);
    for (const sub of ['incomplete', 'invalid']) {
      const left = fs.readdirSync(path.join(cacheOptions.imageCacheDir, sub));
      if (left.length > 0) violation(`final check: clean(0) left ${sub}/${left.join(`, ${sub}/`)}`);
    }
  } catch (err) {
    violation(`final check failed: ${(err as Error).stack ?? String(err)}`);
  } finally {
    await cache.close();
  }
}

/** Resolves once `dir` is empty (watched, not polled), or after `timeoutMs`; the caller judges what is left. */
function untilEmpty(dir: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const watcher = fs.watch(dir);
    const done = (): void => {
      clearTimeout(timer);
      watcher.close();
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    const check = (): void => {
      if (fs.readdirSync(dir).length === 0) done();
    };
    watcher.on('change', check);
    watcher.on('error', done);
    // Watching first, then looking: a removal between the two is not missed.
    check();
  });
}

/** SIGKILLs the children still running (each by its own pid) and waits for them to go. */
async function killAll(live: Set<Spawned>): Promise<void> {
  const waits = [...live].map((entry) => new Promise<void>((resolve) => {
    if (entry.exit !== undefined || entry.child.exitCode !== null || entry.child.signalCode !== null) {
      resolve();
      return;
    }
    entry.child.once('exit', () => resolve());
    entry.child.kill('SIGKILL');
  }));
  await Promise.all(waits);
}

/** A child's log, parsed; a line that does not parse is a violation (appends are whole lines, even under SIGKILL). */
function readEvents(logFile: string, name: string, violation: (message: string) => void): LoggedEvent[] {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return [];
  }
  const events: LoggedEvent[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    try {
      events.push(JSON.parse(line) as LoggedEvent);
    } catch {
      violation(`${name}: unparsable log line ${JSON.stringify(line.slice(0, 200))}`);
    }
  }
  return events;
}

function lastEvent(logFile: string): LoggedEvent | undefined {
  const events = readEvents(logFile, '', () => {});
  return events[events.length - 1];
}

/** The end of a child's stdout and stderr, for a violation message. */
function tail(file: string): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return JSON.stringify(text.length > 2000 ? `...${text.slice(-2000)}` : text);
  } catch {
    return '(none)';
  }
}
