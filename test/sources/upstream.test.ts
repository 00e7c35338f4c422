/**
 * The node's keep-alive client (Upstream) against an upstream that closes
 * kept-alive connections: a request the close failed is replayed once when
 * that is safe, and idle connections are closed before the upstream closes them.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { SourceUnavailable } from '../../src/errors.js';
import { readBounded, Upstream } from '../../src/sources/upstream.js';
import { until } from '../server/helpers.js';

interface Server {
  url: string;
  connections: Socket[];
  /** Requests that reached the handler, in order. */
  requests: string[];
}

/**
 * An upstream that answers the first request on each connection and, on a
 * later one, closes the connection without answering: what a request sent
 * just as the upstream's idle timeout closes the connection runs into.
 */
async function startClosingServer(t: TestContext, keepAliveTimeoutMs = 60_000): Promise<Server> {
  const connections: Socket[] = [];
  const requests: string[] = [];
  const served = new WeakMap<Socket, number>();
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const count = (served.get(req.socket) ?? 0) + 1;
    served.set(req.socket, count);
    if (count > 1) {
      req.socket.destroy();
      return;
    }
    req.resume();
    req.on('end', () => res.end('ok'));
  });
  server.keepAliveTimeout = keepAliveTimeoutMs;
  server.on('connection', (socket) => connections.push(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, connections, requests };
}

async function body(upstream: Upstream, method: string, path: string, payload?: Buffer): Promise<string> {
  const response = await upstream.request({ method, path, ...(payload === undefined ? {} : { body: payload }) });
  return (await readBounded(response.body, 1024)).toString();
}

describe('Upstream: kept-alive connections', () => {
  it('replays a GET that failed on a reused connection before any answer, once, on a new connection', async (t) => {
    const server = await startClosingServer(t);
    const upstream = new Upstream(server.url, { timeoutMs: 5_000 });
    t.after(() => upstream.close());
    assert.equal(await body(upstream, 'GET', '/one'), 'ok');
    assert.equal(await body(upstream, 'GET', '/two'), 'ok');
    assert.deepEqual(server.requests, ['GET /one', 'GET /two', 'GET /two'], 'sent on the kept connection, then again');
    assert.equal(server.connections.length, 2);
  });

  it('never replays a request that is not safe to send twice: a POST with a body fails with SourceUnavailable', async (t) => {
    const server = await startClosingServer(t);
    const upstream = new Upstream(server.url, { timeoutMs: 5_000 });
    t.after(() => upstream.close());
    assert.equal(await body(upstream, 'POST', '/one', Buffer.from('a')), 'ok');
    await assert.rejects(body(upstream, 'POST', '/two', Buffer.from('b')), SourceUnavailable);
    assert.deepEqual(server.requests, ['POST /one', 'POST /two']);
  });

  it('closes an idle connection before the upstream\'s announced keep-alive timeout runs out', async (t) => {
    // timeout=3 is announced; the client closes its idle connection after 2 s, and the server sees its FIN first.
    const server = await startClosingServer(t, 3_000);
    const upstream = new Upstream(server.url, { timeoutMs: 5_000 });
    t.after(() => upstream.close());
    assert.equal(await body(upstream, 'GET', '/one'), 'ok');
    const socket = server.connections[0]!;
    let closedByClient = false;
    socket.once('end', () => {
      closedByClient = true;
    });
    await until(() => socket.destroyed || closedByClient, 'the idle connection to close', 10_000);
    assert.equal(closedByClient, true, 'the client closed it (FIN), not the server\'s timeout');
  });
});
