/** The image-cache command, run as a real process against a real cache directory. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { hexDigest, listTree, makeTempDir, removeDir } from '../helpers.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** Runs the command to its end; settings this machine's environment may hold are blanked unless `env` gives them. */
function cli(args: string[], { env = {}, cwd }: { env?: Record<string, string>; cwd?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd, env: { ...process.env, IMAGE_CACHE_DIR: '', IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: '', ...env } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function tempDir(t: TestContext): string {
  const dir = makeTempDir('image-cache-cli-');
  t.after(() => removeDir(dir));
  return dir;
}

describe('image-cache command line', () => {
  it('checks usage before anything is opened or created: exit 2, the problem and the command\'s synopsis on stderr, nothing on stdout', (t) => {
    const root = tempDir(t);
    const cacheDir = path.join(root, 'cache');
    const dir = ['--image-cache-dir', cacheDir];
    const node = 'http://127.0.0.1:9';
    const cases: Array<[string[], RegExp]> = [
      [['list-cached', ...dir], /say where the cache is: --url URL \(a running node\) or --local/],
      [['list-cached', '--local'], /image_cache_dir is required/],
      [['prune'], /image_cache_dir is required/],
      [['list-queued', '--url', node, '--local', ...dir], /option '--url <URL>' cannot be used with option '--local'/],
      [['list-cached', '--local', '--token', 'secret', ...dir], /option '--token <TOKEN>' cannot be used with option '--local'/],
      [['list-cached', '--url', 'ftp://glance'], /--url must be an http:\/\/ or https:\/\/ URL/],
      [['list-cached', '--local', '--no-such-flag', ...dir], /unknown option '--no-such-flag'/],
      [['queue-image', '--local', ...dir], /missing required argument 'IMAGE_ID'/],
      [['queue-image', '../escape', '--local', ...dir], /Invalid image ID "..\/escape"/],
      [['delete-cached-image', '--url', node], /missing required argument 'IMAGE_ID'/],
      [['delete-queued-image', 'a', 'b', '--local', ...dir], /too many arguments/],
      [['delete-all-cached-images', 'a', '--local', ...dir], /too many arguments/],
      [['clean', '--stall-time', '-1', ...dir], /--stall-time SECONDS must be a number >= 0/],
      [['prefetch', '--local', '--timeout', '5', ...dir], /option '--timeout <SECONDS>' cannot be used with option '--local'/],
      [['prefetch', '--url', node, '--filesystem-store-datadir', root], /cannot be used with option '--url <URL>'/],
      [['prefetch', '--url', node, '--timeout', '0'], /--timeout must be a number of seconds > 0/],
      [['verify', '--image-cache-max-size', 'lots', ...dir], /image_cache_max_size/],
      [['verify', '--image-cache-driver', 'redis', ...dir], /image_cache_driver.*must be one of sqlite, xattr, centralized_db/],
      [['list-cached', '--local', '--config-file', path.join(root, 'missing.conf')], /--config-file .*missing\.conf cannot be read/],
    ];
    for (const [args, message] of cases) {
      const result = cli(args, { cwd: root });
      assert.equal(result.status, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message, args.join(' '));
      assert.match(result.stderr, new RegExp(`^image-cache ${args[0]}: .*\\nusage: image-cache ${args[0]} `, 's'), args.join(' '));
      assert.equal(result.stdout, '', args.join(' '));
    }
    const unknown = cli(['no-such-command'], { cwd: root });
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /^image-cache: unknown command 'no-such-command'/);
    const none = cli([], { cwd: root });
    assert.equal(none.status, 2, 'no command is a usage error');
    assert.match(none.stderr, /^Usage: image-cache COMMAND/);
    assert.deepEqual(fs.readdirSync(root), [], 'no cache directory, no cache.db, no ./var');
  });

  it('the old command names say what replaced them (exit 2)', (t) => {
    const root = tempDir(t);
    for (const [old, now] of [['queue', /queue-image IMAGE_ID/], ['delete-cached', /delete-cached-image IMAGE_ID, or delete-all-cached-images/], ['delete-queued', /delete-queued-image IMAGE_ID, or delete-all-queued-images/], ['cache-file', /import FILE/]] as const) {
      const result = cli([old, 'x', '--all', '--image-cache-dir', path.join(root, 'cache')], { cwd: root });
      assert.equal(result.status, 2);
      assert.match(result.stderr, new RegExp(`^image-cache: '${old}' is now: ${now.source}`));
    }
    assert.deepEqual(fs.readdirSync(root), []);
  });

  it('every command has --help on stdout, with its synopsis, its options and the global ones', () => {
    const synopses: Record<string, string> = {
      serve: 'serve [--bind-host HOST]',
      import: 'import FILE [--id ID]',
      'list-cached': 'list-cached (--url URL [--token TOKEN] | --local) [--json]',
      'list-queued': 'list-queued (--url URL [--token TOKEN] | --local) [--json]',
      'queue-image': 'queue-image IMAGE_ID... [--all-nodes] (--url URL [--token TOKEN] | --local) [--json]',
      'delete-cached-image': 'delete-cached-image IMAGE_ID (--url URL',
      'delete-queued-image': 'delete-queued-image IMAGE_ID (--url URL',
      'delete-all-cached-images': 'delete-all-cached-images (--url URL',
      'delete-all-queued-images': 'delete-all-queued-images (--url URL',
      prefetch: 'prefetch (--url URL [--token TOKEN] | --local) [--filesystem-store-datadir DIR] [--timeout SECONDS]',
      prune: 'prune [--json]',
      clean: 'clean [--stall-time SECONDS] [--json]',
      verify: 'verify [--json]',
    };
    const list = cli(['--help']).stderr;
    for (const [name, synopsis] of Object.entries(synopses)) {
      const help = cli([name, '--help']);
      assert.equal(help.status, 0, name);
      assert.ok(help.stdout.startsWith(`Usage: image-cache ${synopsis}`), help.stdout);
      assert.match(help.stdout, /Global Options:\n(.|\n)*--image-cache-dir <DIR>/);
      assert.ok(list.includes(`  ${synopsis}`), `${name} in the command list`);
    }
    assert.match(cli(['prefetch', '--help']).stdout, /PUT \/v2\/cache\/\{id\}/);
    assert.equal(cli(['help', 'queue-image']).stdout, cli(['queue-image', '--help']).stdout);
    const help = cli(['help']);
    assert.equal(help.status, 0);
    assert.equal(help.stderr, list);
  });

  it('import copies a file into the local image store, without an image cache, and prints the new image\'s ID', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    const file = path.join(root, 'disk.img');
    const data = Buffer.alloc(5000, 3);
    fs.writeFileSync(file, data);
    const imported = cli(['import', file, '--filesystem-store-datadir', store]);
    assert.equal(imported.status, 0, imported.stderr);
    const id = imported.stdout.trim();
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(imported.stdout, `${id}\n`);
    assert.ok(fs.readFileSync(path.join(store, id)).equals(data));
    const document = JSON.parse(fs.readFileSync(path.join(store, '+metadata', `${id}.json`), 'utf8')) as Record<string, unknown>;
    assert.equal(document.size, 5000);
    assert.equal(document.name, 'disk.img');
    assert.deepEqual(listTree(root), ['disk.img', 'images/', 'images/+metadata/', `images/+metadata/${id}.json`, 'images/+tmp/', `images/${id}`].sort());
  });

  it('import --id --name --json prints the whole image document; importing that ID again fails with ERR_IMAGE_EXISTS', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    const file = path.join(root, 'disk.img');
    const data = Buffer.from('image bytes');
    fs.writeFileSync(file, data);
    const imported = cli(['import', file, '--id', 'cirros-1', '--name', 'CirrOS', '--json', '--filesystem-store-datadir', store]);
    assert.equal(imported.status, 0, imported.stderr);
    const document = JSON.parse(imported.stdout) as Record<string, unknown>;
    assert.deepEqual(document, JSON.parse(fs.readFileSync(path.join(store, '+metadata', 'cirros-1.json'), 'utf8')));
    assert.equal(document.id, 'cirros-1');
    assert.equal(document.name, 'CirrOS');
    assert.equal(document.status, 'active');
    assert.equal(document.checksum, hexDigest('md5', data));
    assert.equal(document.os_hash_value, hexDigest('sha512', data));
    const again = cli(['import', file, '--id', 'cirros-1', '--filesystem-store-datadir', store]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /ERR_IMAGE_EXISTS/);
    assert.equal(again.stdout, '');
  });

  it('import finds the store in the flag, then IMAGE_CACHE_FILESYSTEM_STORE_DATADIR, then the config file ([glance_store] over [DEFAULT]), then ./var/images', (t) => {
    const root = tempDir(t);
    const file = path.join(root, 'disk.img');
    fs.writeFileSync(file, 'bytes');
    const conf = path.join(root, 'glance-api.conf');
    fs.writeFileSync(conf, `[DEFAULT]\nfilesystem_store_datadir = ${path.join(root, 'default-section')}\n[glance_store]\nfilesystem_store_datadir = ${path.join(root, 'glance-store-section')}\n`);
    const defaultOnly = path.join(root, 'default-only.conf');
    fs.writeFileSync(defaultOnly, `[DEFAULT]\nfilesystem_store_datadir = ${path.join(root, 'default-section')}\n`);
    const env = { IMAGE_CACHE_FILESYSTEM_STORE_DATADIR: path.join(root, 'from-env') };
    const cases: Array<[string[], Record<string, string>, string]> = [
      [['--filesystem-store-datadir', path.join(root, 'from-flag'), '--config-file', conf], env, 'from-flag'],
      [['--config-file', conf], env, 'from-env'],
      [['--config-file', conf], {}, 'glance-store-section'],
      [['--config-file', defaultOnly], {}, 'default-section'],
      [[], {}, path.join('var', 'images')],
    ];
    for (const [flags, caseEnv, where] of cases) {
      const imported = cli(['import', file, '--id', 'img', ...flags], { env: caseEnv, cwd: root });
      assert.equal(imported.status, 0, imported.stderr);
      assert.equal(fs.readFileSync(path.join(root, where, 'img'), 'utf8'), 'bytes', where);
    }
  });

  it('import without FILE, with a FILE it cannot read or with a bad --id exits 2 and creates nothing', (t) => {
    const root = tempDir(t);
    const store = path.join(root, 'images');
    fs.mkdirSync(path.join(root, 'a-directory'));
    fs.writeFileSync(path.join(root, 'disk.img'), 'bytes');
    const before = listTree(root);
    const usageErrors: Array<[string[], RegExp]> = [
      [[], /missing required argument 'FILE'/],
      [[path.join(root, 'missing.img')], /cannot read .*missing\.img/],
      [[path.join(root, 'a-directory')], /not a regular file/],
      [[path.join(root, 'disk.img'), '--id', '../escape'], /not a valid image ID/],
      [[path.join(root, 'disk.img'), '--id', 'a/b'], /not a valid image ID/],
      [[path.join(root, 'disk.img'), 'extra'], /too many arguments/],
    ];
    for (const [args, message] of usageErrors) {
      // Both the named store and the default one (./var/images) would show up in the tree.
      for (const storeFlags of [['--filesystem-store-datadir', store], []]) {
        const result = cli(['import', ...args, ...storeFlags], { cwd: root });
        assert.equal(result.status, 2, `${args.join(' ')}: ${result.stderr}`);
        assert.match(result.stderr, message);
        assert.match(result.stderr, /usage: image-cache import FILE/);
      }
    }
    assert.deepEqual(listTree(root), before);
  });

  it('lists import in the usage text', () => {
    const help = cli(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.stderr, /import FILE \[--id ID\] \[--name NAME\] \[--filesystem-store-datadir DIR\] \[--json\]/);
    assert.match(help.stderr, /IMAGE_CACHE_FILESYSTEM_STORE_DATADIR/);
  });
});
