/**
 * Bad input never crashes the node and never reaches the file system: image
 * IDs that try to escape the cache directory (plain, percent-encoded, NUL,
 * unicode, 10 kB), malformed percent-encoding, malformed and multiple ranges,
 * oversized headers, unknown methods, bodies where none belong. After each,
 * the node still answers and its directory holds nothing unexpected.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { listTree } from '../helpers.js';
import { fetchAll, startTestNode } from './helpers.js';

async function setUp(t: TestContext) {
  const fake = await startFakeGlance();
  t.after(() => fake.close());
  const node = await startTestNode(t, { upstreamUrl: fake.url });
  return { fake, ...node };
}

/** A raw request (for what a client library would refuse to send): the status line of the answer, or '' if the connection closed without one. */
function raw(url: string, text: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.end(text));
    let answer = '';
    socket.on('data', (chunk) => {
      answer += chunk.toString('latin1');
    });
    socket.on('close', () => resolve(answer.split('\r\n', 1)[0] ?? ''));
    socket.on('error', reject);
  });
}

/** Every file under the node's directory that is not the cache's own layout or an image it cached. */
function strayFiles(dir: string, cached: string[]): string[] {
  const own = new Set(['cache/cache.db', 'cache/cache.db-wal', 'cache/cache.db-shm', ...cached.map((id) => `cache/${id}`)]);
  return listTree(dir).filter((entry) => !entry.endsWith('/') && !own.has(entry));
}

describe('bad input', () => {
  it('image IDs that try to escape the cache directory reach neither the disk nor a 5xx', async (t) => {
    const { fake, url, dir } = await setUp(t);
    const good = await fake.addImage({ data: imageBytes(1000) });
    const ids = [
      '..%2F..%2F..%2Fetc%2Fpasswd', '%2e%2e%2f%2e%2e%2fetc%2fpasswd', '%2e%2e', '..', '.', 'a%00b', '%00', 'caf%C3%A9', '%E2%80%AE%E2%80%AD',
      'x'.repeat(10_000), 'incomplete', 'queue', 'cache.db', '%20', 'a%2Fb',
    ];
    for (const id of ids) {
      const response = await fetchAll(`${url}/v2/images/${id}/file`);
      assert.ok(response.status < 500, `${id.slice(0, 40)}: ${response.status}`);
    }
    assert.equal((await fetchAll(`${url}/v2/images/${good.id}/file`)).status, 200);
    assert.deepEqual(strayFiles(dir, [good.id]), []);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
  });

  it('answers malformed percent-encoding with 400', async (t) => {
    const { url } = await setUp(t);
    const response = await fetchAll(`${url}/v2/images/%E0%A4%A/file`);
    assert.equal(response.status, 400);
    assert.match(JSON.parse(response.body.toString()).message, /percent-encoding/);
  });

  it('serves the whole image for malformed or multiple ranges, and 416 only for well-formed unsatisfiable ones', async (t) => {
    const { fake, url } = await setUp(t);
    const data = imageBytes(1000);
    const image = await fake.addImage({ data });
    await fetchAll(`${url}/v2/images/${image.id}/file`);
    for (const range of ['bytes=0-1,5-6', 'bytes=abc', 'bytes=5-1', 'items=0-1', 'bytes=-', `bytes=${'9'.repeat(400)}-`, 'bytes=0-1, 2-3, 4-5']) {
      const response = await fetchAll(`${url}/v2/images/${image.id}/file`, { headers: { range } });
      assert.equal(response.status, 200, range);
      assert.ok(response.body.equals(data), range);
    }
    assert.equal((await fetchAll(`${url}/v2/images/${image.id}/file`, { headers: { range: 'bytes=1000-' } })).status, 416);
  });

  it('refuses oversized headers and unknown methods, takes bodies where none belong, and keeps serving', async (t) => {
    const { fake, url } = await setUp(t);
    const image = await fake.addImage({ data: imageBytes(1000) });
    assert.match(await raw(url, `GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`), /^HTTP\/1\.1 431/);
    assert.match(await raw(url, 'BREW /v2/images HTTP/1.1\r\nHost: x\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(await raw(url, 'GARBAGE\r\n\r\n'), /^HTTP\/1\.1 400/);
    const body = 'a body where none belongs';
    const withBody = await fetchAll(`${url}/v2/images/${image.id}/file`, { headers: { 'content-type': 'text/plain', 'content-length': String(body.length) }, body });
    assert.equal(withBody.status, 200);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
  });
});
