/**
 * The janitor process of the claim stress test (see harness.ts). Until the
 * stop file appears: clean(0) every round (it removes invalid/ files and the
 * incomplete/ files of dead writers, racing the writers' takeovers, then runs
 * verify()), and now and then deleteCachedImage, verify() and prune() (the
 * cache's maximum size is below the largest images, so prune evicts some).
 * Until a writer has taken over a dead writer's file it does not clean, and
 * until a reader has read an image it neither deletes nor prunes: those are
 * the races that could leave a run without a takeover or a read (MILESTONES
 * in harness.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { IMAGE_ID, bump, childRuntime } from './harness.js';

/**
 * Chances per round. Deletes make room for the next commit; they must be
 * rare enough that readers find the image cached much of the time.
 */
const P_DELETE = 0.35;
const P_VERIFY = 0.15;
const P_PRUNE = 0.1;

const rt = await childRuntime();
const { cache, prng, counts } = rt;

async function step(op: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
    bump(counts, op);
  } catch (err) {
    rt.unexpected(op, err);
  }
}

while (!rt.stopped()) {
  if (!rt.pending('takeovers')) await step('cleans', () => cache.clean(0));
  // Drawn whether or not held off, so that the same seed makes the same choices.
  const deleting = prng.next() < P_DELETE;
  const verifying = prng.next() < P_VERIFY;
  const pruning = prng.next() < P_PRUNE;
  const readsPending = rt.pending('reads');
  if (deleting && !readsPending) await step('deletes', () => cache.deleteCachedImage(IMAGE_ID));
  if (verifying) await step('verifies', () => cache.verify());
  if (pruning && !readsPending) await step('prunes', () => cache.prune());
  // Pacing, not a handshake: a janitor that never paused would clean up every
  // dead writer's file before any writer could take it over.
  await sleep(prng.int(4, 16));
}
await rt.finish();
