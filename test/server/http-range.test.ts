import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseRange } from '../../src/server/http-range.js';

describe('parseRange', () => {
  it('resolves a-b, a- and -n against the size, clamping the end', () => {
    assert.deepEqual(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
    assert.deepEqual(parseRange('bytes=90-', 100), { start: 90, end: 99 });
    assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
    assert.deepEqual(parseRange('bytes=-1000', 100), { start: 0, end: 99 });
    assert.deepEqual(parseRange('bytes=50-5000', 100), { start: 50, end: 99 });
    assert.deepEqual(parseRange(' Bytes = 1 - 2 ', 100), { start: 1, end: 2 });
  });

  it('calls a well-formed range that selects nothing unsatisfiable', () => {
    assert.equal(parseRange('bytes=100-', 100), 'unsatisfiable');
    assert.equal(parseRange('bytes=100-200', 100), 'unsatisfiable');
    assert.equal(parseRange('bytes=-0', 100), 'unsatisfiable');
    assert.equal(parseRange('bytes=0-', 0), 'unsatisfiable');
  });

  it('ignores what it will not honour: no header, other units, several ranges, malformed ones', () => {
    for (const header of [undefined, 'items=0-1', 'bytes=0-1,5-6', 'bytes=5-1', 'bytes=-', 'bytes=a-b', 'bytes=1', 'bytes=99999999999999999999-']) {
      assert.equal(parseRange(header, 100), undefined, String(header));
    }
  });
});
