/**
 * The long claim stress run (npm run test:stress):
 *
 *   node dist/test/stress/run.js [--seconds N] [--writers N] [--driver sqlite|xattr|centralized_db|all] [--seed N]
 *
 * Runs runStress (harness.ts) for each driver in turn, prints one JSON report
 * per driver and a summary line, and exits 1 if any run had a violation. The
 * reports carry the seed; --seed with the same driver and writers replays the
 * same choices in every process (the interleaving is the OS's).
 *
 * centralized_db runs in a database of its own on the server of the tests
 * (IMAGE_CACHE_TEST_PG_URL, default postgres@127.0.0.1:5432), dropped
 * afterwards. Without a server it is skipped with a line saying why, unless
 * it was asked for by name or CI=true, where that is a failure.
 */
import { parseArgs } from 'node:util';
import { DRIVER_NAMES } from '../../src/index.js';
import { ADMIN_URL, TestDatabase, unreachableReason } from '../drivers/pg-helpers.js';
import { runStress, type StressDriver, type StressReport } from './harness.js';

const USAGE = 'usage: node dist/test/stress/run.js [--seconds N] [--writers N] [--driver sqlite|xattr|centralized_db|all] [--seed N]';

function usageError(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

let values: { seconds: string; writers: string; driver: string; seed?: string | undefined };
try {
  ({ values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '60' },
      writers: { type: 'string', default: '4' },
      driver: { type: 'string', default: 'all' },
      seed: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usageError((err as Error).message);
}

function integerFlag(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) usageError(`--${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`);
  return n;
}

const seconds = integerFlag('seconds', values.seconds, 1, 24 * 3600);
const writers = integerFlag('writers', values.writers, 1, 64);
const seed = values.seed === undefined ? undefined : integerFlag('seed', values.seed, 0, 2 ** 32 - 1);
const driverFlag = values.driver;
const isDriver = (name: string): name is StressDriver => (DRIVER_NAMES as readonly string[]).includes(name);
const drivers: StressDriver[] = driverFlag === 'all' ? [...DRIVER_NAMES] : isDriver(driverFlag) ? [driverFlag] : usageError(`--driver must be one of ${DRIVER_NAMES.join(', ')} or all, not ${JSON.stringify(driverFlag)}`);

const outcomes: string[] = [];
let failed = false;
for (const driver of drivers) {
  let report: StressReport;
  if (driver === 'centralized_db') {
    const unreachable = await unreachableReason();
    if (unreachable !== undefined) {
      const why = `no PostgreSQL server at ${ADMIN_URL} (${unreachable}); set IMAGE_CACHE_TEST_PG_URL to use another`;
      if (driverFlag === 'all' && process.env.CI !== 'true') {
        console.log(`centralized_db skipped: ${why}`);
        outcomes.push('centralized_db skipped');
        continue;
      }
      console.error(`centralized_db: ${why}`);
      failed = true;
      outcomes.push('centralized_db unreachable');
      continue;
    }
    const db = new TestDatabase();
    await db.create();
    try {
      report = await runStress({ driver, seconds, writers, seed, databaseConnection: db.url, workerSelfReferenceUrl: 'http://stress-node:9292' });
    } finally {
      await db.drop();
    }
  } else {
    report = await runStress({ driver, seconds, writers, seed });
  }
  console.log(JSON.stringify(report));
  if (report.violations.length > 0) failed = true;
  outcomes.push(`${driver}: ${report.violations.length} violations (seed ${report.seed}, ${report.reads} reads, ${report.commits} commits, ${report.kills} kills, ${report.takeovers} takeovers)`);
}
console.log(`stress ${failed ? 'FAILED' : 'passed'}: ${outcomes.join('; ')}`);
process.exitCode = failed ? 1 : 0;
