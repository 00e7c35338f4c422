/**
 * npm run test:stress: the long runs, one after another, each in a process
 * of its own, with what each found; exits 1 if any failed. CI runs it after
 * `npm test`. Each stage can also be run alone with the command it prints.
 *
 *   node dist/test/stress/suite.js [--quick]
 *
 * --quick shortens every stage (a check that the suite itself works).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', '..');
const quick = process.argv.includes('--quick');
const unknown = process.argv.slice(2).filter((arg) => arg !== '--quick');
if (unknown.length > 0) {
  console.error(`unknown arguments: ${unknown.join(' ')}\nusage: node dist/test/stress/suite.js [--quick]`);
  process.exit(2);
}

interface Stage {
  name: string;
  args: string[];
  env?: Record<string, string>;
}

const stages: Stage[] = [
  {
    // Writers SIGKILLed at random in every driver, claims taken over, readers checking every byte.
    name: 'claims under writers killed at random',
    args: [path.join(dist, 'test', 'stress', 'run.js'), '--seconds', quick ? '5' : '30'],
  },
  {
    // Issue 9: "a client that reads nothing for minutes (bounded memory)".
    name: 'a client that reads nothing for minutes',
    args: ['--test', path.join(dist, 'test', 'server', 'slow-reader.test.js')],
    env: { IMAGE_CACHE_SLOW_READER_IDLE_SECONDS: quick ? '5' : '120', IMAGE_CACHE_SLOW_READER_MIB: '256' },
  },
  {
    // The load gate: 200 connections over hits, misses, ranges and management calls, every body hashed.
    name: 'load: zero 5xx, zero corrupt bodies',
    args: [path.join(dist, 'bench', 'load.js')],
    env: { BENCH_LOAD_SECONDS: quick ? '10' : '30', BENCH_LOAD_CONNECTIONS: '200', BENCH_PEER_SECONDS: '0' },
  },
];

function run(stage: Stage): Promise<number> {
  const env = { ...process.env, ...stage.env };
  const shown = [...Object.entries(stage.env ?? {}).map(([k, v]) => `${k}=${v}`), 'node', ...stage.args.map((a) => path.relative(process.cwd(), a) || a)];
  console.log(`\n=== ${stage.name}\n$ ${shown.join(' ')}`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, stage.args, { env, stdio: 'inherit' });
    child.once('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
  });
}

const results: string[] = [];
let failed = false;
for (const stage of stages) {
  const started = Date.now();
  const code = await run(stage);
  const seconds = Math.round((Date.now() - started) / 1000);
  results.push(`${code === 0 ? 'ok  ' : 'FAIL'} ${stage.name} (${seconds} s)`);
  if (code !== 0) failed = true;
}
console.log(`\n=== stress ${failed ? 'FAILED' : 'passed'}\n${results.join('\n')}`);
process.exitCode = failed ? 1 : 0;
