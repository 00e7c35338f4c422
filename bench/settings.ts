/** A bench's settings from its environment variables, refused with the variable named when they make no sense. */

export function numberFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  return raw === undefined || raw === '' ? fallback : numberFromString(name, raw);
}

export function numberFromString(name: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name}=${raw}: expected a non-negative number`);
  return value;
}

/** Bytes from e.g. `1073741824`, `256MiB`, `1GiB`, `64M`. */
export function sizeFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const match = raw.trim().match(/^(\d+)\s*([kmg]?)(i?b)?$/i);
  if (!match) throw new Error(`${name}=${raw}: expected bytes, optionally with KiB, MiB or GiB`);
  return Number(match[1]) * 1024 ** ' kmg'.indexOf((match[2] || ' ').toLowerCase());
}
