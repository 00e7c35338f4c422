import fs from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { untilWritten, type FillProgress } from '../cache/fill-progress.js';
import { CacheFileShort, CacheWriteFailed, WrongRangeLength } from '../errors.js';

/**
 * Bytes of one read and one socket write: larger chunks cost less CPU per
 * byte (fewer system calls and trips through the stream machinery; bench:http
 * measures it), but a response holds one or two of them while the socket
 * drains. So a few responses get 2 MiB chunks, many get smaller ones, down
 * to 256 KiB: together they hold about BUFFER_BUDGET, however many there are.
 */
const MIN_CHUNK = 256 * 1024;
const MAX_CHUNK = 2 * 1024 * 1024;
const BUFFER_BUDGET = 8 * 1024 * 1024;
/**
 * Bytes all responses together send before each waits one turn of the event
 * loop (setImmediate), whether or not its socket made it wait meanwhile: a
 * response woken by a drain, or by the fill it follows, runs on in promise
 * callbacks, which the loop runs to the end before it looks at anything
 * else. It is shared like the buffers: one response alone sends 8 MiB per
 * turn, many a chunk each, so that a turn stays short however many there
 * are and a new request (a health check, a listing) is not kept waiting
 * behind them. The extra turns cost some throughput under hundreds of
 * responses; bench:load's probe shows what they buy.
 */
const YIELD_BUDGET = 8 * 1024 * 1024;
/** Idle buffers kept for the next responses, in bytes; the rest are left to the GC. */
const MAX_IDLE_BYTES = 4 * 1024 * 1024;

/** Responses sending now. */
let sending = 0;

/**
 * Buffers are reused, not allocated per chunk: a fresh buffer of this size
 * is a fresh mapping whose pages the kernel faults in and zeroes on first
 * touch, and the garbage collector then runs for them. Profiles of a hit
 * showed that costing more CPU than the copying itself. A buffer goes back
 * to the pool only when the socket has taken its bytes (the write's callback).
 */
const idle = new Map<number, Buffer[]>();
let idleBytes = 0;

/** A buffer of the size the load calls for: an idle one of that size, else any idle one no larger, else a new one. */
function takeBuffer(): Buffer {
  const size = Math.max(MIN_CHUNK, Math.min(MAX_CHUNK, 2 ** Math.floor(Math.log2(BUFFER_BUDGET / Math.max(1, sending)))));
  for (let candidate = size; candidate >= MIN_CHUNK; candidate /= 2) {
    const buffer = idle.get(candidate)?.pop();
    if (buffer !== undefined) {
      idleBytes -= candidate;
      return buffer;
    }
  }
  return Buffer.allocUnsafeSlow(size);
}

function giveBack(buffer: Buffer): void {
  if (idleBytes + buffer.length > MAX_IDLE_BYTES) return;
  idleBytes += buffer.length;
  let list = idle.get(buffer.length);
  if (list === undefined) idle.set(buffer.length, (list = []));
  list.push(buffer);
}

/** Part of a file to send: [start, end] inclusive. With `progress`, a file still being filled. */
export interface FileSpan {
  fd: number;
  start: number;
  end: number;
  progress?: FillProgress;
  /**
   * Where the bytes [position, end] come from when the fill stops because the
   * cache's disk failed (CacheWriteFailed): what is on disk was right, so the
   * response goes on from the image's source instead of being cut.
   */
  rest?: (position: number) => Promise<Readable>;
}

/**
 * Sends [start, end] of the file into a response whose headers are set, and
 * ends it. From a fill, it reads what is on disk, waits for more when it has
 * caught up, and holds back the last byte until the fill has committed: a
 * response never ends on bytes whose length and checksum were not verified
 * (and a client that has the whole image finds it cached). If the fill
 * fails, or the file cannot be read, the connection is destroyed (the client
 * sees an incomplete response, never a short one that looks whole).
 * Resolves with the body bytes handed to the socket; never rejects.
 */
export async function sendFile(res: ServerResponse, span: FileSpan): Promise<number> {
  let position = span.start;
  let sinceYield = 0;
  sending++;
  try {
    while (position <= span.end && !res.destroyed) {
      const last = await readableUpTo(span, position);
      const buffer = takeBuffer();
      const length = Math.min(buffer.length, last - position + 1);
      const n = fs.readSync(span.fd, buffer, 0, length, position);
      if (n === 0) {
        giveBack(buffer);
        const progress = span.progress;
        if (progress === undefined || progress.outcome !== undefined) throw new CacheFileShort(position, span.end + 1);
        // Not on disk yet though counted (a writer in another process): wait for its next change.
        await untilWritten(progress, progress.written);
        continue;
      }
      position += n;
      sinceYield += n;
      const more = res.write(n === buffer.length ? buffer : buffer.subarray(0, n), () => giveBack(buffer));
      if (!more) await drainedOrClosed(res);
      if (sinceYield >= Math.max(MIN_CHUNK, YIELD_BUDGET / sending)) {
        sinceYield = 0;
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    if (!res.destroyed) res.end();
  } catch (err) {
    if (err instanceof CacheWriteFailed && span.rest !== undefined && !res.destroyed) position += await sendRest(res, span.rest, position, span.end);
    else res.destroy(err as Error);
  } finally {
    sending--;
  }
  return position - span.start;
}

/**
 * Sends [position, end] from `rest` and ends the response; exactly that many
 * bytes, or the connection is destroyed (a short or failed rest must not
 * look whole). Resolves with the bytes handed to the socket.
 */
async function sendRest(res: ServerResponse, rest: (position: number) => Promise<Readable>, position: number, end: number): Promise<number> {
  const wanted = end - position + 1;
  let sent = 0;
  try {
    const body = await rest(position);
    for await (const chunk of body as AsyncIterable<Buffer>) {
      if (res.destroyed) {
        body.destroy();
        return sent;
      }
      if (sent + chunk.length > wanted) throw new WrongRangeLength(sent + chunk.length, wanted);
      sent += chunk.length;
      if (!res.write(chunk)) await drainedOrClosed(res);
    }
    if (sent !== wanted) throw new WrongRangeLength(sent, wanted);
    if (!res.destroyed) res.end();
  } catch (err) {
    res.destroy(err as Error);
  }
  return sent;
}

/**
 * The last byte that may be sent now, waiting for the fill if it has none
 * past `position`; throws the fill's error. The span's last byte waits for
 * the commit (see sendFile).
 */
async function readableUpTo(span: FileSpan, position: number): Promise<number> {
  const progress = span.progress;
  if (progress === undefined) return span.end;
  await untilWritten(progress, position < span.end ? position : Infinity);
  return progress.outcome === 'committed' ? span.end : Math.min(span.end - 1, progress.written - 1);
}

function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
