/**
 * The download client of bench/http.ts, and the worker thread that runs a
 * share of a herd's clients. A herd is spread over as many threads as there
 * are cores, and each body is compared with the image byte for byte as it
 * streams in (a memcmp; hashing every body with sha512 made the clients,
 * sharing the cores with the servers, the slowest part of a herd).
 */
import fs from 'node:fs';
import http from 'node:http';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';

export interface Download {
  status: number;
  bytes: number;
  /** The body is the image, byte for byte. */
  identical: boolean;
}

/** What a worker is given: `count` clients of `url`, started when the parent posts 'go', checked against the file `image`. */
export interface ClientShare {
  url: string;
  count: number;
  image: string;
}

/** Per client: its download, or why it failed. */
export type ClientResult = Download | { error: string };

/**
 * GET on a connection of its own, comparing the body with `image` as it
 * streams in. With `holdMs`, the body is left unread until that long after
 * the request was sent: the socket's buffers fill and the server sees a
 * client that stalls.
 */
export function download(url: string, image: Buffer, holdMs = 0): Promise<Download> {
  const sent = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { 'X-Auth-Token': 'x' } }, (res) => {
      // An abort while the body is held would be an unhandled 'error': the iteration below reports it instead.
      res.on('error', () => {});
      void sleep(holdMs - (Date.now() - sent))
        .then(async () => {
          let bytes = 0;
          let identical = true;
          for await (const chunk of res as AsyncIterable<Buffer>) {
            identical &&= bytes + chunk.length <= image.length && image.compare(chunk, 0, chunk.length, bytes, bytes + chunk.length) === 0;
            bytes += chunk.length;
          }
          return { status: res.statusCode ?? 0, bytes, identical: identical && bytes === image.length };
        })
        .then(resolve, reject);
    });
    req.on('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** In a worker: reads the image, says 'ready', waits for 'go' (so that start-up is outside the herd's time), then posts every result. */
async function runShare(port: NonNullable<typeof parentPort>, share: ClientShare): Promise<void> {
  const image = fs.readFileSync(share.image);
  await new Promise<void>((resolve) => {
    port.once('message', () => resolve());
    port.postMessage('ready');
  });
  const results: ClientResult[] = await Promise.all(
    Array.from({ length: share.count }, () => download(share.url, image).catch((err: Error) => ({ error: err.message }))),
  );
  port.postMessage(results);
}

if (!isMainThread && parentPort !== null) void runShare(parentPort, workerData as ClientShare);
