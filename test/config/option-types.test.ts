/** One rule per type: sizes with units, the forms refused for sizes and ports alike, and the library held to the same rules. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resolveOptions } from '../../src/config.js';
import { bytes, parseValue, port, seconds, type OptionType } from '../../src/config/option-types.js';

function valueOf<T>(type: OptionType<T>, text: string): T {
  const parsed = type.parse(text);
  assert.ok('value' in parsed, `${JSON.stringify(text)}: ${'invalid' in parsed ? parsed.invalid : ''}`);
  return parsed.value;
}

function reasonFor<T>(type: OptionType<T>, text: string): string {
  const parsed = type.parse(text);
  assert.ok('invalid' in parsed, `${JSON.stringify(text)} was accepted`);
  return parsed.invalid;
}

describe('option types', () => {
  it('a size is plain bytes, as Glance writes it, or a whole number with a binary unit', () => {
    assert.equal(valueOf(bytes, '10737418240'), 10 * 1024 ** 3);
    assert.equal(valueOf(bytes, '0'), 0);
    assert.equal(valueOf(bytes, '10G'), 10 * 1024 ** 3);
    assert.equal(valueOf(bytes, '512M'), 512 * 1024 ** 2);
    assert.equal(valueOf(bytes, '64K'), 64 * 1024);
    assert.equal(valueOf(bytes, '2T'), 2 * 1024 ** 4);
    assert.equal(valueOf(bytes, '10g'), 10 * 1024 ** 3, 'either case');
    assert.equal(valueOf(bytes, '10GiB'), 10 * 1024 ** 3, 'the IEC spelling means the same');
    assert.equal(valueOf(bytes, '512MiB'), 512 * 1024 ** 2);
  });

  it('refuses 0x400, 1e3, 1.5 and the like for sizes, ports and seconds, saying why', () => {
    const refused: Array<[string, RegExp]> = [
      ['0x400', /hexadecimal is not accepted/],
      ['1e3', /exponents are not accepted/],
      ['1.5', /fractions are not accepted/],
      ['-1', /no sign/],
      ['+5', /no sign/],
      ['', /not ""/],
      ['ten', /not "ten"/],
    ];
    for (const type of [bytes, port, seconds(0)]) {
      for (const [text, why] of refused) assert.match(reasonFor(type, text), why, `${type.metavar} ${JSON.stringify(text)}`);
    }
    assert.match(reasonFor(bytes, '10GB'), /GB is ambiguous .*write 10G or 10GiB/);
    assert.match(reasonFor(bytes, '10 G'), /no space/);
    assert.match(reasonFor(bytes, '1.5G'), /fractions are not accepted/);
    assert.match(reasonFor(bytes, '10P'), /unit K, M, G or T/);
    assert.match(reasonFor(bytes, '9999999T'), /too large/);
    assert.match(reasonFor(bytes, '0x400'), /^must be a size: whole bytes, or a whole number with a unit K, M, G or T/);
  });

  it('a port or a number of seconds is whole and within its range', () => {
    assert.equal(valueOf(port, '0'), 0);
    assert.equal(valueOf(port, '65535'), 65535);
    assert.match(reasonFor(port, '65536'), /^must be a number from 0 to 65535 \(a port\), not "65536"$/);
    assert.equal(valueOf(seconds(1, 86_400), '60'), 60);
    assert.match(reasonFor(seconds(1, 86_400), '0'), /from 1 to 86400/);
    assert.match(reasonFor(seconds(0), '-1'), /^must be a number >= 0 \(whole seconds\)/);
  });

  it('holds the library\'s numbers to the rule of their text: 1.5, 1e21, NaN and -1 bytes are refused', () => {
    assert.deepEqual(parseValue(bytes, 1024), { value: 1024 });
    for (const value of [1.5, 1e21, Number.NaN, -1, Infinity]) {
      assert.ok('invalid' in parseValue(bytes, value), String(value));
      assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheMaxSize: value }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_max_size' });
    }
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheStallTime: 0.5 }), { code: 'ERR_INVALID_OPTION', option: 'image_cache_stall_time' });
    assert.throws(() => resolveOptions({ imageCacheDir: '/x', imageCacheSqliteDb: 5 as never }), { option: 'image_cache_sqlite_db', message: /must be a string/ });
    assert.equal(resolveOptions({ imageCacheDir: '/x', imageCacheMaxSize: 0 }).imageCacheMaxSize, 0);
  });
});
