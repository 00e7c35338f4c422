/**
 * One rule per type of option. Every option of the schema (schema.ts) has
 * one of these types, and its value is checked by that type's rule wherever
 * it comes from: a config file, an environment variable, a flag, or a value
 * given to the library (a number for a size). As undici's cache stores do,
 * nothing is checked by a rule of its own.
 */

/** A value, or why the text is not one (completing "<option> must be ..."). */
export type Parsed<T> = { value: T } | { invalid: string };

export interface OptionType<T> {
  /** The placeholder of the option's flag in --help (`--bind-port <PORT>`). */
  readonly metavar: string;
  /** What the rule accepts, in a few words (the README's option table). */
  readonly summary: string;
  /** Numbers given to the library are checked as their decimal text is (so 1.5 and 1e21 are refused as "1.5" is). */
  readonly numeric: boolean;
  /** The value of `text`, as a file, the environment or a flag gives it. */
  parse(text: string): Parsed<T>;
}

/** Checks a value given to the library by its type's rule. */
export function parseValue<T>(type: OptionType<T>, value: unknown): Parsed<T> {
  if (typeof value === 'string') return type.parse(value);
  if (typeof value === 'number' && type.numeric) return type.parse(String(value));
  return { invalid: `must be ${type.numeric ? 'a number' : 'a string'}, not ${describe(value)}` };
}

function describe(value: unknown): string {
  return value === undefined || typeof value === 'function' || typeof value === 'symbol' ? String(value) : JSON.stringify(value);
}

/** Why a number is refused when its form is one people write elsewhere (0x400, 1e3, 1.5, -1, 10GB). */
function formHint(text: string): string {
  if (/^[+-]?0x[0-9a-f]+$/i.test(text)) return ': hexadecimal is not accepted';
  if (/^[+-]?[\d.]+e[+-]?\d+$/i.test(text)) return ': exponents are not accepted';
  if (/^[+-]?\d*\.\d+[A-Za-z]*$/.test(text)) return ': fractions are not accepted';
  if (/^[+-]/.test(text)) return ': no sign';
  if (/^\d+\s*[KMGT]B$/i.test(text)) return `: ${text.replace(/^\d+\s*/, '')} is ambiguous (powers of 1000 or 1024?); write ${text.replace(/B$/i, '')} or ${text.replace(/B$/i, 'iB')} for powers of 1024`;
  if (/^\d+\s+\S/.test(text)) return ': no space between the number and its unit';
  return '';
}

/** Whole numbers are written in decimal digits only, as Glance's IntOpt reads them (no 0x, exponent, fraction or sign). */
const DIGITS = /^\d+$/;

function range(min: number, max: number): string {
  return max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
}

/** A whole number from `min` to `max`; `what` says what it counts in messages ("whole seconds"), `noun` in the README ("seconds"). */
function wholeNumber(metavar: string, noun: string, what: string, min: number, max: number): OptionType<number> {
  return {
    metavar,
    summary: `${noun}, ${range(min, max).replace(/^from /, '')}`,
    numeric: true,
    parse(text) {
      const n = Number(text);
      if (DIGITS.test(text) && n >= min && n <= max) return { value: n };
      return { invalid: `must be a number ${range(min, max)} (${what}), not ${JSON.stringify(text)}${DIGITS.test(text) ? '' : formHint(text)}` };
    },
  };
}

/** Seconds, whole, as Glance's timeouts and intervals are. */
export const seconds = (min: number, max = Number.MAX_SAFE_INTEGER): OptionType<number> => wholeNumber('SECONDS', 'seconds', 'whole seconds', min, max);

/** A TCP port; 0 lets the system pick a free one. */
export const port: OptionType<number> = wholeNumber('PORT', 'port', 'a port', 0, 65535);

/** A number of things (processes, fetches at once). */
export const count = (min: number, max: number): OptionType<number> => wholeNumber('N', 'whole number', 'a whole number', min, max);

/** The binary units of a size: K, M, G, T, alone or as KiB, MiB, GiB, TiB, in either case. */
const UNITS: Record<string, number> = { k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };
const SIZE = /^(\d+)(?:([kmgt])(?:ib)?)?$/i;

/**
 * A size in bytes: plain bytes as Glance writes image_cache_max_size
 * (10737418240), or a whole number with a binary unit (10G, 512M, 10GiB).
 * `10GB` is refused rather than guessed at: some read it as 10^10.
 */
export const bytes: OptionType<number> = {
  metavar: 'SIZE',
  summary: 'size: bytes, or K, M, G, T',
  numeric: true,
  parse(text) {
    const match = SIZE.exec(text);
    const value = match === null ? NaN : Number(match[1]) * (match[2] === undefined ? 1 : UNITS[match[2].toLowerCase()]!);
    if (Number.isSafeInteger(value)) return { value };
    const hint = match === null ? formHint(text) : ': too large';
    return { invalid: `must be a size: whole bytes, or a whole number with a unit K, M, G or T (powers of 1024: 512M, 10G, 10GiB), not ${JSON.stringify(text)}${hint}` };
  },
};

