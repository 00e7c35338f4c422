/**
 * What every bench run shares: its figures (summary tables and a list for
 * people, then the same as one JSON line for machines), progress lines on stderr, and the
 * undo steps (servers to stop, directories to remove) run once, last in
 * first out, at the end, on an error or on SIGINT/SIGTERM, after which the
 * figures measured until then are still printed.
 */
export type Figure = number | string | null;

/** Four significant digits: the noise of these machines is larger than that. */
export function round(x: number): number {
  return Number(x.toPrecision(4));
}

/** a / b, or null when either side is missing (a server did not run, a peer failed) or b is 0. */
export function quotient(a: number | undefined, b: number | undefined): number | null {
  return a === undefined || b === undefined || b === 0 ? null : a / b;
}

export class BenchRun {
  private readonly rows: Array<[part: string, subject: string, metric: string, value: Figure]> = [];
  private readonly report: Record<string, Record<string, Figure>> = {};
  private readonly tables: string[] = [];
  private printed = false;
  private cleaning: Promise<void> | undefined;
  /** Undo steps, pushed as things are set up. */
  readonly cleanups: Array<() => Promise<void> | void> = [];

  /** `echo`: each figure also goes to stderr as it is measured (for long runs). */
  constructor(
    private readonly name: string,
    private readonly config: object,
    private readonly echo = false,
  ) {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => {
        this.progress(`${signal}: stopping the servers`);
        void this.cleanup().then(() => {
          this.printReport(); // what was measured until then
          process.exit(130);
        });
      });
    }
  }

  /** One figure, in the table and in the JSON line (as [part][`${subject}.${metric}`]). */
  readonly record = (part: string, subject: string, metric: string, value: Figure): void => {
    const rounded = typeof value === 'number' ? round(value) : value;
    this.rows.push([part, subject, metric, rounded]);
    (this.report[part] ??= {})[`${subject}.${metric}`] = rounded;
    if (this.echo) this.progress(`${part} ${subject} ${metric}: ${rounded}`);
  };

  /**
   * A summary table of figures recorded already, printed before the list of
   * figures: a title, a header row, rows of cells, and lines of notes under it.
   */
  readonly table = (title: string, header: string[], rows: string[][], notes: string[] = []): void => {
    const all = [header, ...rows];
    const widths = header.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)));
    const line = (row: string[]): string => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
    this.tables.push([title, line(header), ...rows.map(line), ...notes, ''].join('\n'));
  };

  readonly progress = (line: string): void => {
    process.stderr.write(`${this.name}: ${line}\n`);
  };

  /** The table, then the JSON line; once, whether the run ends, fails or is interrupted. */
  readonly printReport = (): void => {
    if (this.printed) return;
    this.printed = true;
    for (const table of this.tables) process.stdout.write(`${table}\n`);
    const table = [['part', 'subject', 'metric', 'value'], ...this.rows];
    const widths = [0, 1, 2].map((i) => Math.max(...table.map((row) => String(row[i]).length)));
    for (const row of table) {
      process.stdout.write(`${row.slice(0, 3).map((cell, i) => String(cell).padEnd(widths[i]!)).join('  ')}  ${row[3]}\n`);
    }
    process.stdout.write(`${JSON.stringify({ config: this.config, ...this.report })}\n`);
  };

  /** Runs the undo steps once; a failing step is reported and the others still run. */
  readonly cleanup = (): Promise<void> => {
    this.cleaning ??= (async () => {
      for (const step of this.cleanups.reverse()) {
        try {
          await step();
        } catch (err) {
          this.progress(`cleanup: ${(err as Error).message}`);
        }
      }
    })();
    return this.cleaning;
  };
}
