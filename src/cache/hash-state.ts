/** What FileHasher and its threads share: the layout of their state and their messages. */
export const HASH_STATE = {
  /** Index of the bytes written so far (the main thread stores and notifies). */
  written: 0,
  /** Index of the file's final length once known; -1 while writing, `cancelled` to stop. */
  end: 1,
  /** The `end` value that stops the thread without a digest. */
  cancelled: -2n,
} as const;

export interface HashJob {
  fd: number;
  algorithm: string;
  /** A SharedArrayBuffer of two BigInt64s: written, end. */
  state: SharedArrayBuffer;
}

export type HashResult = { digest: string; bytes: number } | { cancelled: true } | { error: string };
