/**
 * The download client of bench/http.ts, and the worker thread that runs a
 * share of a herd's clients. A herd is spread over as many threads as there
 * are cores: one thread receiving and hashing every body is slower than the
 * servers measured, and its wall time would then be the client's.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';

export interface Download {
  status: number;
  bytes: number;
  sha512: string;
}

/** What a worker is given: `count` clients of `url`, started when the parent posts 'go'. */
export interface ClientShare {
  url: string;
  count: number;
}

/** Per client: its download, or why it failed. */
export type ClientResult = Download | { error: string };

/**
 * GET on a connection of its own, hashing the body as it streams in. With
 * `holdMs`, the body is left unread until that long after the request was
 * sent: the socket's buffers fill and the server sees a client that stalls.
 */
export function download(url: string, holdMs = 0): Promise<Download> {
  const sent = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { 'X-Auth-Token': 'x' } }, (res) => {
      // An abort while the body is held would be an unhandled 'error': the iteration below reports it instead.
      res.on('error', () => {});
      void sleep(holdMs - (Date.now() - sent))
        .then(async () => {
          const hash = createHash('sha512');
          let bytes = 0;
          for await (const chunk of res as AsyncIterable<Buffer>) {
            hash.update(chunk);
            bytes += chunk.length;
          }
          return { status: res.statusCode ?? 0, bytes, sha512: hash.digest('hex') };
        })
        .then(resolve, reject);
    });
    req.on('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** In a worker: says 'ready', waits for 'go' (so that thread start-up is outside the herd's time), then posts every result. */
async function runShare(port: NonNullable<typeof parentPort>, share: ClientShare): Promise<void> {
  await new Promise<void>((resolve) => {
    port.once('message', () => resolve());
    port.postMessage('ready');
  });
  const results: ClientResult[] = await Promise.all(
    Array.from({ length: share.count }, () => download(share.url).catch((err: Error) => ({ error: err.message }))),
  );
  port.postMessage(results);
}

if (!isMainThread && parentPort !== null) void runShare(parentPort, workerData as ClientShare);
