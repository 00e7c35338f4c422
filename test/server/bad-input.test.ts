/**
 * Bad input never crashes the node and never reaches the file system: image
 * IDs that try to escape the cache directory (plain, percent-encoded, NUL,
 * unicode, 10 kB), malformed percent-encoding, malformed and multiple ranges,
 * oversized headers, unknown methods, bodies where none belong, clients that
 * trickle their headers for ever. After each, the node still answers and its
 * directory holds nothing unexpected.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageBytes } from '../support/fake-glance.js';
import { listTree } from '../helpers.js';
import { fetchAll, sha512, startFakeGlanceAndNode, until } from './helpers.js';


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

/** client_header_timeout in the slow-client tests: short, so that its bound is seen within a test. */
const HEADER_TIMEOUT_S = 1;
/** A trickling client that the node has not cut off by then gives up itself (and the test fails). */
const GIVE_UP_MS = 30_000;

interface TrickleEnd {
  /** False when the client gave up first: the node held the connection. */
  closedByNode: boolean;
  /** The node's status line, or '' if it closed without one. */
  answer: string;
  /** From the first byte sent to the close. */
  ms: number;
}

/**
 * A slowloris: a request line, then one header byte every `everyMs`, never
 * the blank line that ends the headers. `sent` counts the bytes written so
 * far; `closed` resolves when the connection closes.
 */
function trickleHeaders(url: string, everyMs = 200): { sent(): number; closed: Promise<TrickleEnd> } {
  const { hostname, port } = new URL(url);
  let sent = 0;
  const closed = new Promise<TrickleEnd>((resolve) => {
    let started = 0;
    let answer = '';
    let gaveUp = false;
    let trickle: NodeJS.Timeout | undefined;
    const write = (text: string): void => {
      if (!socket.writable) return;
      socket.write(text);
      sent += text.length;
    };
    const socket = net.connect(Number(port), hostname, () => {
      started = performance.now();
      write('GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Slow: ');
      trickle = setInterval(() => write('a'), everyMs);
    });
    const giveUp = setTimeout(() => {
      gaveUp = true;
      socket.destroy();
    }, GIVE_UP_MS);
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
    });
    // A byte written as the node closes may fail (EPIPE, ECONNRESET): the close is what counts.
    socket.on('error', () => {});
    socket.on('close', () => {
      clearInterval(trickle);
      clearTimeout(giveUp);
      resolve({ closedByNode: !gaveUp, answer: answer.split('\r\n', 1)[0] ?? '', ms: performance.now() - started });
    });
  });
  return { sent: () => sent, closed };
}

/** The node cut the trickling client off: with 408 (or a bare close), a few timeouts' time at most after its first byte. */
function assertCutOff(end: TrickleEnd, what: string): void {
  assert.ok(end.closedByNode, `${what}: still open after ${GIVE_UP_MS} ms`);
  assert.match(end.answer, /^(HTTP\/1\.1 408 .*)?$/, what);
  assert.ok(end.ms < HEADER_TIMEOUT_S * 1000 * 5, `${what}: closed after ${Math.round(end.ms)} ms, client_header_timeout is ${HEADER_TIMEOUT_S} s`);
}

/** Every file under the node's directory that is not the cache's own layout or an image it cached. */
function strayFiles(dir: string, cached: string[]): string[] {
  const own = new Set(['cache/cache.db', 'cache/cache.db-wal', 'cache/cache.db-shm', ...cached.map((id) => `cache/${id}`)]);
  return listTree(dir).filter((entry) => !entry.endsWith('/') && !own.has(entry));
}

describe('bad input', () => {
  it('image IDs that try to escape the cache directory reach neither the disk nor a 5xx', async (t) => {
    const { fake, url, dir } = await startFakeGlanceAndNode(t);
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
    const { url } = await startFakeGlanceAndNode(t);
    const response = await fetchAll(`${url}/v2/images/%E0%A4%A/file`, { headers: { accept: 'application/json' } });
    assert.equal(response.status, 400);
    assert.match(JSON.parse(response.body.toString()).message, /percent-encoding/);
  });

  it('serves the whole image for malformed or multiple ranges, and 416 only for well-formed unsatisfiable ones', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
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

  it('refuses oversized headers and URLs and unknown methods, takes bodies where none belong, and keeps serving', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const image = await fake.addImage({ data: imageBytes(1000) });
    assert.match(await raw(url, `GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`), /^HTTP\/1\.1 431/);
    assert.match(await raw(url, `GET /v2/images/${'a'.repeat(64 * 1024)}/file HTTP/1.1\r\nHost: x\r\n\r\n`), /^HTTP\/1\.1 431/, 'an oversized URL');
    assert.match(await raw(url, 'BREW /v2/images HTTP/1.1\r\nHost: x\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(await raw(url, 'GARBAGE\r\n\r\n'), /^HTTP\/1\.1 400/);
    const body = 'a body where none belongs';
    const withBody = await fetchAll(`${url}/v2/images/${image.id}/file`, { headers: { 'content-type': 'text/plain', 'content-length': String(body.length) }, body });
    assert.equal(withBody.status, 200);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
  });

  it('cuts off a client that trickles its headers once client_header_timeout has passed, and serves others meanwhile', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t, { server: { clientHeaderTimeout: HEADER_TIMEOUT_S } });
    const data = imageBytes(1024 * 1024);
    const image = await fake.addImage({ data });
    const slow = trickleHeaders(url);
    // The node has its connection and a few header bytes before the others ask.
    await until(() => slow.sent() > 'GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Slow: '.length + 2, 'a few trickled bytes');
    for (let i = 0; i < 2; i++) {
      const response = await fetchAll(`${url}/v2/images/${image.id}/file`);
      assert.equal(response.status, 200);
      assert.ok(response.body.equals(data));
    }
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
    assertCutOff(await slow.closed, 'the trickling client');
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
  });

  it('completes a download correctly while 50 clients trickle their headers, and cuts all of them off', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t, { server: { clientHeaderTimeout: HEADER_TIMEOUT_S } });
    const data = imageBytes(16 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const slow = Array.from({ length: 50 }, () => trickleHeaders(url));
    await until(() => slow.every((client) => client.sent() > 0), 'every trickling client connected');
    const miss = await fetchAll(`${url}/v2/images/${image.id}/file`);
    assert.equal(miss.status, 200);
    assert.equal(sha512(miss.body), sha512(data));
    const hit = await fetchAll(`${url}/v2/images/${image.id}/file`);
    assert.equal(hit.status, 200);
    assert.equal(sha512(hit.body), sha512(data));
    const ends = await Promise.all(slow.map((client) => client.closed));
    ends.forEach((end, i) => assertCutOff(end, `trickling client ${i}`));
    assert.equal(fake.fileRequests(image.id), 1);
    assert.equal((await fetchAll(`${url}/healthcheck`)).status, 200);
  });
});
