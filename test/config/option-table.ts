/**
 * The README's option table as the schema gives it (readme.test.ts checks
 * that the README has exactly this). After changing an option, print it with
 * `node dist/test/config/option-table.js` and paste it over the README's.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ALL_OPTIONS, shownDefault, type OptionSpec } from '../../src/config/schema.js';

export const TABLE_HEADER = '| option | in glance-api.conf | type | default | environment | flag | |';

/** Where a file keeps the option: `[DEFAULT]`, or `[database] connection` when the key is not the option's name. */
function places(spec: OptionSpec): string {
  return spec.places.map(([section, key]) => `\`[${section}]${key === spec.name ? '' : ` ${key}`}\``).join(' or ');
}

export function optionRow(spec: OptionSpec): string {
  const fallback = shownDefault(spec);
  const cells = [
    `\`${spec.name}\``,
    places(spec),
    spec.type.summary,
    fallback === undefined ? 'none' : `\`${fallback}\``,
    `\`${spec.env}\``,
    spec.flag === undefined ? 'none' : `\`--${spec.flag}\``,
    spec.help,
  ];
  return `| ${cells.join(' | ')} |`;
}

export function optionTable(): string {
  return [TABLE_HEADER, `|${'---|'.repeat(7)}`, ...ALL_OPTIONS.map(optionRow)].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url) || process.argv[1] === path.resolve(fileURLToPath(import.meta.url))) {
  process.stdout.write(`${optionTable()}\n`);
}
