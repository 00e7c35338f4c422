/**
 * Human output: sizes, times and tables. What --json prints is each
 * command's own (Glance's wire shapes, raw numbers); nothing here is used for it.
 */

const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 → "1.5 KiB"; below 1 KiB, plain bytes ("512 B"). Binary units, as image sizes are quoted in Glance and Nova. */
export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  let value = bytes / 1024;
  let unit = 0;
  // 1023.5 and up would print as "1024": the next unit says it better.
  while (value >= 1023.5 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  // One decimal is enough to tell images apart at a glance; exact sizes are in --json.
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${UNITS[unit]}`;
}

/** Epoch seconds (Glance's float) as ISO-8601 UTC to the second; 0 means never (Glance's "N/A"). */
export function formatTime(epochSeconds: number): string {
  return epochSeconds > 0 ? `${new Date(epochSeconds * 1000).toISOString().slice(0, 19)}Z` : 'N/A';
}

export interface Column {
  header: string;
  /** Numbers and sizes line up on the right. */
  align?: 'left' | 'right';
}

/** Columns separated by two spaces, a dashed rule under the header. */
export function table(columns: Column[], rows: string[][]): string {
  const widths = columns.map((column, i) => Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((cell, i) => (columns[i]!.align === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(columns.map((column) => column.header)), widths.map((width) => '-'.repeat(width)).join('  '), ...rows.map(line)].join('\n');
}

/** "1 image", "3 images". */
export function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** A line (or lines) on stdout, newline-terminated. */
export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}
