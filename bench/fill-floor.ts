/**
 * The floor of a verified fill in Node on this machine, for bench:http (b):
 * a proxy in front of a Glance that does only what a verified fill must and
 * nothing else (no claims, no records, no followers, no hits, no metrics).
 * For GET /v2/images/{id}/file: the image's size and sha512 from its
 * metadata, then its body from the upstream, each chunk hashed inline,
 * written to <dir>/<id>.part and sent; the last chunk is held back until the
 * length and digest are checked, the file fsynced and renamed to <dir>/<id>,
 * as a response of the node never ends on unverified bytes. Every request is
 * a fill: the bench removes the file between fills. With --warm-malloc, it
 * first warms up malloc as the node does at its start (src/server/warm-up.ts),
 * so that the two can be compared with and without what that changes.
 *
 *   node dist/bench/fill-floor.js UPSTREAM_URL DIR [--warm-malloc]    # prints `serving on URL`
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { once } from 'node:events';
import { warmUpMalloc } from '../src/server/warm-up.js';

const [upstreamUrl, dir, ...flags] = process.argv.slice(2);
if (upstreamUrl === undefined || dir === undefined || flags.some((flag) => flag !== '--warm-malloc')) {
  process.stderr.write('usage: fill-floor UPSTREAM_URL DIR [--warm-malloc]\n');
  process.exit(2);
}
if (flags.includes('--warm-malloc')) await warmUpMalloc();
const agent = new http.Agent({ keepAlive: true });

function get(urlPath: string, token: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    http.get(`${upstreamUrl}${urlPath}`, { agent, headers: { 'X-Auth-Token': token } }, resolve).on('error', reject);
  });
}

async function metadata(id: string, token: string): Promise<{ size: number; sha512: string }> {
  const res = await get(`/v2/images/${id}`, token);
  let text = '';
  for await (const chunk of res) text += chunk;
  if (res.statusCode !== 200) throw new Error(`upstream answered ${res.statusCode} for the image's metadata`);
  const doc = JSON.parse(text) as { size: number; os_hash_algo: string; os_hash_value: string };
  if (doc.os_hash_algo !== 'sha512') throw new Error(`the image's hash is ${doc.os_hash_algo}, not sha512`);
  return { size: doc.size, sha512: doc.os_hash_value };
}

async function fill(id: string, token: string, res: http.ServerResponse): Promise<void> {
  const { size, sha512 } = await metadata(id, token);
  const body = await get(`/v2/images/${id}/file`, token);
  if (body.statusCode !== 200) throw new Error(`upstream answered ${body.statusCode} for the image's file`);
  const part = path.join(dir!, `${id}.part`);
  const fd = fs.openSync(part, 'w');
  try {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': size });
    const hash = createHash('sha512');
    let received = 0;
    let held: Buffer | undefined;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      hash.update(chunk);
      for (let offset = 0; offset < chunk.length; ) offset += fs.writeSync(fd, chunk, offset, chunk.length - offset, received + offset);
      received += chunk.length;
      if (received < size) {
        if (!res.write(chunk)) await Promise.race([once(res, 'drain'), once(res, 'close')]);
      } else {
        held = chunk;
      }
    }
    if (received !== size) throw new Error(`upstream sent ${received} of ${size} bytes`);
    if (hash.digest('hex') !== sha512) throw new Error('checksum mismatch');
    await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    fs.renameSync(part, path.join(dir!, id));
    res.end(held);
  } finally {
    fs.closeSync(fd);
  }
}

const server = http.createServer((req, res) => {
  const id = /^\/v2\/images\/([0-9a-f-]{36})\/file$/.exec(req.url ?? '')?.[1];
  if (req.method !== 'GET' || id === undefined) {
    res.writeHead(404).end();
    return;
  }
  fill(id, String(req.headers['x-auth-token'] ?? ''), res).catch((err: Error) => {
    process.stderr.write(`fill-floor: ${id}: ${err.message}\n`);
    if (res.headersSent) res.destroy(err);
    else res.writeHead(502).end(err.message);
  });
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(`fill-floor: serving on http://127.0.0.1:${port}\n`);
});
process.once('SIGTERM', () => server.close(() => process.exit(0)));
