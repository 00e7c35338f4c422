/**
 * The fake upstream Glance, through real sockets: what a client of it sees
 * (statuses, headers, bodies, faults on the wire, the rate limit) and what it
 * counts. Clients are the global fetch, and raw TCP where the wire itself is
 * the point (a short body's clean end).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { describe, it, type TestContext } from 'node:test';
import { hexDigest, makeTempDir, removeDir, waitUntil } from '../helpers.js';
import { imageBytes, startFakeGlance, TokenBucket, type FakeGlance, type FakeGlanceOptions } from './fake-glance.js';

const KIB = 1024;
const MIB = 1024 * KIB;
const NOT_FOUND_BODY = '404 Not Found\n\nThe resource could not be found.\n\n   ';

/** A fake Glance closed after the test. */
async function fakeGlance(t: TestContext, options?: FakeGlanceOptions): Promise<FakeGlance> {
  const fake = await startFakeGlance(options);
  t.after(() => fake.close());
  return fake;
}

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function request(fake: FakeGlance, urlPath: string, init: RequestInit = {}): Promise<Answer> {
  const response = await fetch(`${fake.url}${urlPath}`, init);
  return { status: response.status, headers: response.headers, body: Buffer.from(await response.arrayBuffer()) };
}

/** A Buffer as fetch's body type wants it (fetch's types refuse a Buffer that might sit on a SharedArrayBuffer). */
function asBody(data: Buffer): Uint8Array<ArrayBuffer> {
  return new Uint8Array(data);
}

function json(answer: Answer): Record<string, unknown> {
  return JSON.parse(answer.body.toString('utf8')) as Record<string, unknown>;
}

/** Reads a response body as far as it goes: the bytes received, and the error that ended it if it did not end cleanly. */
async function readAsFarAsPossible(response: Response): Promise<{ received: number; error: unknown }> {
  let received = 0;
  try {
    for await (const chunk of response.body!) received += chunk.length;
    return { received, error: undefined };
  } catch (error) {
    return { received, error };
  }
}

/**
 * A GET over a raw TCP connection, read until the server ends or breaks it:
 * the head as text, the body bytes after it, and how the connection ended.
 */
function rawGet(fake: FakeGlance, urlPath: string, ...headers: string[]): Promise<{ head: string; body: Buffer; ending: 'end' | 'error' }> {
  const { port } = new URL(fake.url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    const chunks: Buffer[] = [];
    let ending: 'end' | 'error' = 'end';
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => (ending = 'error'));
    socket.on('close', () => {
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      resolve({ head: all.subarray(0, split).toString('latin1'), body: all.subarray(split + 4), ending });
    });
    socket.end(`GET ${urlPath} HTTP/1.1\r\n${['Host: 127.0.0.1', ...headers].join('\r\n')}\r\n\r\n`);
  });
}

/** Whether a promise has settled by now. */
function settledFlag(promise: Promise<unknown>): () => boolean {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  return () => settled;
}

