/**
 * Library users pay for their own driver only (issue 14, item 6): importing
 * the package loads neither pg, nor better-sqlite3 and its binding, nor the
 * xattr binding; each is loaded when ImageCache.create asks for its driver.
 * Checked in fresh processes, from what Node has loaded: the CommonJS module
 * cache (pg and both bindings' JavaScript are CommonJS) and the shared
 * objects mapped into the process (/proc/self/maps, for the .node files).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { makeTempDir, removeDir } from '../helpers.js';

const INDEX = new URL('../../src/index.js', import.meta.url).href;

/** The three drivers' dependencies, by what shows that each is loaded. */
const DEPENDENCIES = {
  pg: { module: /[/\\]node_modules[/\\]pg[/\\]/ },
  'better-sqlite3': { module: /[/\\]node_modules[/\\]better-sqlite3[/\\]/, binding: /better_sqlite3\.node$/ },
  '@napi-rs/xattr': { module: /[/\\]node_modules[/\\]@napi-rs[/\\]xattr/, binding: /xattr[^/]*\.node$/ },
} as const;
type Dependency = keyof typeof DEPENDENCIES;

/**
 * Runs `body` (a module's statements, with the package's index URL in INDEX)
 * in a fresh Node, then reports which of the drivers' dependencies it loaded.
 */
function loadedAfter(body: string): Dependency[] {
  const script = `
    import fs from 'node:fs';
    import { createRequire } from 'node:module';
    const INDEX = ${JSON.stringify(INDEX)};
    ${body}
    const modules = Object.keys(createRequire(import.meta.url).cache);
    const bindings = fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').map((line) => line.split(/\\s+/).slice(5).join(' ')).filter((file) => file.endsWith('.node'));
    process.stdout.write(JSON.stringify({ modules, bindings }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  const { modules, bindings } = JSON.parse(out) as { modules: string[]; bindings: string[] };
  return (Object.keys(DEPENDENCIES) as Dependency[]).filter((name) => {
    const signs: { module: RegExp; binding?: RegExp } = DEPENDENCIES[name];
    return modules.some((file) => signs.module.test(file)) || (signs.binding !== undefined && bindings.some((file) => signs.binding!.test(file)));
  });
}

describe('importing the package', () => {
  it('loads none of the drivers\' dependencies', () => {
    assert.deepEqual(loadedAfter('const lib = await import(INDEX); if (typeof lib.ImageCache !== "function") throw new Error("no ImageCache");'), []);
  });

  it('loads a driver\'s dependency once that driver is used, and only that one', () => {
    const dir = makeTempDir('image-cache-lazy-');
    try {
      const opened = (driver: string): string => `
        const { ImageCache, silentLogger } = await import(INDEX);
        const cache = await ImageCache.create({ imageCacheDir: ${JSON.stringify(dir)} + '/${driver}', imageCacheDriver: '${driver}', logger: silentLogger }, { fallbackToSqlite: false });
        await cache.close();`;
      assert.deepEqual(loadedAfter(opened('sqlite')), ['better-sqlite3']);
      assert.deepEqual(loadedAfter(opened('xattr')), ['@napi-rs/xattr']);
    } finally {
      removeDir(dir);
    }
  });

  it('would be caught re-exporting a driver statically (the check sees a static import of one)', () => {
    // What a static `export { SqliteIndex } from './metadata/sqlite.js'` in index.ts would load with it.
    const driverModule = new URL('../../src/metadata/sqlite.js', import.meta.url).href;
    assert.deepEqual(loadedAfter(`await import(INDEX); await import(${JSON.stringify(driverModule)});`), ['better-sqlite3']);
    const pgModule = new URL('../../src/metadata/centralized-db.js', import.meta.url).href;
    assert.deepEqual(loadedAfter(`await import(${JSON.stringify(pgModule)});`), ['pg']);
  });
});
