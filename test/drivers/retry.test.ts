/**
 * withRetry and isRetryablePostgresError on their own: the waits and the
 * random draws are injected, so nothing here really waits, and every wait
 * asked for is checked against the full-jitter bound
 * min(maxDelayMs, baseDelayMs * 2^attempt), attempt being the 1-based number
 * of the attempt that just failed. (The centralized_db suite provokes real
 * deadlocks against the driver; this file pins the policy down.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_RETRY, POSTGRES_RETRYABLE, isPostgresConnectionFailure, isRetryablePostgresError, withRetry, type RetryPolicy } from '../../src/metadata/retry.js';
import { deferred } from '../helpers.js';

/** An error as pg reports a server error: an Error with the SQLSTATE in `code`. */
function pgError(code: string, attempt = 0): Error & { code: string; attempt: number } {
  return Object.assign(new Error(`server error ${code} (attempt ${attempt})`), { code, attempt });
}

/** A function failing with `errors` one after the other, then returning `value`; it counts its calls. */
function failing<T>(errors: readonly unknown[], value: T): { fn: () => Promise<T>; calls: () => number } {
  let calls = 0;
  return {
    fn: async () => {
      const err = errors[calls++];
      if (err !== undefined) throw err;
      return value;
    },
    calls: () => calls,
  };
}

/** A wait that records what it was asked for and returns at once. */
function recordingWait(): { wait: (ms: number) => Promise<void>; waits: number[] } {
  const waits: number[] = [];
  return { waits, wait: async (ms) => void waits.push(ms) };
}

const cap = (policy: RetryPolicy, attempt: number): number => Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);

describe('withRetry', () => {
  const policy: RetryPolicy = { attempts: 8, baseDelayMs: 10, maxDelayMs: 300 };

  it('returns the value of the first success, after waiting once per retryable failure before it', async () => {
    const { fn, calls } = failing([pgError('40P01'), pgError('40001')], 'value');
    const { wait, waits } = recordingWait();
    assert.equal(await withRetry(fn, isRetryablePostgresError, policy, wait, () => 0.5), 'value');
    assert.equal(calls(), 3);
    assert.deepEqual(waits, [0.5 * 20, 0.5 * 40]);

    const first = failing([], 42);
    const untouched = recordingWait();
    assert.equal(await withRetry(first.fn, isRetryablePostgresError, policy, untouched.wait, () => 0.5), 42);
    assert.equal(first.calls(), 1);
    assert.deepEqual(untouched.waits, [], 'a first success waits for nothing');
  });

  it('retries a retryable error up to `attempts` times in all, then throws the last error', async () => {
    const errors = Array.from({ length: 20 }, (_, i) => pgError(i % 2 === 0 ? '40P01' : '40001', i + 1));
    const { fn, calls } = failing(errors, 'never');
    const { wait, waits } = recordingWait();
    const thrown = await withRetry(fn, isRetryablePostgresError, policy, wait, () => 1).then(
      () => assert.fail('withRetry resolved although every attempt failed'),
      (err: unknown) => err,
    );
    assert.equal(calls(), policy.attempts);
    assert.equal(thrown, errors[policy.attempts - 1], 'the error of the last attempt, not an earlier one');
    // random() = 1: each wait is its whole bound, so the exponential growth and the cap show.
    assert.deepEqual(waits, [20, 40, 80, 160, 300, 300, 300]);
    assert.equal(waits.length, policy.attempts - 1, 'no wait after the last attempt');
  });

  it('with the default policy: DEFAULT_RETRY.attempts attempts, waits bounded by its base and cap', async () => {
    assert.ok(DEFAULT_RETRY.attempts > 1 && DEFAULT_RETRY.baseDelayMs > 0 && DEFAULT_RETRY.maxDelayMs >= DEFAULT_RETRY.baseDelayMs);
    const { fn, calls } = failing(Array.from({ length: 50 }, () => pgError('40001')), 'never');
    const { wait, waits } = recordingWait();
    await assert.rejects(withRetry(fn, isRetryablePostgresError, undefined, wait, () => 1), { code: '40001' });
    assert.equal(calls(), DEFAULT_RETRY.attempts);
    assert.deepEqual(waits, Array.from({ length: DEFAULT_RETRY.attempts - 1 }, (_, i) => cap(DEFAULT_RETRY, i + 1)));
  });

  it('does not retry an error the predicate refuses: thrown at once, without a wait', async () => {
    for (const err of [pgError('23505'), pgError('40002'), pgError('55P03'), new TypeError('a bug'), 'a string']) {
      const { fn, calls } = failing([err], 'never');
      const { wait, waits } = recordingWait();
      await assert.rejects(withRetry(fn, isRetryablePostgresError, policy, wait, () => 0.5), (thrown: unknown) => thrown === err);
      assert.equal(calls(), 1, `${String(err)} was retried`);
      assert.deepEqual(waits, []);
    }
    // A retryable error followed by one that is not: the second is thrown, after exactly one wait.
    const mixed = failing([pgError('40P01'), pgError('23505')], 'never');
    const { wait, waits } = recordingWait();
    await assert.rejects(withRetry(mixed.fn, isRetryablePostgresError, policy, wait, () => 0.5), { code: '23505' });
    assert.equal(mixed.calls(), 2);
    assert.equal(waits.length, 1);
  });

  it('the predicate decides: it sees every error, and its verdict alone makes a retry', async () => {
    const seen: unknown[] = [];
    const errors = [new Error('transient'), new Error('transient'), new Error('fatal')];
    const { fn, calls } = failing(errors, 'never');
    const { wait } = recordingWait();
    await assert.rejects(
      withRetry(fn, (err) => (seen.push(err), (err as Error).message === 'transient'), policy, wait, () => 0),
      (thrown: unknown) => thrown === errors[2],
    );
    assert.equal(calls(), 3);
    assert.deepEqual(seen, errors);
  });

  it('waits are full jitter: random() scales the whole bound, from 0 up to min(maxDelayMs, baseDelayMs * 2^attempt)', async () => {
    const draws = [0, 0.999, 0.25, 0.5, 0.75, 1e-9, 0.9999999];
    let drawn = 0;
    const random = () => {
      const value = draws[drawn++];
      if (value === undefined) throw new Error('random() was called more often than once per wait');
      return value;
    };
    const { fn } = failing(Array.from({ length: 20 }, () => pgError('40P01')), 'never');
    const { wait, waits } = recordingWait();
    await assert.rejects(withRetry(fn, isRetryablePostgresError, policy, wait, random), { code: '40P01' });
    assert.equal(drawn, policy.attempts - 1, 'one random draw per wait');
    assert.equal(waits.length, draws.length);
    waits.forEach((ms, i) => {
      const bound = cap(policy, i + 1);
      assert.equal(ms, draws[i]! * bound, `wait ${i + 1}`);
      assert.ok(ms >= 0 && ms < bound, `wait ${i + 1} (${ms} ms) is outside [0, ${bound})`);
    });
    assert.equal(waits[0], 0, 'a draw of 0 retries at once: full jitter has no floor');
  });

  it('the next attempt starts only after the wait has finished', async () => {
    const { fn, calls } = failing([pgError('40001')], 'done');
    const gate = deferred();
    let asked = -1;
    const running = withRetry(fn, isRetryablePostgresError, policy, (ms) => ((asked = ms), gate.promise), () => 0.5);
    // Let every microtask run: the retry must still be parked on the wait.
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(calls(), 1);
    assert.equal(asked, 10);
    gate.resolve();
    assert.equal(await running, 'done');
    assert.equal(calls(), 2);
  });
});

