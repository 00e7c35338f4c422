import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { ChecksumMismatch, InvalidOption } from '../errors.js';
import type { ExpectedChecksum } from '../types.js';

/** Strongest first: of what the metadata gives, only the strongest is computed. */
const MULTIHASH_ALGORITHMS = ['sha512', 'sha384', 'sha256'] as const;

export interface ChecksumRule {
  algorithm: string;
  expected: string;
}

/**
 * Picks the one hash to verify: os_hash_algo/os_hash_value when the algorithm
 * is one we know (sha512, sha384, sha256), else the md5 `checksum`. Undefined
 * when the metadata promises nothing.
 */
export function checksumRule(expected: ExpectedChecksum | undefined | null): ChecksumRule | undefined {
  if (expected === undefined || expected === null) return undefined;
  if (typeof expected === 'string') return expected === '' ? undefined : { algorithm: 'md5', expected: normalize('checksum', expected) };
  const algo = expected.osHashAlgo?.toLowerCase();
  if (algo && expected.osHashValue) {
    if ((MULTIHASH_ALGORITHMS as readonly string[]).includes(algo)) {
      return { algorithm: algo, expected: normalize('os_hash_value', expected.osHashValue) };
    }
    if (!expected.checksum) throw new InvalidOption('os_hash_algo', `names an unsupported algorithm ${JSON.stringify(expected.osHashAlgo)} (supported: ${MULTIHASH_ALGORITHMS.join(', ')})`);
  }
  if (expected.checksum) return { algorithm: 'md5', expected: normalize('checksum', expected.checksum) };
  return undefined;
}

function normalize(name: string, hex: string): string {
  if (!/^[0-9a-fA-F]+$/.test(hex)) throw new InvalidOption(name, `must be a hex digest, not ${JSON.stringify(hex)}`);
  return hex.toLowerCase();
}

/**
 * Passes bytes through unchanged while hashing them; fails at the end, before
 * the end is passed on, when the digest differs. Downstream therefore never
 * sees a clean end of unverified data.
 */
export class ChecksumVerifier extends Transform {
  private readonly hash: Hash;
  readonly rule: ChecksumRule;

  constructor(rule: ChecksumRule) {
    super();
    this.rule = rule;
    this.hash = createHash(rule.algorithm);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    const actual = this.hash.digest('hex');
    callback(actual === this.rule.expected ? null : new ChecksumMismatch(this.rule.algorithm, this.rule.expected, actual));
  }
}
