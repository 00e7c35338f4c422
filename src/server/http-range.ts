/** A byte range resolved against the image's size: [start, end], inclusive. */
export interface ResolvedRange {
  start: number;
  end: number;
}

/**
 * One `Range: bytes=...` header against an image of `size` bytes (RFC 9110 §14):
 * - undefined: no range to honour (no header, another unit, several ranges,
 *   or a malformed one — all of which a server may answer with the whole image);
 * - 'unsatisfiable': a well-formed range that selects nothing (→ 416);
 * - the range, clamped to the image.
 * Several ranges are answered with the whole image rather than a multipart
 * body, which the RFC allows and no image client asks for.
 */
export function parseRange(header: string | undefined, size: number): ResolvedRange | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined;
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (match === null) return undefined;
  const [, first = '', last = ''] = match;
  if (first === '' && last === '') return undefined;
  if (first === '') {
    // bytes=-n: the last n bytes.
    const n = Number(last);
    if (!Number.isSafeInteger(n)) return undefined;
    if (n === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? Infinity : Number(last);
  if (!Number.isSafeInteger(start) || (last !== '' && !Number.isSafeInteger(end)) || end < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end: Math.min(end, size - 1) };
}
