/** The local directory store: importImage writes it, LocalDirectorySource serves it, on real files. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { ImageExists } from '../../src/errors.js';
import { LocalDirectorySource, importImage } from '../../src/sources/local-directory.js';
import type { SourceResponse } from '../../src/sources/source.js';
import { collect, hexDigest, listTree, makeTempDir, patternedBytes, removeDir, waitForClose } from '../helpers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const GLANCE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;

interface Fixture {
  root: string;
  store: string;
  /** A file of `data` in the test's directory, outside the store. */
  file(name: string, data: Buffer): string;
  source: LocalDirectorySource;
}

function fixture(t: TestContext): Fixture {
  const root = makeTempDir('image-cache-local-');
  const store = path.join(root, 'images');
  const source = new LocalDirectorySource({ dir: store });
  t.after(async () => {
    await source.close();
    removeDir(root);
  });
  const file = (name: string, data: Buffer): string => {
    const at = path.join(root, name);
    fs.writeFileSync(at, data);
    return at;
  };
  return { root, store, file, source };
}

/** The response's body, read to its end, once its stream (and so its file) is closed. */
async function body(response: SourceResponse): Promise<Buffer> {
  const data = await collect(response.body);
  await waitForClose(response.body);
  return data;
}

describe('LocalDirectorySource and importImage', () => {
  it('imports a file as a Glance-shaped active image whose hashes are md5 and sha512 of the file, and serves its metadata', async (t) => {
    const { store, file, source } = fixture(t);
    const data = patternedBytes(3 * 1024 * 1024 + 17);
    const document = await importImage(store, file('disk.img', data), { id: 'img-1', name: 'cirros' });

    assert.deepEqual({ ...document, created_at: undefined, updated_at: undefined }, {
      id: 'img-1',
      name: 'cirros',
      status: 'active',
      size: data.length,
      checksum: hexDigest('md5', data),
      os_hash_algo: 'sha512',
      os_hash_value: hexDigest('sha512', data),
      disk_format: 'raw',
      container_format: 'bare',
      visibility: 'public',
      protected: false,
      os_hidden: false,
      owner: null,
      virtual_size: null,
      min_disk: 0,
      min_ram: 0,
      tags: [],
      created_at: undefined,
      updated_at: undefined,
      file: '/v2/images/img-1/file',
      self: '/v2/images/img-1',
      schema: '/v2/schemas/image',
    });
    assert.match(String(document.created_at), GLANCE_TIME);
    assert.equal(document.updated_at, document.created_at);
    assert.ok(fs.readFileSync(path.join(store, 'img-1')).equals(data));

    const result = await source.metadata('img-1', 'any-token');
    assert.ok(result.ok);
    assert.deepEqual(result.image, {
      id: 'img-1',
      status: 'active',
      size: data.length,
      checksum: document.checksum,
      osHashAlgo: 'sha512',
      osHashValue: document.os_hash_value,
      document: JSON.parse(fs.readFileSync(path.join(store, '+metadata', 'img-1.json'), 'utf8')),
    });
    assert.deepEqual(result.image.document, { ...document });
  });

  it('defaults the ID to a random UUID and the name to the file name, and leaves no temporary file behind', async (t) => {
    const { store, file } = fixture(t);
    const first = await importImage(store, file('a.img', Buffer.from('first')));
    const second = await importImage(store, file('b.img', Buffer.alloc(0)));
    assert.match(first.id, UUID);
    assert.match(second.id, UUID);
    assert.notEqual(first.id, second.id);
    assert.equal(first.name, 'a.img');
    assert.equal(second.size, 0);
    assert.equal(second.checksum, hexDigest('md5', Buffer.alloc(0)));
    assert.deepEqual(listTree(store), [
      '+metadata/', `+metadata/${first.id}.json`, `+metadata/${second.id}.json`, '+tmp/', first.id, second.id,
    ].sort());
  });

  it('opens the whole image with 200, and a range with 206 and its Content-Range, clamping an end past the image', async (t) => {
    const { store, file, source } = fixture(t);
    const data = patternedBytes(1000);
    await importImage(store, file('disk.img', data), { id: 'img-1' });

    const whole = await source.open('img-1', undefined);
    assert.equal(whole.status, 200);
    assert.deepEqual(whole.headers, { 'content-type': 'application/octet-stream', 'content-length': '1000' });
    assert.ok((await body(whole)).equals(data));

    const middle = await source.open('img-1', undefined, { start: 10, end: 19 });
    assert.equal(middle.status, 206);
    assert.deepEqual(middle.headers, { 'content-type': 'application/octet-stream', 'content-length': '10', 'content-range': 'bytes 10-19/1000' });
    assert.ok((await body(middle)).equals(data.subarray(10, 20)));

    const toEnd = await source.open('img-1', undefined, { start: 990 });
    assert.equal(toEnd.headers['content-range'], 'bytes 990-999/1000');
    assert.ok((await body(toEnd)).equals(data.subarray(990)));

    const pastEnd = await source.open('img-1', undefined, { start: 998, end: 5000 });
    assert.equal(pastEnd.status, 206);
    assert.equal(pastEnd.headers['content-range'], 'bytes 998-999/1000');
    assert.equal(pastEnd.headers['content-length'], '2');
    assert.ok((await body(pastEnd)).equals(data.subarray(998)));

    const lastByte = await source.open('img-1', undefined, { start: 999, end: 999 });
    assert.ok((await body(lastByte)).equals(data.subarray(999)));
  });

  it('answers 416 with Content-Range bytes */size for a range that starts at or past the end, an empty image included', async (t) => {
    const { store, file, source } = fixture(t);
    await importImage(store, file('disk.img', patternedBytes(100)), { id: 'img-1' });
    await importImage(store, file('empty.img', Buffer.alloc(0)), { id: 'empty' });
    for (const [id, start, size] of [['img-1', 100, 100], ['img-1', 5000, 100], ['empty', 0, 0]] as const) {
      const response = await source.open(id, undefined, { start });
      assert.equal(response.status, 416, `${id} from ${start}`);
      assert.equal(response.headers['content-range'], `bytes */${size}`);
      assert.equal(response.headers['content-type'], 'application/json');
      assert.match((JSON.parse((await body(response)).toString()) as { message: string }).message, /not satisfiable/);
    }
    const empty = await source.open('empty', undefined);
    assert.equal(empty.status, 200);
    assert.equal(empty.headers['content-length'], '0');
    assert.equal((await body(empty)).length, 0);
  });

  it('closes the image file once a response is read or refused', async (t) => {
    const { store, file, source } = fixture(t);
    await importImage(store, file('disk.img', patternedBytes(100)), { id: 'img-1' });
    fs.mkdirSync(path.join(store, 'a-directory'));
    const openFiles = (): number => fs.readdirSync('/proc/self/fd').length;
    const before = openFiles();
    for (let i = 0; i < 20; i++) {
      await body(await source.open('img-1', undefined));
      await body(await source.open('img-1', undefined, { start: 50, end: 59 }));
      await body(await source.open('img-1', undefined, { start: 100 }));
      await body(await source.open('a-directory', undefined));
    }
    assert.equal(openFiles(), before);
  });

  it('answers 404 with a JSON message for unknown IDs and for IDs that are no image ID, never reaching a file outside the store', async (t) => {
    const { root, store, file, source } = fixture(t);
    await importImage(store, file('disk.img', Buffer.from('bytes')), { id: 'img-1' });
    // What `../x` and `a/b` would reach if they were joined into paths unchecked.
    fs.writeFileSync(path.join(root, 'x'), 'outside the store');
    fs.writeFileSync(path.join(store, 'x.json'), JSON.stringify({ id: '../x', status: 'active' }));
    fs.mkdirSync(path.join(store, 'a'));
    fs.writeFileSync(path.join(store, 'a', 'b'), 'nested');
    fs.mkdirSync(path.join(store, '+metadata', 'a'));
    fs.writeFileSync(path.join(store, '+metadata', 'a', 'b.json'), JSON.stringify({ id: 'a/b', status: 'active' }));

    for (const id of ['unknown', '../x', 'a/b', '', '..', '+metadata', '+tmp', 'img-1\0']) {
      const metadata = await source.metadata(id, undefined);
      assert.equal(metadata.ok, false, JSON.stringify(id));
      if (metadata.ok) continue;
      assert.equal(metadata.answer.status, 404);
      assert.equal(metadata.answer.headers['content-type'], 'application/json');
      assert.match((JSON.parse(metadata.answer.body.toString()) as { message: string }).message, /No image found/);

      const opened = await source.open(id, undefined);
      assert.equal(opened.status, 404, JSON.stringify(id));
      assert.deepEqual(await body(opened), metadata.answer.body);
    }
  });

  it('answers 404 for an ID whose name in the store is a directory, not an image', async (t) => {
    const { store, file, source } = fixture(t);
    await importImage(store, file('disk.img', Buffer.from('bytes')), { id: 'img-1' });
    fs.mkdirSync(path.join(store, 'a-directory'));
    assert.equal((await source.open('a-directory', undefined)).status, 404);
  });

  it('rejects metadata that is not an image document of its ID with SourceUnavailable, naming the file', async (t) => {
    const { store, file, source } = fixture(t);
    await importImage(store, file('disk.img', Buffer.from('bytes')), { id: 'img-1' });
    const documentPath = path.join(store, '+metadata', 'img-1.json');
    const cases: Array<[string, RegExp]> = [
      ['{"id": "img-1", "status": "act', /corrupt: .*JSON/],
      ['[]', /not a JSON object/],
      ['{"id": "img-2", "status": "active"}', /its id is "img-2"/],
      ['{"id": "img-1"}', /no status/],
      ['{"id": "img-1", "status": "active", "size": -1}', /its size is -1/],
      ['{"id": "img-1", "status": "active", "checksum": 5}', /checksum is not a string/],
    ];
    for (const [text, reason] of cases) {
      fs.writeFileSync(documentPath, text);
      await assert.rejects(source.metadata('img-1', undefined), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_SOURCE_UNAVAILABLE');
        assert.ok(err.message.includes(documentPath), err.message);
        assert.match(err.message, reason);
        return true;
      });
    }
    fs.writeFileSync(documentPath, '{"id": "img-1", "status": "queued", "size": null}');
    const queued = await source.metadata('img-1', undefined);
    assert.ok(queued.ok);
    assert.deepEqual({ ...queued.image, document: undefined }, {
      id: 'img-1', status: 'queued', size: null, checksum: null, osHashAlgo: null, osHashValue: null, document: undefined,
    });
  });

  it('refuses an ID the store holds with ImageExists, keeping the stored image and leaving no temporary file', async (t) => {
    const { store, file, source } = fixture(t);
    const original = Buffer.from('original');
    await importImage(store, file('one.img', original), { id: 'img-1' });
    const before = listTree(store);
    await assert.rejects(importImage(store, file('two.img', Buffer.from('replacement')), { id: 'img-1' }), (err: unknown) => {
      assert.ok(err instanceof ImageExists);
      assert.equal(err.code, 'ERR_IMAGE_EXISTS');
      assert.equal(err.imageId, 'img-1');
      return true;
    });
    assert.deepEqual(listTree(store), before);
    assert.ok((await body(await source.open('img-1', undefined))).equals(original));

    // Bytes without metadata (an import that died between the two) hold the ID too.
    fs.writeFileSync(path.join(store, 'orphan'), 'bytes');
    await assert.rejects(importImage(store, file('three.img', Buffer.from('x')), { id: 'orphan' }), { code: 'ERR_IMAGE_EXISTS' });
  });

  it('of two concurrent imports of one ID, exactly one wins, and its metadata describes the bytes stored', async (t) => {
    const { store, file, source } = fixture(t);
    const a = patternedBytes(2 * 1024 * 1024);
    const b = Buffer.alloc(2 * 1024 * 1024 + 1, 9);
    const results = await Promise.allSettled([
      importImage(store, file('a.img', a), { id: 'same' }),
      importImage(store, file('b.img', b), { id: 'same' }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.equal((lost[0]!.reason as { code?: string }).code, 'ERR_IMAGE_EXISTS');
    const stored = fs.readFileSync(path.join(store, 'same'));
    const metadata = await source.metadata('same', undefined);
    assert.ok(metadata.ok);
    assert.equal(metadata.image.size, stored.length);
    assert.equal(metadata.image.osHashValue, hexDigest('sha512', stored));
    assert.deepEqual(listTree(store), ['+metadata/', '+metadata/same.json', '+tmp/', 'same']);
  });

  it('refuses an invalid ID, and a FILE that does not exist, before creating the store', async (t) => {
    const { store, file } = fixture(t);
    const data = file('disk.img', Buffer.from('bytes'));
    for (const id of ['../x', 'a/b', '', '+metadata', 'x'.repeat(256)]) {
      await assert.rejects(importImage(store, data, { id }), { code: 'ERR_INVALID_IMAGE_ID' }, JSON.stringify(id));
    }
    await assert.rejects(importImage(store, path.join(store, '..', 'missing.img')), { code: 'ENOENT' });
    assert.equal(fs.existsSync(store), false);
  });
});
