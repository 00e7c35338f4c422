/**
 * The README's option table and every command's --help against the schema:
 * a new user reads the table, so an option added, renamed, or given another
 * default or variable without the table following fails here.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ALL_OPTIONS, optionsOf, shownDefault } from '../../src/config/schema.js';
import { optionRow, optionTable, TABLE_HEADER } from './option-table.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

/** The rows of the README's table that starts with TABLE_HEADER (under "The cache node"). */
function readmeTable(): string[] {
  const lines = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').split('\n');
  const start = lines.indexOf(TABLE_HEADER);
  assert.notEqual(start, -1, `README.md has no option table starting with:\n${TABLE_HEADER}`);
  const end = lines.findIndex((line, i) => i > start && !line.startsWith('|'));
  return lines.slice(start, end === -1 ? undefined : end);
}

function help(args: string[]): string {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, COLUMNS: '1000' } });
  assert.equal(result.status, 0, result.stderr);
  // commander wraps to the terminal's width: one line per option, whatever the width.
  return result.stdout.replace(/\n {20,}/g, ' ');
}

describe('the option schema and its documentation', () => {
  it('the README\'s option table is the schema\'s, row for row', () => {
    const readme = readmeTable();
    const expected = optionTable().split('\n');
    const missing = expected.filter((row) => !readme.includes(row));
    const extra = readme.filter((row) => !expected.includes(row));
    assert.deepEqual(
      { missing, extra },
      { missing: [], extra: [] },
      `README.md's option table disagrees with src/config/schema.ts.\n` +
        `The schema's rows the README lacks:\n${missing.join('\n')}\nThe README's rows the schema does not give:\n${extra.join('\n')}\n` +
        `The whole table, as the schema gives it (node dist/test/config/option-table.js prints it):\n${optionTable()}`,
    );
    assert.deepEqual(readme, expected, 'the same rows, in the schema\'s order');
  });

  it('every option has one row, naming its default, variable and flag', () => {
    const names = ALL_OPTIONS.map((spec) => spec.name);
    assert.equal(new Set(names).size, names.length, 'option names are unique');
    assert.equal(new Set(ALL_OPTIONS.map((spec) => spec.env)).size, names.length, 'environment variables are unique');
    for (const spec of ALL_OPTIONS) {
      const row = optionRow(spec);
      assert.ok(row.startsWith(`| \`${spec.name}\` |`));
      assert.ok(row.includes(`\`${spec.env}\``));
      if (spec.flag !== undefined) assert.ok(row.includes(`\`--${spec.flag}\``));
      const fallback = shownDefault(spec);
      if (fallback !== undefined) assert.ok(row.includes(`\`${fallback}\``));
    }
  });

  it('--help lists each option\'s flag with its help, variable and default: the cache\'s on every command, the node\'s on serve', () => {
    const described = (text: string, spec: (typeof ALL_OPTIONS)[number]): void => {
      const line = text.split('\n').find((candidate) => candidate.trimStart().startsWith(`--${spec.flag} <${spec.type.metavar}>`));
      assert.ok(line !== undefined, `--${spec.flag} <${spec.type.metavar}> in:\n${text}`);
      assert.ok(line.includes(spec.help), `${spec.name}'s help in: ${line}`);
      assert.ok(line.includes(spec.env), `${spec.name}'s variable in: ${line}`);
      const fallback = shownDefault(spec);
      if (fallback !== undefined) assert.ok(line.includes(`default ${fallback}`), `${spec.name}'s default in: ${line}`);
    };
    const serve = help(['serve', '--help']);
    for (const spec of optionsOf('node')) described(serve, spec);
    for (const command of ['serve', 'list-cached', 'prune', 'import']) {
      const text = command === 'serve' ? serve : help([command, '--help']);
      for (const spec of optionsOf('cache')) described(text, spec);
    }
    assert.ok(!/--(username|password|auth-url)\b/.test(serve), '[keystone_authtoken] has no flags');
  });
});
