/** What FileHasher and its threads share: the layout of their state and their messages. */
export const HASH_STATE = {
  /** Index of the bytes written so far (the main thread stores and notifies). */
  written: 0,
  /** Index of the file's final length once known; -1 while writing, `cancelled` to stop. */
  end: 1,
  /**
   * Index of the `written` count at which the sleeping thread wants waking
   * (the thread stores it before it sleeps, `awake` once up): the main thread
   * notifies only then, once per chunk the thread reads, not on every write.
   */
  wakeAt: 2,
  /** The `wakeAt` value of a thread that is not sleeping. */
  awake: 2n ** 62n,
  /** The `end` value that stops the thread without a digest. */
  cancelled: -2n,
} as const;

/** Bytes of the state's SharedArrayBuffer: three BigInt64s, written, end, wakeAt. */
export const HASH_STATE_BYTES = 3 * 8;

export interface HashJob {
  fd: number;
  algorithm: string;
  /** A SharedArrayBuffer of HASH_STATE_BYTES. */
  state: SharedArrayBuffer;
}

export type HashResult = { digest: string; bytes: number } | { cancelled: true } | { error: string };
