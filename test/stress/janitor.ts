/**
 * The janitor process of the claim stress test (see harness.ts). Until the
 * stop file appears: clean(0) every round (it removes invalid/ files and the
 * incomplete/ files of dead writers, racing the writers' takeovers, then runs
 * verify()), and now and then deleteCachedImage, verify() and prune() (the
 * cache's maximum size is below the largest images, so prune evicts some).
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
  await step('cleans', () => cache.clean(0));
  if (prng.next() < P_DELETE) await step('deletes', () => cache.deleteCachedImage(IMAGE_ID));
  if (prng.next() < P_VERIFY) await step('verifies', () => cache.verify());
  if (prng.next() < P_PRUNE) await step('prunes', () => cache.prune());
  // Pacing, not a handshake: a janitor that never paused would clean up every
  // dead writer's file before any writer could take it over.
  await sleep(prng.int(4, 16));
}
await rt.finish();
