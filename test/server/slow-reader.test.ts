/**
 * A client that opens the download of a large image and then reads nothing
 * (a stuck VM, a full disk on the client's side): the node, a real
 * `image-cache serve` process, waits on the socket (backpressure) rather than
 * buffering the image for it, so its memory stays bounded while it idles,
 * another client downloads the same image correctly meanwhile, and the
 * reader, once it reads again, gets the whole image. On a miss (the reader
 * started the fill) and on a hit.
 *
 * How long the reader idles once the socket buffers between it and the node
 * are full is IMAGE_CACHE_SLOW_READER_IDLE_SECONDS (default a few seconds,
 * for npm test; a stress run sets minutes), and the image's size is
 * IMAGE_CACHE_SLOW_READER_MIB.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeTempDir, removeDir } from '../helpers.js';
import { imageBytes, startFakeGlance } from '../support/fake-glance.js';
import { metric, sha512, startServe, until } from './helpers.js';

const MIB = 1024 * 1024;
const IDLE_MS = positive('IMAGE_CACHE_SLOW_READER_IDLE_SECONDS', 3) * 1000;
const IMAGE_BYTES = positive('IMAGE_CACHE_SLOW_READER_MIB', 128) * MIB;
/**
 * What the node may grow by while the reader idles: half the image. A node
 * that buffered the image for the reader would hold all of it; one that
 * waits on the socket holds a few chunks, whatever the image's size. (The
 * baseline is taken after a warm-up download of another image of that size,
 * so that it includes the node's working set under load: buffers, a grown heap.)
 */
const MAX_GROWTH_BYTES = IMAGE_BYTES / 2;
/** The bytes in flight to the reader count as settled once this many samples in a row, POLL_MS apart, agree. */
const STEADY_SAMPLES = 10;
const POLL_MS = 100;

function positive(variable: string, fallback: number): number {
  const value = Number(process.env[variable] || fallback);
  if (!(Number.isSafeInteger(value) && value > 0)) throw new Error(`${variable} must be a whole number > 0, not ${JSON.stringify(process.env[variable])}`);
  return value;
}

/** A process's resident set (VmRSS), in bytes. */
function rss(pid: number): number {
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (kib === null) throw new Error(`no VmRSS for process ${pid}`);
  return Number(kib[1]) * 1024;
}

/**
 * The send and receive queues of the IPv4 TCP socket from `local` to `remote`
 * (ports on 127.0.0.1), from /proc/net/tcp: bytes the kernel holds between
 * two processes, which neither's counters show.
 */
