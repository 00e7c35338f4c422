/** The CLI's human output: sizes, times, tables, and the progress display on and off a terminal. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatSize, formatTime, table } from '../../src/cli/format.js';
import { startProgress, type ProgressStream } from '../../src/cli/progress.js';

function recorder(isTTY: boolean, columns?: number): ProgressStream & { text: string } {
  return {
    isTTY,
    columns,
    text: '',
    write(chunk: string) {
      this.text += chunk;
      return true;
    },
  };
}

describe('CLI output', () => {
  it('sizes in binary units, bytes below 1 KiB', () => {
    assert.deepEqual(
      [0, 1023, 1024, 1536, 10 * 1024 ** 2, 1024 ** 3 - 1, 1024 ** 3, 250 * 1024 ** 3, 3 * 1024 ** 4].map(formatSize),
      ['0 B', '1023 B', '1.0 KiB', '1.5 KiB', '10.0 MiB', '1.0 GiB', '1.0 GiB', '250 GiB', '3.0 TiB'],
    );
  });

  it('times as ISO-8601 UTC to the second; 0 (never) as N/A', () => {
    assert.equal(formatTime(1_700_000_000.987), '2023-11-14T22:13:20Z');
    assert.equal(formatTime(0), 'N/A');
  });

  it('tables: a rule under the header, right-aligned numbers, no trailing spaces', () => {
    assert.equal(
      table([{ header: 'ID' }, { header: 'Size', align: 'right' }, { header: 'Note' }], [['a', '1 B', ''], ['long-id', '10.0 MiB', 'x']]),
      'ID           Size  Note\n-------  --------  ----\na             1 B\nlong-id  10.0 MiB  x',
    );
  });

  it('progress off a terminal: one numbered line per item, nothing for the item in progress', () => {
    const stream = recorder(false);
    const progress = startProgress('prefetch', 2, stream);
    progress.working('a');
    progress.done('a: cached');
    progress.done('b: failed', true);
    progress.end();
    assert.equal(stream.text, '[1/2] a: cached\n[2/2] b: failed\n');
  });

  it('progress on a terminal: one bar redrawn in place, problems kept above it, the line cleared at the end, never wider than the terminal', () => {
    const stream = recorder(true, 50);
    const progress = startProgress('delete', 4, stream);
    progress.done('one');
    progress.done('two: failed', true);
    progress.working('a-very-long-image-id-that-does-not-fit-in-fifty-columns');
    progress.end();
    const redraws = stream.text.split('\r\x1b[K').slice(1);
    assert.deepEqual(redraws, [
      'delete [----------] 0/4 ',
      'delete [###-------] 1/4 one',
      'two: failed\n',
      'delete [#####-----] 2/4 ',
      'delete [#####-----] 2/4 a-very-long-image-id-that',
      '',
    ]);
    assert.ok(redraws.every((line) => line.length < 50));
  });
});
