/**
 * Library benchmark: the phases of the Glance peer's libbench.py (fill N images
 * of SIZE bytes, read all, list, size, prune half, queue N, list queue), timed
 * for our driver, beside a floor (a plain loop of write + fsync + rename +
 * directory fsync of the same files, interleaved with ours block by block) and, with --vs-glance, Glance's own
 * ImageCache run in the same invocation. Prints JSON; ratios are peer / ours
 * (above 1 means we are faster).
 *
 *   npm run bench:lib -- --n 20000 --size 4096 --vs-glance [--driver sqlite|xattr|centralized_db]
 *     [--database-connection postgresql://... --worker-self-reference-url URL] [--no-floor] [--keep]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ImageCache, silentLogger, optionsFromEnv, DRIVER_NAMES, type DriverName } from '../src/index.js';

type Phases = Record<string, number>;

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '2000' },
    size: { type: 'string', default: '4096' },
    driver: { type: 'string', default: 'sqlite' },
    'vs-glance': { type: 'boolean', default: false },
    'glance-script': { type: 'string' },
    'glance-python': { type: 'string', default: '/usr/bin/python3' },
    dir: { type: 'string', default: os.tmpdir() },
    keep: { type: 'boolean', default: false },
    'no-floor': { type: 'boolean', default: false },
    'database-connection': { type: 'string' },
    'worker-self-reference-url': { type: 'string' },
  },
});

const n = positiveInt('n', values.n);
const size = positiveInt('size', values.size);
const driver = values.driver as DriverName;
if (!DRIVER_NAMES.includes(driver)) fail(`--driver must be one of ${DRIVER_NAMES.join(', ')}`);
const id = (prefix: string, i: number): string => `${prefix}-${String(i).padStart(6, '0')}`;

async function timed<T>(out: Phases, phase: string, fn: () => Promise<T>): Promise<T> {
  const t = performance.now();
  const result = await fn();
  out[phase] = round((performance.now() - t) / 1000);
  return result;
}

/** Fill is measured in blocks, each followed by the same block of the floor, so that both see the same disk weather. */
const FILL_BLOCKS = 10;

