/**
 * The claim stress test, short: a few seconds per driver of writers that
 * commit, abort and SIGKILL themselves on one image while a janitor cleans and
 * deletes and readers verify every byte (harness.ts). No violation, and every
 * path exercised: commits, aborts, kills, takeovers and verified reads (the
 * harness sees to it that each happens, whatever the timing: MILESTONES in
 * harness.ts; if one cannot happen, the run ends without it and this fails).
 * `npm run test:stress` runs the same for longer (run.ts).
 *
 * IMAGE_CACHE_STRESS_SEED=N replays a report's seed: the same choices in every
 * process (the interleaving is the OS's).
 *
 * Without a PostgreSQL server the centralized_db case is skipped with one line
 * saying why, except under CI (CI=true), where that is a failure.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ADMIN_URL, TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { runStress, type StressOptions, type StressReport } from './harness.js';

const SECONDS = 3;
const WRITERS = 3;
/** Generous: a run takes SECONDS plus process starts and the final check; a hang is what this catches. */
const TIMEOUT_MS = 60_000;
/** Past its SECONDS, how long a run goes on for a path not yet exercised: well inside TIMEOUT_MS, so that a path that never comes fails as such. */
const OVERTIME_SECONDS = 20;

const seedText = process.env.IMAGE_CACHE_STRESS_SEED;
const seed = seedText === undefined || seedText === '' ? undefined : Number(seedText);
if (seed !== undefined && !(Number.isSafeInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
  throw new RangeError(`IMAGE_CACHE_STRESS_SEED must be an integer from 0 to ${2 ** 32 - 1}, not ${JSON.stringify(seedText)}`);
}

const unreachable = await unreachableReason();
const pgSkip = unreachable !== undefined && process.env.CI !== 'true'
  ? `no PostgreSQL server at ${ADMIN_URL} (${unreachable}); set IMAGE_CACHE_TEST_PG_URL to use another`
  : false;

async function stress(t: TestContext, options: Omit<StressOptions, 'seconds' | 'writers' | 'overtimeSeconds' | 'seed'>): Promise<void> {
  const report = await runStress({ seconds: SECONDS, writers: WRITERS, overtimeSeconds: OVERTIME_SECONDS, seed, ...options });
  t.diagnostic(JSON.stringify(report));
  assertClean(report);
}

function assertClean(report: StressReport): void {
  const whole = JSON.stringify(report, null, 2);
  assert.deepEqual(report.violations, [], `violations (replay: npm run test:stress -- --driver ${report.driver} --seconds ${report.seconds} --writers ${report.writers} --seed ${report.seed}):\n${whole}`);
  for (const key of ['commits', 'aborts', 'kills', 'takeovers', 'reads'] as const) {
    assert.ok(report[key] > 0, `the run exercised no ${key}:\n${whole}`);
  }
}

describe('claim stress: writers committing, aborting and killing themselves on one image, a janitor and readers', () => {
  it('sqlite', { timeout: TIMEOUT_MS }, (t) => stress(t, { driver: 'sqlite' }));

  it('xattr', { timeout: TIMEOUT_MS }, (t) => stress(t, { driver: 'xattr' }));

  it('centralized_db', { skip: pgSkip, timeout: TIMEOUT_MS }, async (t) => {
    if (unreachable !== undefined) throw new Error(`PostgreSQL is required under CI but ${ADMIN_URL} is unreachable: ${unreachable}`);
    const db = new TestDatabase();
    await db.create();
    try {
      // One URL for every process: they are one node's workers sharing its directory.
      await stress(t, { driver: 'centralized_db', databaseConnection: db.url, workerSelfReferenceUrl: 'http://stress-node:9292' });
    } finally {
      await db.drop();
    }
  });
});
