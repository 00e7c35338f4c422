/**
 * A TCP proxy that stands where a node says it is (its
 * worker_self_reference_url) and passes its connections on to the node, so
 * that a test can make that node misbehave as a peer without changing the
 * node: cut a connection with a reset, stop sending, or flip a byte of what
 * it sends, after so many bytes of its answer. The other nodes find the
 * proxy's URL in the database and meet the fault as they would a real one.
 */
import net from 'node:net';

export type ProxyFault =
  /** Sends `afterBytes` bytes of each answer stream, then resets the connection (TCP RST). */
  | { kind: 'reset'; afterBytes: number }
  /** Sends `afterBytes` bytes, then nothing more; the connection stays open. */
  | { kind: 'stall'; afterBytes: number }
  /** Inverts the byte at offset `afterBytes` of each answer stream and passes on the rest as it is. */
  | { kind: 'flip'; afterBytes: number };

export interface FaultProxy {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Bytes sent on to the clients so far, over all connections. */
  readonly bytesForwarded: number;
  /** Applies to connections accepted from now on; undefined: pass everything on as it is. */
  setFault(fault: ProxyFault | undefined): void;
  /** Where connections go: the node's own port, known once it serves. */
  setTarget(port: number): void;
  /** A network cut: every connection reset now, and new ones too, until restore(). */
  cut(): void;
  restore(): void;
  /** Paces what the target sends, over all connections together; undefined: as fast as it comes. */
  setRate(bytesPerSecond: number | undefined): void;
  /** Resolves when a connection's answer stream has met the fault (the reset sent, the stall begun, the byte flipped). */
  faulted(): Promise<void>;
  close(): Promise<void>;
}

/** A proxy on a free port of 127.0.0.1; connections before setTarget() are refused by a reset. */
export async function startFaultProxy(): Promise<FaultProxy> {
  let target: number | undefined;
  let fault: ProxyFault | undefined;
  let connections = 0;
  let isCut = false;
  let rate: number | undefined;
  /** When the paced stream may send its next bytes. */
  let nextSendAt = 0;
  let bytesForwarded = 0;
  let faultWaiters: (() => void)[] = [];
  const sockets = new Set<net.Socket>();
  const faultMet = (): void => {
    const waiters = faultWaiters;
    faultWaiters = [];
    for (const resolve of waiters) resolve();
  };

  const server = net.createServer((client) => {
    connections++;
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (target === undefined || isCut) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(target, '127.0.0.1');
    sockets.add(upstream);
    upstream.once('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    upstream.on('error', () => client.destroy());
    client.once('close', () => upstream.destroy());
    client.pipe(upstream);

    // This connection's own copy: a flip is spent once done.
    let myFault = fault === undefined ? undefined : { ...fault };
    let sent = 0;
    let stalled = false;
    upstream.on('data', (chunk: Buffer) => {
      if (stalled) return;
      if (myFault === undefined || sent + chunk.length <= myFault.afterBytes) {
        sent += chunk.length;
        bytesForwarded += chunk.length;
        const flowing = client.write(chunk);
        if (rate !== undefined) {
          // Hold the next read until this chunk's share of the rate has passed.
          const now = Date.now();
          nextSendAt = Math.max(nextSendAt, now) + (chunk.length / rate) * 1000;
          upstream.pause();
          setTimeout(() => {
            if (!stalled && !client.writableNeedDrain) upstream.resume();
          }, nextSendAt - now);
        } else if (!flowing) upstream.pause();
        return;
      }
      const head = chunk.subarray(0, myFault.afterBytes - sent);
      if (myFault.kind === 'flip') {
        const copy = Buffer.from(chunk);
        copy[head.length] = copy[head.length]! ^ 0xff;
        sent += copy.length;
        bytesForwarded += copy.length;
        // Once only per connection: the rest passes as it is.
        myFault = undefined;
        if (!client.write(copy)) upstream.pause();
        faultMet();
        return;
      }
      sent += head.length;
      bytesForwarded += head.length;
      if (myFault.kind === 'reset') {
        upstream.destroy();
        client.write(head, () => {
          client.resetAndDestroy();
          faultMet();
        });
        return;
      }
      // stall: the connection stays, nothing more comes.
      stalled = true;
      upstream.pause();
      client.write(head);
      faultMet();
    });
    client.on('drain', () => {
      if (!stalled && Date.now() >= nextSendAt) upstream.resume();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get connections() {
      return connections;
    },
    get bytesForwarded() {
      return bytesForwarded;
    },
    setFault(next) {
      fault = next;
    },
    cut() {
      isCut = true;
      for (const socket of sockets) socket.resetAndDestroy();
    },
    restore() {
      isCut = false;
    },
    setRate(bytesPerSecond) {
      rate = bytesPerSecond;
    },
    setTarget(port) {
      target = port;
    },
    faulted() {
      return new Promise((resolve) => faultWaiters.push(resolve));
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
