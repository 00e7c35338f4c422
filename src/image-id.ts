import { InvalidImageId } from './errors.js';

/** Longest file name most file systems accept (NAME_MAX), in bytes. */
const MAX_ID_BYTES = 255;
/** The characters an image ID may hold: RFC 3986 "unreserved", safe as a file name everywhere. */
const ID_PATTERN = /^[A-Za-z0-9._~-]+$/;
/** The cache directory's sub-directories (SPEC §1): an image of that name would be the directory itself. */
const LAYOUT_NAMES: ReadonlySet<string> = new Set(['incomplete', 'invalid', 'queue']);

/**
 * Checks an image ID before it becomes a file name. Glance joins raw IDs into
 * paths; we refuse anything that could escape the cache directory or collide
 * with a name the cache itself uses (`reserved`).
 */
export function validateImageId(imageId: unknown, reserved?: ReadonlySet<string>): string {
  if (typeof imageId !== 'string') throw new InvalidImageId(imageId, 'must be a string');
  if (imageId.length === 0) throw new InvalidImageId(imageId, 'must not be empty');
  // ID_PATTERN admits only ASCII, so the length in characters is the length in bytes.
  if (imageId.length > MAX_ID_BYTES) throw new InvalidImageId(imageId, `must be at most ${MAX_ID_BYTES} bytes long`);
  if (imageId === '.' || imageId === '..') throw new InvalidImageId(imageId, 'must not be a directory reference');
  if (!ID_PATTERN.test(imageId)) throw new InvalidImageId(imageId, 'may hold only the characters A-Z a-z 0-9 . _ ~ -');
  if (LAYOUT_NAMES.has(imageId) || reserved?.has(imageId)) throw new InvalidImageId(imageId, 'is a name the cache uses for its own files');
  return imageId;
}

/** The same rule as a predicate, for names read back from a directory. */
export function isValidImageId(name: string, reserved?: ReadonlySet<string>): boolean {
  return name.length > 0 && name.length <= MAX_ID_BYTES && name !== '.' && name !== '..' &&
    ID_PATTERN.test(name) && !LAYOUT_NAMES.has(name) && !(reserved?.has(name) ?? false);
}