function tcpQueues(local: number, remote: number): { tx: number; rx: number } {
  const address = (port: number): string => `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] !== address(local) || fields[2] !== address(remote)) continue;
    const [tx, rx] = fields[4]!.split(':').map((hex) => Number.parseInt(hex, 16));
    return { tx: tx!, rx: rx! };
  }
  throw new Error(`no TCP socket from 127.0.0.1:${local} to 127.0.0.1:${remote}`);
}

interface IdleReader {
  response: http.IncomingMessage;
  /** Bytes the node has handed to the kernel for this reader: what the reader's socket read, plus both sockets' queues. */
  inFlight(): number;
  /** Reads the rest of the body and hashes the whole of it. */
  finish(): Promise<string>;
}

/** Opens a download and reads nothing of its body (the response stream stays paused: Node stops reading the socket). */
async function openIdleReader(url: string, nodePort: number): Promise<IdleReader> {
  const response = await new Promise<http.IncomingMessage>((resolve, reject) => {
    http.get(url, { agent: false }, resolve).once('error', reject);
  });
  const socket = response.socket;
  const localPort = socket.localPort!;
  return {
    response,
    inFlight: () => socket.bytesRead + tcpQueues(localPort, nodePort).rx + tcpQueues(nodePort, localPort).tx,
    async finish() {
      const hash = createHash('sha512');
      for await (const chunk of response) hash.update(chunk as Buffer);
      if (!response.complete) throw new Error('the idle reader\'s response ended before its last byte');
      return hash.digest('hex');
    },
  };
}

/** Resolves once sample() has given the same value STEADY_SAMPLES times in a row; with that value. */
async function steady(sample: () => number, what: string): Promise<number> {
  let last = -1;
  let same = 0;
  await until(async () => {
    const value = sample();
    same = value === last ? same + 1 : 1;
    last = value;
    if (same >= STEADY_SAMPLES) return true;
    await sleep(POLL_MS);
    return false;
  }, what, 60_000);
  return last;
}

describe('a client that reads nothing', () => {
  it(`keeps the node's memory bounded for ${IDLE_MS / 1000} s while another client downloads the same ${IMAGE_BYTES / MIB} MiB image, on a miss and on a hit`, async (t: TestContext) => {
    const dir = makeTempDir('image-cache-slow-reader-');
    t.after(() => removeDir(dir));
    const fake = await startFakeGlance();
    t.after(() => fake.close());
    const data = imageBytes(IMAGE_BYTES);
    const digest = sha512(data);
    const image = await fake.addImage({ data });
    const warmUp = await fake.addImage({ data: imageBytes(IMAGE_BYTES, 2) });
    const { url, child } = await startServe(t, ['--bind-port', '0', '--upstream-url', fake.url, '--image-cache-dir', path.join(dir, 'cache')], dir);
    const nodePort = Number(new URL(url).port);
    const file = `${url}/v2/images/${image.id}/file`;
    assert.equal((await streamHash(`${url}/v2/images/${warmUp.id}/file`)).status, 200);
    const baseline = rss(child.pid!);

    for (const phase of ['miss', 'hit'] as const) {
      const hitsBefore = await metric(url, 'image_cache_hit_responses_total');
      const reader = await openIdleReader(file, nodePort);
      assert.equal(reader.response.statusCode, 200, phase);
      let peak = rss(child.pid!);
      const sampleRss = (): number => {
        peak = Math.max(peak, rss(child.pid!));
        return peak;
      };
      // Another client, at full speed, while the reader reads nothing: it follows the reader's fill (miss) or is a hit.
      const otherResult = await streamHash(file);
      assert.equal(otherResult.status, 200, phase);
      assert.equal(otherResult.digest, digest, `${phase}: the other client got the image`);
      // The buffers between the node and the reader are full once the bytes handed to them stop growing.
      const buffered = await steady(() => {
        sampleRss();
        return reader.inFlight();
      }, `${phase}: the reader's socket buffers to fill`);
      assert.ok(buffered < MAX_GROWTH_BYTES, `${phase}: ${buffered} bytes in flight to a reader that reads nothing`);
      // The idling is what is tested, not a wait for something: the node is watched all along.
      for (const idleUntil = Date.now() + IDLE_MS; Date.now() < idleUntil; await sleep(POLL_MS)) sampleRss();
      assert.equal(reader.inFlight(), buffered, `${phase}: nothing more was sent to the idle reader`);
      t.diagnostic(`${phase}: ${buffered} bytes in flight to the idle reader; the node's RSS ${baseline} bytes before, ${peak} at most since`);
      assert.ok(peak - baseline < MAX_GROWTH_BYTES, `${phase}: the node grew from ${baseline} to ${peak} bytes of RSS`);
      assert.equal(await reader.finish(), digest, `${phase}: the reader, reading again, got the whole image`);
      // (On the miss, the other client may have followed the fill or come after it: either way, one fetch.)
      if (phase === 'hit') assert.equal(await metric(url, 'image_cache_hit_responses_total'), hitsBefore + 2, 'both were hits');
    }
    assert.equal(fake.fileRequests(image.id), 1, 'one fetch from the upstream');
  });
});

/** A whole download, hashed as it arrives (not held in memory). */
async function streamHash(url: string): Promise<{ status: number; digest: string }> {
  const response = await new Promise<http.IncomingMessage>((resolve, reject) => {
    http.get(url, { agent: false }, resolve).once('error', reject);
  });
  const hash = createHash('sha512');
  for await (const chunk of response) hash.update(chunk as Buffer);
  if (!response.complete) throw new Error(`the response to ${url} ended before its last byte`);
  return { status: response.statusCode ?? 0, digest: hash.digest('hex') };
}
