/**
 * A small structured logger: one JSON object per line on stderr, quiet by
 * default (warnings and errors only). IMAGE_CACHE_LOG_LEVEL=debug|info|warn|error|silent
 * changes the threshold; a caller may pass its own Logger (pino and most
 * others fit this shape).
 */
export interface Logger {
  debug(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 } as const;
export type LogLevel = keyof typeof LEVELS;

export function createLogger(level: LogLevel = envLevel(), write: (line: string) => void = (line) => process.stderr.write(line)): Logger {
  const threshold = LEVELS[level];
  const emit = (name: Exclude<LogLevel, 'silent'>) => (fields: Record<string, unknown>, message: string) => {
    if (LEVELS[name] < threshold) return;
    write(`${JSON.stringify({ time: new Date().toISOString(), level: name, msg: message, ...serialize(fields) })}\n`);
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

function envLevel(): LogLevel {
  const value = process.env.IMAGE_CACHE_LOG_LEVEL;
  return value !== undefined && value in LEVELS ? (value as LogLevel) : 'warn';
}

function serialize(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    out[key] = value instanceof Error ? { name: value.name, message: value.message, code: (value as { code?: unknown }).code } : value;
  }
  return out;
}

export const silentLogger: Logger = createLogger('silent');