describe('fake Glance', () => {
  describe('imageBytes', () => {
    it('is deterministic per seed, a prefix of any longer run, different per block, and not compressible', () => {
      const data = imageBytes(2 * MIB + 3, 7);
      assert.deepEqual(imageBytes(2 * MIB + 3, 7), data);
      assert.deepEqual(imageBytes(1000, 7), data.subarray(0, 1000));
      assert.notDeepEqual(imageBytes(1000, 8), data.subarray(0, 1000));
      assert.notDeepEqual(data.subarray(0, MIB), data.subarray(MIB, 2 * MIB));
      assert.ok(deflateSync(data).length > data.length * 0.99, 'deflate shrank the bytes');
      assert.equal(imageBytes(0).length, 0);
      // Pinned, so that benchmark images stay the same bytes from one version to the next.
      assert.equal(hexDigest('md5', data), 'eeee3e80350b257f6ab5f94b66b4806c');
    });
  });

  describe('metadata', () => {
    it('GET /versions lists v2 with one CURRENT version, without a token even when tokens are checked', async (t) => {
      const fake = await fakeGlance(t, { validTokens: ['good'] });
      const answer = await request(fake, '/versions');
      assert.equal(answer.status, 200);
      const versions = json(answer).versions as Array<{ id: string; status: string }>;
      assert.deepEqual(
        versions.filter((version) => version.status === 'CURRENT').map((version) => version.id.startsWith('v2.')),
        [true],
      );
    });

    it('GET /v2/images/{id} is the Glance document, with md5 and sha512 computed, and is counted', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(100 * KIB);
      const image = await fake.addImage({ id: 'img-1', name: 'cirros', data });
      assert.deepEqual(image, { id: 'img-1', size: data.length, checksum: hexDigest('md5', data), osHashValue: hexDigest('sha512', data) });

      const answer = await request(fake, '/v2/images/img-1', { headers: { 'X-Auth-Token': 'anything' } });
      assert.equal(answer.status, 200);
      assert.match(answer.headers.get('content-type') ?? '', /^application\/json/);
      const document = json(answer);
      assert.deepEqual(
        { ...document, created_at: undefined, updated_at: undefined },
        {
          id: 'img-1',
          name: 'cirros',
          status: 'active',
          visibility: 'public',
          protected: false,
          os_hidden: false,
          owner: null,
          checksum: image.checksum,
          os_hash_algo: 'sha512',
          os_hash_value: image.osHashValue,
          size: data.length,
          virtual_size: null,
          disk_format: 'raw',
          container_format: 'bare',
          min_disk: 0,
          min_ram: 0,
          tags: [],
          created_at: undefined,
          updated_at: undefined,
          file: '/v2/images/img-1/file',
          self: '/v2/images/img-1',
          schema: '/v2/schemas/image',
        },
      );
      assert.match(String(document.created_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.match(String(document.updated_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.equal(fake.metadataRequests('img-1'), 1);
      assert.equal(fake.fileRequests('img-1'), 0);
      assert.deepEqual(
        fake.requests.map(({ method, path, headers }) => [method, path, headers['x-auth-token']]),
        [['GET', '/v2/images/img-1', 'anything']],
      );
    });

    it('advertises the overridden checksum and hash (document and Content-MD5) but returns the true ones', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(10 * KIB);
      const image = await fake.addImage({ data, checksum: 'f'.repeat(32), osHashValue: 'e'.repeat(128) });
      assert.equal(image.checksum, hexDigest('md5', data));
      const document = json(await request(fake, `/v2/images/${image.id}`));
      assert.equal(document.checksum, 'f'.repeat(32));
      assert.equal(document.os_hash_value, 'e'.repeat(128));
      assert.equal((await request(fake, `/v2/images/${image.id}/file`)).headers.get('content-md5'), 'f'.repeat(32));

      const bare = await fake.addImage({ data, checksum: null, osHashAlgo: null });
      const bareDocument = json(await request(fake, `/v2/images/${bare.id}`));
      assert.deepEqual([bareDocument.checksum, bareDocument.os_hash_algo, bareDocument.os_hash_value], [null, null, null]);
      assert.equal((await request(fake, `/v2/images/${bare.id}/file`)).headers.has('content-md5'), false);
    });

    it('an unknown image, a private image without its token, and an unknown route are the same Glance 404', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(KIB);
      await fake.addImage({ id: 'private', data, visibleTo: ['owner'] });
      await fake.addImage({ id: 'public', data });
      for (const [urlPath, token] of [
        ['/v2/images/nope', undefined],
        ['/v2/images/nope/file', undefined],
        ['/v2/images/private', undefined],
        ['/v2/images/private/file', 'stranger'],
        ['/v2/nothing', undefined],
      ] as const) {
        const headers: Record<string, string> = token === undefined ? {} : { 'X-Auth-Token': token };
        const answer = await request(fake, urlPath, { headers });
        assert.equal(answer.status, 404, urlPath);
        assert.equal(answer.body.toString(), NOT_FOUND_BODY, urlPath);
        assert.match(answer.headers.get('content-type') ?? '', /^text\/plain/);
      }
      const asOwner = { headers: { 'X-Auth-Token': 'owner' } };
      assert.equal(json(await request(fake, '/v2/images/private', asOwner)).visibility, 'private');
      assert.deepEqual(await request(fake, '/v2/images/private/file', asOwner).then((answer) => answer.body), data);

      const ids = async (init: RequestInit): Promise<unknown[]> => {
        const listing = json(await request(fake, '/v2/images', init));
        assert.deepEqual([listing.schema, listing.first], ['/v2/schemas/images', '/v2/images']);
        return (listing.images as Array<{ id: string }>).map((image) => image.id);
      };
      assert.deepEqual(await ids({}), ['public']);
      assert.deepEqual(await ids(asOwner), ['private', 'public']);
    });

    it('with validTokens, a missing or unknown token gets Glance\'s 401 and a listed one passes', async (t) => {
      const fake = await fakeGlance(t, { validTokens: ['good'] });
      const image = await fake.addImage({ data: imageBytes(KIB) });
      const refused: Array<Record<string, string>> = [{}, { 'X-Auth-Token': 'bad' }];
      for (const headers of refused) {
        for (const urlPath of [`/v2/images/${image.id}`, `/v2/images/${image.id}/file`, '/v2/images']) {
          const answer = await request(fake, urlPath, { headers });
          assert.equal(answer.status, 401, urlPath);
          assert.match(answer.body.toString(), /^401 Unauthorized\n\nThis server could not verify that you are authorized/);
        }
      }
      assert.equal((await request(fake, `/v2/images/${image.id}`, { headers: { 'X-Auth-Token': 'good' } })).status, 200);
      // Refused requests are still requests for the image.
      assert.equal(fake.metadataRequests(image.id), 3);
      assert.equal(fake.fileRequests(image.id), 2);
    });

    it('with validateToken, every request\'s token is asked about, and a missing or refused one gets Glance\'s 401', async (t) => {
      const asked: string[] = [];
      let accepted = new Set(['good']);
      const validateToken = async (token: string): Promise<boolean> => {
        asked.push(token);
        return accepted.has(token);
      };
      const fake = await fakeGlance(t, { validateToken });
      const image = await fake.addImage({ data: imageBytes(KIB) });
      for (const urlPath of [`/v2/images/${image.id}`, `/v2/images/${image.id}/file`, '/v2/images']) {
        assert.equal((await request(fake, urlPath, { headers: { 'X-Auth-Token': 'good' } })).status, 200, urlPath);
        assert.equal((await request(fake, urlPath, {})).status, 401, `${urlPath} without a token`);
        const refused = await request(fake, urlPath, { headers: { 'X-Auth-Token': 'bad' } });
        assert.equal(refused.status, 401, urlPath);
        assert.match(refused.body.toString(), /^401 Unauthorized\n\nThis server could not verify that you are authorized/);
      }
      assert.deepEqual(asked, ['good', 'bad', 'good', 'bad', 'good', 'bad'], 'no token, no question');
      // Asked on every request, nothing remembered: a token refused from now on is refused at once.
      accepted = new Set();
      assert.equal((await request(fake, `/v2/images/${image.id}/file`, { headers: { 'X-Auth-Token': 'good' } })).status, 401);
    });
  });

  describe('downloads', () => {
    it('GET /v2/images/{id}/file sends the bytes with Glance\'s headers, and counts requests and bytes', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(MIB + 17);
      const image = await fake.addImage({ data });
      for (let i = 0; i < 2; i++) {
        const answer = await request(fake, `/v2/images/${image.id}/file`);
        assert.equal(answer.status, 200);
        assert.equal(answer.headers.get('content-type'), 'application/octet-stream');
        assert.equal(answer.headers.get('content-length'), String(data.length));
        assert.equal(answer.headers.get('content-md5'), image.checksum);
        assert.deepEqual(answer.body, data);
      }
      assert.equal(fake.fileRequests(image.id), 2);
      assert.equal(fake.bytesSent(image.id), 2 * data.length);
      assert.equal(fake.metadataRequests(image.id), 0);
    });

    it('streams a { file } image from disk, whole and in ranges, with digests computed from the file', async (t) => {
      const dir = makeTempDir('fake-glance-test-');
      t.after(() => removeDir(dir));
      const data = imageBytes(3 * MIB + 5, 3);
      const file = path.join(dir, 'image.raw');
      fs.writeFileSync(file, data);
      const fake = await fakeGlance(t);
      const image = await fake.addImage({ data: { file } });
      assert.deepEqual(image.checksum, hexDigest('md5', data));
      assert.deepEqual(image.osHashValue, hexDigest('sha512', data));
      assert.deepEqual((await request(fake, `/v2/images/${image.id}/file`)).body, data);
      const range = await request(fake, `/v2/images/${image.id}/file`, { headers: { Range: 'bytes=1048570-2097160' } });
      assert.equal(range.status, 206);
      assert.deepEqual(range.body, data.subarray(1048570, 2097161));
    });

    it('respects backpressure: a client that reads nothing holds the server to what the socket buffers take', async (t) => {
      const fake = await fakeGlance(t);
      // In memory, where nothing but backpressure would stop the server writing it all at once (a file source is read by the same loop).
      const image = await fake.addImage({ data: imageBytes(64 * MIB) });
      // The handshake tells when the server has the request; the client never reads its answer.
      const { waiting, release } = fake.hold(image.id);
      const socket = net.connect(Number(new URL(fake.url).port), '127.0.0.1');
      t.after(() => socket.destroy());
      socket.pause();
      socket.write(`GET /v2/images/${image.id}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      await waiting;
      release();
      // Round trips give the server turns to write; without backpressure it would have written everything at once.
      for (let i = 0; i < 3; i++) await request(fake, `/v2/images/${image.id}`);
      const sent = fake.bytesSent(image.id);
      assert.ok(sent > 0 && sent < 32 * MIB, `${sent} bytes written to a client that reads nothing`);
    });

    it('answers Range requests as Glance does: 206 with Content-Range, 416 when unsatisfiable, 400 for several ranges', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(1000);
      const image = await fake.addImage({ data });
      const get = (range: string): Promise<Answer> => request(fake, `/v2/images/${image.id}/file`, { headers: { Range: range } });
      for (const [range, start, end] of [
        ['bytes=0-99', 0, 99],
        ['bytes=900-', 900, 999],
        ['bytes=-10', 990, 999],
        ['bytes=500-5000', 500, 999],
        ['bytes=-5000', 0, 999],
        ['bytes=999-999', 999, 999],
      ] as const) {
        const answer = await get(range);
        assert.equal(answer.status, 206, range);
        assert.equal(answer.headers.get('content-range'), `bytes ${start}-${end}/1000`, range);
        assert.equal(answer.headers.get('content-length'), String(end - start + 1), range);
        assert.deepEqual(answer.body, data.subarray(start, end + 1), range);
      }
      for (const range of ['bytes=1000-', 'bytes=5-2', 'bytes=-0', 'items=0-1', 'bytes=x-1']) {
        const answer = await get(range);
        assert.equal(answer.status, 416, range);
        assert.equal(answer.headers.get('content-range'), 'bytes */1000', range);
        assert.match(answer.body.toString(), /^416 Request Range Not Satisfiable\n\n/, range);
      }
      assert.equal((await get('bytes=0-1,5-6')).status, 400);
      assert.equal(fake.fileRequests(image.id), 12);
    });

    it('a deactivated image is 403 with Glance\'s reason, a queued one 204, and setStatus switches between them', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(KIB);
      const image = await fake.addImage({ data, status: 'deactivated' });
      const file = `/v2/images/${image.id}/file`;
      const forbidden = await request(fake, file);
      assert.equal(forbidden.status, 403);
      assert.equal(
        forbidden.body.toString(),
        '403 Forbidden\n\nThe requested image has been deactivated. Image data download is forbidden.\n\n   ',
      );
      assert.equal(json(await request(fake, `/v2/images/${image.id}`)).status, 'deactivated');
      fake.setStatus(image.id, 'queued');
      const noContent = await request(fake, file);
      assert.deepEqual([noContent.status, noContent.body.length], [204, 0]);
      fake.setStatus(image.id, 'active');
      assert.deepEqual((await request(fake, file)).body, data);
      assert.throws(() => fake.setStatus('nope', 'active'));
    });
  });

  describe('faults', () => {
    it('a status fault answers its route only, with Glance\'s page or the given body, until cleared', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(KIB);
      const image = await fake.addImage({ data });
      const metadata = `/v2/images/${image.id}`;
      const file = `${metadata}/file`;

      fake.setFault(image.id, { kind: 'status', code: 503, on: 'file' });
      const unavailable = await request(fake, file);
      assert.equal(unavailable.status, 503);
      assert.equal(unavailable.body.toString(), '503 Service Unavailable\n\nThe server is currently unavailable. Please try again at a later time.\n\n   ');
      assert.equal((await request(fake, metadata)).status, 200);

      fake.setFault(image.id, { kind: 'status', code: 500, on: 'metadata', body: '{"error": "boom"}' });
      const broken = await request(fake, metadata);
      assert.equal(broken.status, 500);
      assert.equal(broken.body.toString(), '{"error": "boom"}');
      assert.match(broken.headers.get('content-type') ?? '', /^application\/json/);
      assert.deepEqual((await request(fake, file)).body, data);

      fake.setFault(image.id, undefined);
      assert.equal((await request(fake, metadata)).status, 200);
      assert.deepEqual([fake.metadataRequests(image.id), fake.fileRequests(image.id)], [3, 2]);
    });

    it('reset: the client gets at most n bytes and then an error, before the announced end', async (t) => {
      const fake = await fakeGlance(t);
      const image = await fake.addImage({ data: imageBytes(4 * MIB) });
      fake.setFault(image.id, { kind: 'reset', afterBytes: MIB });
      const response = await fetch(`${fake.url}/v2/images/${image.id}/file`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('content-length'), String(4 * MIB));
      const { received, error } = await readAsFarAsPossible(response);
      assert.ok(error !== undefined, 'the body ended without an error');
      assert.ok(received <= MIB, `received ${received} bytes`);
      assert.equal(fake.bytesSent(image.id), MIB);
    });

    for (const afterBytes of [0, 100 * KIB]) {
      it(`short after ${afterBytes} bytes: the full Content-Length, exactly n bytes, then a clean end of the connection`, async (t) => {
        const fake = await fakeGlance(t);
        const data = imageBytes(MIB);
        const image = await fake.addImage({ data });
        fake.setFault(image.id, { kind: 'short', afterBytes });
        const { head, body, ending } = await rawGet(fake, `/v2/images/${image.id}/file`);
        assert.match(head, /^HTTP\/1\.1 200 /);
        assert.match(head, new RegExp(`\r\ncontent-length: ${MIB}\r\n`, 'i'));
        assert.equal(ending, 'end');
        assert.deepEqual(body, data.subarray(0, afterBytes));
        assert.equal(fake.bytesSent(image.id), afterBytes);
      });
    }

    it('stall: n bytes, then nothing while the socket stays open, until close() ends it', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(MIB);
      const image = await fake.addImage({ data });
      fake.setFault(image.id, { kind: 'stall', afterBytes: 200 * KIB });
      const response = await fetch(`${fake.url}/v2/images/${image.id}/file`);
      const reader = response.body!.getReader();
      const received: Buffer[] = [];
      let total = 0;
      while (total < 200 * KIB) {
        const { value } = await reader.read();
        assert.ok(value !== undefined, 'the body ended early');
        received.push(Buffer.from(value));
        total += value.length;
      }
      assert.deepEqual(Buffer.concat(received), data.subarray(0, 200 * KIB));

      const next = reader.read();
      const settled = settledFlag(next);
      // A whole round trip to the same server passes while the stalled body waits.
      assert.equal((await request(fake, `/v2/images/${image.id}`)).status, 200);
      assert.equal(settled(), false, 'the stalled body moved');

      await fake.close();
      await assert.rejects(next);
      // Nothing was written after the n bytes, so nothing more can have arrived.
      assert.equal(fake.bytesSent(image.id), 200 * KIB);
    });

    it('a fault past the end of the body leaves the response whole; it applies to a range\'s own bytes', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(10 * KIB);
      const image = await fake.addImage({ data });
      fake.setFault(image.id, { kind: 'reset', afterBytes: 10 * KIB });
      assert.deepEqual((await request(fake, `/v2/images/${image.id}/file`)).body, data);
      fake.setFault(image.id, { kind: 'short', afterBytes: 100 });
      const { body } = await rawGet(fake, `/v2/images/${image.id}/file`);
      assert.equal(body.length, 100);
      const { head, body: rangeBody } = await rawGet(fake, `/v2/images/${image.id}/file`, 'Range: bytes=5000-');
      assert.match(head, /^HTTP\/1\.1 206 /);
      assert.deepEqual(body.subarray(0, 100), data.subarray(0, 100));
      assert.deepEqual(rangeBody, data.subarray(5000, 5100));
    });
  });

  describe('hold', () => {
    it('holds file GETs until release(), signalling the first one held, then answers from the state at release', async (t) => {
      const fake = await fakeGlance(t);
      const data = imageBytes(64 * KIB);
      const image = await fake.addImage({ data });
      const { waiting, release } = fake.hold(image.id);
      assert.throws(() => fake.hold(image.id), /already held/);
      const first = request(fake, `/v2/images/${image.id}/file`);
      const firstSettled = settledFlag(first);
      await waiting;
      assert.equal(fake.fileRequests(image.id), 1);
      // Metadata is not held, and its round trip passes while the download waits.
      assert.equal((await request(fake, `/v2/images/${image.id}`)).status, 200);
      assert.equal(firstSettled(), false, 'the held download was answered');

      fake.setStatus(image.id, 'deactivated');
      release();
      assert.equal((await first).status, 403);
      fake.setStatus(image.id, 'active');
      assert.deepEqual((await request(fake, `/v2/images/${image.id}/file`)).body, data);
    });

    it('close() lets go of a held request: its client gets an error and close() resolves', async (t) => {
      const fake = await fakeGlance(t);
      const image = await fake.addImage({ data: imageBytes(KIB) });
      const { waiting } = fake.hold(image.id);
      const held = fetch(`${fake.url}/v2/images/${image.id}/file`);
      await waiting;
      await fake.close();
      await assert.rejects(held);
    });
  });

  describe('rate limit', () => {
    // Within 5% both ways, in two halves. Faster than the limit is a fact of
    // the bucket whatever the machine does, so it is checked on the wall
    // clock. Slower is what a loaded machine does to any timer (its late
    // wake-ups beyond the bucket's 10 ms allowance are lost), so the bucket's
    // accounting for late timers is checked on a clock whose lateness the
    // test chooses.
    it('bytesPerSecond is shared by concurrent downloads: together they go no more than 5% faster than the limit', async (t) => {
      const rate = 2 * MIB;
      const fake = await fakeGlance(t, { bytesPerSecond: rate });
      const data = imageBytes(MIB);
      const image = await fake.addImage({ data });
      // fetch's first use in a process and each new connection take tens of milliseconds: keep them off the clock.
      await Promise.all([0, 1].map(() => request(fake, `/v2/images/${image.id}`)));
      const started = performance.now();
      // Two downloads of 1 MiB at 2 MiB/s in all: about 1 s if the limit is shared, 0.5 s if each had its own.
      const bodies = await Promise.all([0, 1].map(async () => (await request(fake, `/v2/images/${image.id}/file`)).body));
      const seconds = (performance.now() - started) / 1000;
      for (const body of bodies) assert.deepEqual(body, data);
      const measured = (2 * MIB) / seconds;
      assert.ok(measured / rate - 1 < 0.05, `measured ${Math.round(measured)} B/s for a limit of ${rate} B/s`);
    });

    it('the bucket holds its rate within 5% over about a second whatever its timers\' lateness (up to its 10 ms allowance)', async () => {
      const rate = 2 * MIB;
      for (const lateMs of [0, 1, 5, 9.9]) {
        // Time passes only by the bucket's own sleeps, each woken lateMs after it asked.
        let now = 0;
        const bucket = new TokenBucket(rate, { now: () => now, sleep: async (ms) => { now += ms + lateMs; } });
        let sent = 0;
        while (sent < 2 * MIB) {
          await bucket.take(bucket.grain);
          sent += bucket.grain;
        }
        const measured = sent / (now / 1000);
        assert.ok(Math.abs(measured / rate - 1) < 0.05, `timers ${lateMs} ms late: measured ${Math.round(measured)} B/s for a limit of ${rate} B/s`);
      }
    });

    it('refuses a limit that is not a positive number', async () => {
      await assert.rejects(startFakeGlance({ bytesPerSecond: 0 }), RangeError);
    });
  });

  describe('images through the API', () => {
    it('POST creates a queued image, PUT uploads its data (hashed), GET serves it, PATCH answers, DELETE removes it', async (t) => {
      const fake = await fakeGlance(t);
      const created = await request(fake, '/v2/images', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ id: 'up-1', name: 'uploaded', disk_format: 'qcow2', container_format: 'bare' }),
      });
      assert.equal(created.status, 201);
      assert.equal(created.headers.get('location'), `${fake.url}/v2/images/up-1`);
      assert.deepEqual(
        (({ id, name, status, size, checksum, disk_format }) => ({ id, name, status, size, checksum, disk_format }))(json(created)),
        { id: 'up-1', name: 'uploaded', status: 'queued', size: null, checksum: null, disk_format: 'qcow2' },
      );
      assert.equal((await request(fake, '/v2/images', { method: 'POST', body: '{"id":"up-1"}' })).status, 409);
      assert.equal((await request(fake, '/v2/images/up-1/file')).status, 204);

      const data = imageBytes(300 * KIB, 5);
      const put = (contentType: string): Promise<Answer> =>
        request(fake, '/v2/images/up-1/file', { method: 'PUT', headers: { 'Content-Type': contentType }, body: asBody(data) });
      assert.equal((await put('text/plain')).status, 415);
      assert.equal((await put('application/octet-stream')).status, 204);
      assert.equal(fake.uploadBytes('up-1'), data.length);
      assert.equal((await put('application/octet-stream')).status, 409, 'a second upload to an active image');

      const document = json(await request(fake, '/v2/images/up-1'));
      assert.deepEqual(
        [document.status, document.size, document.checksum, document.os_hash_algo, document.os_hash_value],
        ['active', data.length, hexDigest('md5', data), 'sha512', hexDigest('sha512', data)],
      );
      assert.deepEqual((await request(fake, '/v2/images/up-1/file')).body, data);

      const patched = await request(fake, '/v2/images/up-1', { method: 'PATCH', body: '[]' });
      assert.deepEqual([patched.status, json(patched).id], [200, 'up-1']);
      assert.equal((await request(fake, '/v2/images/up-1', { method: 'DELETE' })).status, 204);
      assert.equal((await request(fake, '/v2/images/up-1')).status, 404);
      assert.equal((await request(fake, '/v2/images/up-1', { method: 'DELETE' })).status, 404);
    });

    it('an upload cut off mid-body leaves the image queued', async (t) => {
      const fake = await fakeGlance(t);
      const { id } = json(await request(fake, '/v2/images', { method: 'POST', body: '{}' })) as { id: string };
      const socket = net.connect(Number(new URL(fake.url).port), '127.0.0.1');
      socket.on('error', () => {});
      socket.write(`PUT /v2/images/${id}/file HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000\r\n\r\n`);
      socket.write(Buffer.alloc(500));
      await waitUntil(() => fake.uploadBytes(id) === 500);
      assert.equal(json(await request(fake, `/v2/images/${id}`)).status, 'saving');
      socket.destroy();
      // Each round trip gives the server a turn to see the connection gone.
      for (let attempt = 1; json(await request(fake, `/v2/images/${id}`)).status === 'saving'; attempt++) {
        assert.ok(attempt < 100, 'the image stayed in saving');
      }
      assert.equal(json(await request(fake, `/v2/images/${id}`)).status, 'queued');
      assert.equal((await request(fake, `/v2/images/${id}/file`)).status, 204);
    });

    it('an upload above 64 MiB goes to a file under os.tmpdir(), served from there, and close() removes it', async (t) => {
      const tmp = makeTempDir('fake-glance-tmpdir-');
      const savedTmpdir = process.env.TMPDIR;
      process.env.TMPDIR = tmp;
      t.after(() => {
        if (savedTmpdir === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = savedTmpdir;
        removeDir(tmp);
      });
      const fake = await startFakeGlance();
      // Closed below, to see the spill file go; also here, so that a failure before that leaves no server running.
      t.after(() => fake.close());
      const { id } = json(await request(fake, '/v2/images', { method: 'POST', body: '{}' })) as { id: string };
      const data = imageBytes(64 * MIB + 1, 9);
      const put = await request(fake, `/v2/images/${id}/file`, {
        method: 'PUT',
        headers: { 'Content-Type': 'application/octet-stream' },
        body: asBody(data),
      });
      assert.equal(put.status, 204);
      const spilled = fs.readdirSync(tmp, { recursive: true, encoding: 'utf8' }).filter((entry) => entry.includes(path.sep));
      assert.equal(spilled.length, 1, `spill files: ${spilled.join(', ')}`);
      assert.equal(fs.statSync(path.join(tmp, spilled[0]!)).size, data.length);
      const served = await request(fake, `/v2/images/${id}/file`);
      assert.equal(served.headers.get('content-md5'), hexDigest('md5', data));
      assert.ok(served.body.equals(data), 'the served bytes differ from the uploaded ones');
      await fake.close();
      assert.deepEqual(fs.readdirSync(tmp), []);
    });
  });
});