async function runOurs(data: Buffer, floor: Floor): Promise<Phases> {
  const dir = fs.mkdtempSync(path.join(values.dir!, 'image-cache-libbench-'));
  const out: Phases = {};
  const cache = await ImageCache.create({
    // centralized_db takes IMAGE_CACHE_DATABASE_CONNECTION and IMAGE_CACHE_WORKER_SELF_REFERENCE_URL from the environment or the flags.
    ...optionsFromEnv(),
    ...(values['database-connection'] ? { databaseConnection: values['database-connection'] } : {}),
    ...(values['worker-self-reference-url'] ? { workerSelfReferenceUrl: values['worker-self-reference-url'] } : {}),
    imageCacheDir: dir,
    imageCacheDriver: driver,
    imageCacheMaxSize: Math.floor((n * size) / 2),
    logger: silentLogger,
  }, { pruneAfterCommit: false }); // the fill fills past the limit, and prune_half measures the prune
  try {
    if (cache.driver.name !== driver) fail(`driver ${driver} fell back to ${cache.driver.name}`);
    let fill = 0;
    for (let block = 0; block < FILL_BLOCKS; block++) {
      const from = Math.floor((block * n) / FILL_BLOCKS);
      const to = Math.floor(((block + 1) * n) / FILL_BLOCKS);
      const t = performance.now();
      for (let i = from; i < to; i++) await cache.cacheImageStream(id('img', i), [data]);
      fill += performance.now() - t;
      if (!values['no-floor']) {
        floor.fill(from, to);
        await floor.fillAsync(from, to);
      }
    }
    out.fill = round(fill / 1000);
    await timed(out, 'read_all', async () => {
      for (let i = 0; i < n; i++) {
        const stream = await cache.openForRead(id('img', i));
        for await (const _chunk of stream);
      }
    });
    const images = await timed(out, 'list', () => cache.getCachedImages());
    if (images.length !== n) fail(`listed ${images.length} images, expected ${n}`);
    await timed(out, 'size_call', () => cache.getCacheSize());
    const pruned = await timed(out, 'prune_half', () => cache.prune());
    out.pruned = pruned.totalFilesPruned;
    await timed(out, 'queue', async () => {
      for (let i = 0; i < n; i++) await cache.queueImage(id('q', i));
    });
    const queued = await timed(out, 'list_queue', () => cache.getQueuedImages());
    if (queued.length !== n) fail(`listed ${queued.length} queued images, expected ${n}`);
  } finally {
    await cache.close();
    if (!values.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

/**
 * The least any durable fill can do: write, fsync, rename into place, fsync
 * the directory, in a plain blocking loop. `fillAsync` is the same loop with
 * the two fsyncs handed to the thread pool, as a server must (an fsync can
 * take seconds; the event loop may not wait for it): the difference between
 * the two is what that hand-off costs on this machine.
 */
class Floor {
  private readonly dir = fs.mkdtempSync(path.join(values.dir!, 'image-cache-floor-'));
  private readonly dirFd: number;
  seconds = 0;
  asyncSeconds = 0;

  constructor(private readonly data: Buffer) {
    fs.mkdirSync(path.join(this.dir, 'incomplete'));
    this.dirFd = fs.openSync(this.dir, 'r');
  }

  fill(from: number, to: number): void {
    const t = performance.now();
    for (let i = from; i < to; i++) {
      const tmp = path.join(this.dir, 'incomplete', id('img', i));
      const fd = fs.openSync(tmp, 'wx');
      fs.writeSync(fd, this.data);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, path.join(this.dir, id('img', i)));
      fs.fsyncSync(this.dirFd);
    }
    this.seconds += (performance.now() - t) / 1000;
  }

  async fillAsync(from: number, to: number): Promise<void> {
    const t = performance.now();
    for (let i = from; i < to; i++) {
      const tmp = path.join(this.dir, 'incomplete', id('async', i));
      const fd = fs.openSync(tmp, 'wx');
      fs.writeSync(fd, this.data);
      await fsyncAsync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, path.join(this.dir, id('async', i)));
      await fsyncAsync(this.dirFd);
    }
    this.asyncSeconds += (performance.now() - t) / 1000;
  }

  dispose(): void {
    fs.closeSync(this.dirFd);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function runGlance(): Phases | { error: string } {
  const glanceDriver = driver === 'centralized_db' ? 'centralized_db' : driver;
  const script = values['glance-script'] ?? findGlanceScript();
  if (script === undefined) return { error: 'peers/glance/libbench.py not found beside the repository (pass --glance-script)' };
  try {
    const output = execFileSync(values['glance-python']!, [script, glanceDriver, String(n), String(size)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TMPDIR: values.dir },
      maxBuffer: 16 * 1024 * 1024,
    });
    const line = output.trim().split('\n').pop() ?? '';
    return JSON.parse(line) as Phases;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    return { error: `Glance's libbench failed (is Debian's glance-api installed?): ${stderr.trim().split('\n').pop() ?? (err as Error).message}` };
  }
}

function findGlanceScript(): string | undefined {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const root of [process.cwd(), path.resolve(here, '../..')]) {
    const candidate = path.resolve(root, '../shared/peers/glance/libbench.py');
    if (fs.existsSync(candidate)) return candidate;
  }
  return undefined;
}

async function main(): Promise<void> {
  const data = randomBytes(size);
  const floor = new Floor(data);
  let ours: Phases;
  try {
    ours = await runOurs(data, floor);
  } finally {
    floor.dispose();
  }
  const report: Record<string, unknown> = { driver, n, size, ours };
  if (!values['no-floor']) {
    Object.assign(report, {
      floor: { fill: round(floor.seconds), fill_async_fsync: round(floor.asyncSeconds) },
      fill_vs_floor: round(ours.fill! / floor.seconds),
      fill_vs_async_floor: round(ours.fill! / floor.asyncSeconds),
    });
  }
  if (values['vs-glance']) {
    const glance = runGlance();
    report.glance = glance;
    if (!('error' in glance)) {
      const ratios: Phases = {};
      for (const phase of ['fill', 'read_all', 'list', 'size_call', 'prune_half', 'queue', 'list_queue']) {
        const theirs = glance[phase];
        const mine = ours[phase];
        if (theirs !== undefined && mine !== undefined && mine > 0) ratios[phase] = round(theirs / mine);
      }
      report.glance_over_ours = ratios;
    }
  }
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

function positiveInt(name: string, raw: string | undefined): number {
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value <= 0) fail(`--${name} must be a positive integer, not ${JSON.stringify(raw)}`);
  return value;
}

function fsyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
}

function round(x: number): number {
  return Math.round(x * 10000) / 10000;
}

function fail(message: string): never {
  process.stderr.write(`bench:lib: ${message}\n`);
  process.exit(2);
}

await main();
