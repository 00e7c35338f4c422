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

/**
 * Failures that say PostgreSQL is out of reach, not that a statement was
 * wrong: the connection could not be made (refused, unreachable, name not
 * resolved, the pool's connect timeout), or it broke (reset, ended), or the
 * server is shutting down, starting up or crashed (57P01-57P03), or full
 * (53300 too_many_connections), or any of the 08 class (connection_exception).
 * pg reports a broken connection by message only, hence the messages.
 */
const CONNECTION_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);
const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN']);
const CONNECTION_MESSAGES = [
  /^Connection terminated/, // unexpectedly, or due to connection timeout (pg, pg-pool)
  /^timeout exceeded when trying to connect$/, // pg-pool's connectionTimeoutMillis
  /is not queryable$/, // a client whose connection had already failed
];

export function isPostgresConnectionFailure(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (/^08[0-9A-Z]{3}$/.test(code) || CONNECTION_SQLSTATES.has(code) || CONNECTION_ERRNOS.has(code))) return true;
  return typeof message === 'string' && CONNECTION_MESSAGES.some((pattern) => pattern.test(message));
}

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