describe('isRetryablePostgresError', () => {
  it('is true for deadlock_detected (40P01) and serialization_failure (40001), as pg reports them', () => {
    assert.deepEqual([...POSTGRES_RETRYABLE].sort(), ['40001', '40P01']);
    assert.equal(isRetryablePostgresError(pgError('40P01')), true);
    assert.equal(isRetryablePostgresError(pgError('40001')), true);
    assert.equal(isRetryablePostgresError({ code: '40P01' }), true, 'any object with the code, not only Errors');
  });

  it('is false for other SQLSTATEs, including the rest of class 40, and for codes that are not strings', () => {
    for (const code of ['40000', '40002', '40003', '23505', '55P03', '57014', '08006', '40p01', '']) {
      assert.equal(isRetryablePostgresError(pgError(code)), false, code);
    }
    assert.equal(isRetryablePostgresError({ code: 40001 }), false);
    assert.equal(isRetryablePostgresError(new Error('no code')), false);
    assert.equal(isRetryablePostgresError({}), false);
  });

  it('is false for anything that is not an object', () => {
    for (const value of [null, undefined, '40P01', 40001, true, Symbol('40P01')]) {
      assert.equal(isRetryablePostgresError(value), false, String(value));
    }
  });
});

describe('isPostgresConnectionFailure', () => {
  it('is true for the failures of a server out of reach: refused, reset, shut down, starting up, full, class 08, and pg\'s broken-connection messages', () => {
    for (const code of ['57P01', '57P02', '57P03', '53300', '08000', '08003', '08006', '08001', '08P01', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND']) {
      assert.equal(isPostgresConnectionFailure(pgError(code)), true, code);
    }
    for (const message of ['Connection terminated unexpectedly', 'Connection terminated due to connection timeout', 'Connection terminated', 'timeout exceeded when trying to connect', 'Client has encountered a connection error and is not queryable']) {
      assert.equal(isPostgresConnectionFailure(new Error(message)), true, message);
    }
  });

  it('is false for a statement\'s own failures (they would fail again on a healthy server) and for anything that is not an error object', () => {
    for (const code of ['40P01', '40001', '23505', '42P01', '42501', '28P01', '3D000', '57014', '22001', '']) {
      assert.equal(isPostgresConnectionFailure(pgError(code)), false, code);
    }
    assert.equal(isPostgresConnectionFailure(new Error('Cannot use a pool after calling end on the pool')), false);
    for (const value of [null, undefined, 'ECONNREFUSED', 57, {}]) assert.equal(isPostgresConnectionFailure(value), false, String(value));
  });
});
