/** How a failed write is retried: attempts in all, and the cap of the exponential backoff between them. */
export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

/**
 * PostgreSQL's deadlock_detected (40P01) and serialization_failure (40001):
 * the server rolled the statement back because it lost a race with another
 * transaction, and running it again is the documented remedy.
 */
export const POSTGRES_RETRYABLE = new Set(['40P01', '40001']);

export const isRetryablePostgresError = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && POSTGRES_RETRYABLE.has((err as { code?: string }).code ?? '');

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 5, maxDelayMs: 500 };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `fn`, again after a failure `retryable` accepts, up to `policy.attempts`
 * times. The waits are "full jitter" (a random time up to base * 2^attempt,
 * capped): nodes that deadlocked with each other must not retry in lockstep.
 */
export async function withRetry<T>(
  fn: () => Promise<T>,
  retryable: (err: unknown) => boolean,
  policy: RetryPolicy = DEFAULT_RETRY,
  wait: (ms: number) => Promise<void> = sleep,
  random: () => number = Math.random,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= policy.attempts || !retryable(err)) throw err;
      await wait(random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt));
    }
  }
}
