/**
 * Progress of long work (prefetch, delete-all) on stderr, so stdout stays
 * the result alone. On a terminal: one bar line redrawn in place, with the
 * problems printed above it as they happen. Elsewhere (cron, a pipe, a log
 * file): one plain line per item, since a redrawn line is noise in a file.
 */

/** Where progress goes: process.stderr, or a stand-in in tests. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): unknown;
}

export interface Progress {
  /** The item being worked on now: shown in the bar on a terminal, nothing otherwise. */
  working(item: string): void;
  /** One item finished. A problem stays on screen; on a terminal, other lines only pass through the bar. */
  done(line: string, problem?: boolean): void;
  /** Clears the bar (the summary goes to stdout after it). */
  end(): void;
}

const CLEAR_LINE = '\r\x1b[K';

export function startProgress(label: string, total: number, stream: ProgressStream = process.stderr): Progress {
  let finished = 0;
  if (stream.isTTY !== true) {
    return {
      working() {},
      done(line) {
        finished++;
        stream.write(`[${finished}/${total}] ${line}\n`);
      },
      end() {},
    };
  }
  const draw = (item: string): void => {
    // A terminal that reports no size (a pty nobody sized) gets the usual 80.
    const columns = (stream.columns ?? 0) >= 20 ? stream.columns! : 80;
    const width = Math.max(10, Math.min(30, columns - 40));
    const filled = total === 0 ? width : Math.round((finished / total) * width);
    const text = `${label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${finished}/${total} ${item}`;
    // A line longer than the terminal wraps, and \r would then redraw only its last row.
    stream.write(`${CLEAR_LINE}${text.slice(0, columns - 1)}`);
  };
  draw('');
  return {
    working: draw,
    done(line, problem = false) {
      finished++;
      if (problem) stream.write(`${CLEAR_LINE}${line}\n`);
      draw(problem ? '' : line);
    },
    end() {
      stream.write(CLEAR_LINE);
    },
  };
}