/** One of `choices`, exactly. */
export function oneOf<T extends string>(choices: readonly T[], metavar: string): OptionType<T> {
  return {
    metavar,
    summary: choices.join(', '),
    numeric: false,
    parse: (text) => ((choices as readonly string[]).includes(text) ? { value: text as T } : { invalid: `must be one of ${choices.join(', ')}, not ${JSON.stringify(text)}` }),
  };
}

/** oslo.config's booleans: true/false, yes/no, on/off, 1/0, in any case. */
export const boolean: OptionType<boolean> = {
  metavar: 'BOOL',
  summary: 'true or false',
  numeric: false,
  parse(text) {
    const word = text.trim().toLowerCase();
    if (['true', 'yes', 'on', '1'].includes(word)) return { value: true };
    if (['false', 'no', 'off', '0'].includes(word)) return { value: false };
    return { invalid: `must be true or false, not ${JSON.stringify(text)}` };
  },
};

/** Any text (a host name, a role, a token, a database URL that the driver judges). */
export const text = (metavar: string): OptionType<string> => ({ metavar, summary: 'text', numeric: false, parse: (value) => ({ value }) });

/** A directory or file, as given (relative ones are resolved against the working directory by whoever opens them). */
export const filePath = (metavar: string): OptionType<string> => ({
  metavar,
  summary: 'path',
  numeric: false,
  parse: (value) => (value === '' || value.includes('\0') ? { invalid: `must be a path, not ${JSON.stringify(value)}` } : { value }),
});

/** A plain file name, inside a directory the cache owns: no separator, not . or .. */
export const fileName: OptionType<string> = {
  metavar: 'NAME',
  summary: 'file name',
  numeric: false,
  parse: (value) =>
    (value === '' || value.includes('/') || value.includes('\0') || value === '.' || value === '..'
      ? { invalid: `must be a plain file name inside the cache directory, not ${JSON.stringify(value)}` }
      : { value }),
};

/** An http:// or https:// URL. */
export const httpUrl: OptionType<string> = {
  metavar: 'URL',
  summary: 'http(s) URL',
  numeric: false,
  parse(value) {
    const ok = URL.canParse(value) && ['http:', 'https:'].includes(new URL(value).protocol);
    return ok ? { value } : { invalid: `must be an http:// or https:// URL, not ${JSON.stringify(value)}` };
  },
};

/** A location path of a proxy in front, starting and ending with / (/_image_cache/). */
export const locationPrefix: OptionType<string> = {
  metavar: 'LOCATION',
  summary: 'location path',
  numeric: false,
  parse: (value) =>
    (/^\/[A-Za-z0-9._~/-]*\/$/.test(value) ? { value } : { invalid: `must be a location path that starts and ends with / (such as /_image_cache/), not ${JSON.stringify(value)}` }),
};

/** oslo.messaging's transport URL for RabbitMQ: rabbit:// (or amqp://, amqps://), hosts separated by commas, a virtual host. */
export const transportUrl: OptionType<string> = {
  metavar: 'URL',
  summary: 'rabbit:// URL',
  numeric: false,
  parse(value) {
    const ok = /^(rabbit|amqp|amqps|kombu):\/\/[^\s/]+(\/[^\s]*)?$/.test(value);
    return ok ? { value } : { invalid: `must be a RabbitMQ transport URL (rabbit://user:password@host:5672/), not ${JSON.stringify(redactUserInfo(value))}` };
  },
};

/** A URL as a message may show it: without the password of its user info. */
export function redactUserInfo(url: string): string {
  return url.replace(/(\/\/|,)([^:@/,]*):[^@/,]*@/g, '$1$2:***@');
}

/** Comma-separated names (oslo.config's ListOpt), none empty. */
export const nameList = (metavar: string): OptionType<string[]> => ({
  metavar,
  summary: 'comma-separated names',
  numeric: false,
  parse(value) {
    const names = value.split(',').map((name) => name.trim());
    return names.length > 0 && names.every((name) => /^[A-Za-z0-9._-]+$/.test(name))
      ? { value: names }
      : { invalid: `must be names separated by commas (notifications,other), not ${JSON.stringify(value)}` };
  },
});

/**
 * Which activated images a node prefetches (image_cache_prefetch_on_activate):
 * none, public ones, all, or those with a property of a value.
 */
export type ActivationPolicy = { kind: 'none' | 'public' | 'all' } | { kind: 'property'; name: string; value: string };

export const activationPolicy: OptionType<ActivationPolicy> = {
  metavar: 'POLICY',
  summary: 'none, public, all or property:NAME=VALUE',
  numeric: false,
  parse(value) {
    const word = value.trim();
    if (word === 'none' || word === 'public' || word === 'all') return { value: { kind: word } };
    const property = /^property:([^=\s]+)=(.*)$/.exec(word);
    if (property) return { value: { kind: 'property', name: property[1]!, value: property[2]! } };
    return { invalid: `must be none, public, all or property:NAME=VALUE, not ${JSON.stringify(value)}` };
  },
};
