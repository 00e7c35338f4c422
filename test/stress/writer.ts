/**
 * A writer process of the claim stress test (see harness.ts). Until the stop
 * file appears: claim the image, then, chosen by the seeded PRNG, write a
 * complete image and commit it, write part of one and abort it, write part of
 * one and SIGKILL itself, or write all of one, end() it and SIGKILL itself at
 * some point of the commit. The harness starts a new incarnation after each
 * kill, so that kills land while other writers wait and the janitor cleans.
 */
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import type { CacheWriter } from '../../src/index.js';
import { IMAGE_ID, bump, childRuntime, codeOf, imageName, makeImage, type WriterAction } from './harness.js';

/**
 * Commits are what readers need something to read; kills are what the
 * takeovers and the cleaner need, and each costs a process start (some
 * 0.4 s of CPU: loading the drivers' modules), which is what bounds a run's
 * pace on two cores. With this mix, three writers make some thirty claims,
 * ten of them kills, in three seconds.
 */
const ACTIONS: Readonly<Record<WriterAction, number>> = { commit: 40, abort: 25, 'kill-in-write': 25, 'kill-in-commit': 10 };

/**
 * The first claim of each first-generation writer follows this script (by
 * slot), so that even a short run reaches each path early, while other
 * writers are alive to take over a killed one's file (MILESTONES in
 * harness.ts make sure of it whatever the timing); every later choice is the
 * PRNG's.
 */
const FIRST_ACTIONS: readonly WriterAction[] = ['kill-in-write', 'commit', 'abort', 'kill-in-commit'];

/** When a kill-in-commit writer kills itself, counted from its end() call. */
const KILL_MOMENTS = { 'right after end()': 1, 'after some turns': 2, 'after a timer': 2, 'once end() settled': 1 } as const;

const rt = await childRuntime();
const { cache, prng, counts, config } = rt;
let scripted = config.incarnation === 0 ? FIRST_ACTIONS[config.slot % FIRST_ACTIONS.length] : undefined;

while (!rt.stopped()) {
  let writer: CacheWriter;
  try {
    writer = await cache.openForWrite(IMAGE_ID);
  } catch (err) {
    const code = codeOf(err);
    if (code === 'ERR_IMAGE_BEING_CACHED') bump(counts, 'busy');
    else if (code === 'ERR_IMAGE_ALREADY_CACHED') bump(counts, 'alreadyCached');
    else rt.unexpected('openForWrite', err);
    // Pacing, not a handshake: nothing waits for anything here; it only keeps
    // writers that are turned away from spinning on two cores.
    await sleep(prng.int(0, 1));
    continue;
  }
  await writeOne(writer);
}
await rt.finish();

async function writeOne(writer: CacheWriter): Promise<void> {
  // Errors reach us through the callbacks of write() and end(); without a
  // listener the 'error' event would crash the process instead.
  writer.on('error', () => {});
  const action = scripted ?? prng.pick(ACTIONS);
  scripted = undefined;
  const seed = prng.u64();
  const length = prng.int(config.minImageBytes, config.maxImageBytes);
  const name = imageName(seed);
  rt.log({ ev: 'claim', image: name, length, action, tookOver: writer.tookOver });
  const image = makeImage(seed, length);
  // A partial write stops strictly short of the end, so that what it leaves
  // behind can never pass for a complete image.
  const cut = action === 'commit' || action === 'kill-in-commit' ? length : prng.int(0, length - 1);
  let step = 'write';
  try {
    await writeInPieces(writer, image.subarray(0, cut));
    switch (action) {
      case 'commit':
        step = 'end';
        await endWriter(writer);
        rt.log({ ev: 'commit', image: name });
        break;
      case 'abort':
        step = 'destroy';
        await destroyWriter(writer);
        rt.log({ ev: 'abort', image: name });
        break;
      case 'kill-in-write':
        await rt.killSelf({ ev: 'kill', image: name, phase: 'write', at: `after ${cut} of ${length} bytes`, holding: true });
        break;
      case 'kill-in-commit':
        step = 'end';
        await killDuringCommit(writer, name);
        break;
    }
  } catch (err) {
    rt.unexpected(`${action} (${step})`, err);
    await destroyWriter(writer);
  }
}

/** Several writes at random cut points, yielding between them so that the processes interleave. */
async function writeInPieces(writer: CacheWriter, bytes: Buffer): Promise<void> {
  const cuts = Array.from({ length: prng.int(3, 11) }, () => prng.int(0, bytes.length)).sort((a, b) => a - b);
  let offset = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut <= offset) continue;
    await writeChunk(writer, bytes.subarray(offset, cut));
    offset = cut;
    if (prng.next() < 0.5) await nextTurn();
    else await sleep(prng.int(0, 2));
  }
}

/**
 * end(), then SIGKILL at a moment drawn from KILL_MOMENTS: before the fsync
 * returns, somewhere between the fsync, the publish and the record, or after
 * the commit finished. The log says which, and whether end() had settled.
 */
async function killDuringCommit(writer: CacheWriter, name: string): Promise<void> {
  let settled = 'commit unsettled';
  const ended = endWriter(writer).then(
    () => { settled = 'commit finished'; },
    (err: unknown) => {
      settled = 'commit failed';
      rt.unexpected('kill-in-commit (end)', err);
    },
  );
  const moment = prng.pick(KILL_MOMENTS);
  let at: string = moment;
  switch (moment) {
    case 'right after end()':
      break;
    case 'after some turns': {
      const turns = prng.int(1, 30);
      for (let i = 0; i < turns; i++) await nextTurn();
      at = `${turns} event-loop turns after end()`;
      break;
    }
    case 'after a timer': {
      const ms = prng.int(0, 8);
      await sleep(ms);
      at = `${ms} ms after end()`;
      break;
    }
    case 'once end() settled':
      await ended;
      break;
  }
  // Killed in the same turn as end(), the commit cannot be past its first
  // await (the fsync of the file): the claim is certainly still held.
  // Later, the commit may have published and let go already.
  await rt.killSelf({ ev: 'kill', image: name, phase: 'commit', at: `${at} (${settled})`, holding: moment === 'right after end()' });
}

function writeChunk(writer: CacheWriter, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => writer.write(chunk, (err) => (err ? reject(err) : resolve())));
}

function endWriter(writer: CacheWriter): Promise<void> {
  return new Promise((resolve, reject) => writer.end((err?: Error | null) => (err ? reject(err) : resolve())));
}

/** destroy() and wait for 'close', by which time the partial file has gone to invalid/ and the claim is released. */
async function destroyWriter(writer: CacheWriter): Promise<void> {
  if (writer.closed) return;
  const closed = new Promise<void>((resolve) => writer.once('close', () => resolve()));
  writer.destroy();
  await closed;
}
