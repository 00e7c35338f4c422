/**
 * What the peer harnesses (Glance, Keystone, nginx) share: free ports,
 * process groups, plain requests on their own connections, PATH lookups.
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

/**
 * One request on its own connection (no agent: nothing stays open to keep
 * the process alive; wsgiref closes it after each answer anyway), with the
 * whole answer as text.
 */
export async function request(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string | Buffer | fs.ReadStream,
  timeoutMs = 30_000,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const req = http.request(url, { method, agent: false, timeout: timeoutMs, headers });
  req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
  const answered = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
  // A server that refuses the body answers and closes mid-upload: its answer says why, the send error would not.
  const sent = body instanceof fs.ReadStream ? pipeline(body, req).catch((err: Error) => err) : (req.end(body), Promise.resolve());
  const res = await answered;
  let text = '';
  for await (const chunk of res) text += String(chunk);
  const sendError = await sent;
  if (sendError instanceof Error && (res.statusCode ?? 0) < 400) throw sendError;
  return { status: res.statusCode ?? 0, headers: res.headers, body: text };
}

/** `port` (0: any) once it has been seen free on 127.0.0.1. */
export function freePort(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err) => reject(new Error(`port ${port} on 127.0.0.1 is not free: ${err.message}`)));
    server.listen(port, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Live (not zombie) processes whose process group is `pgid`. */
export function processGroup(pgid: number): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited while we looked
    }
    // Fields after the command name (which may hold spaces and parentheses): state ppid pgrp ...
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (state !== 'Z' && Number(pgrp) === pgid) pids.push(Number(entry));
  }
  return pids;
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

export function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** How long a peer's group gets to exit on SIGTERM, and then on SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;

/**
 * A peer server spawned in a process group of its own (its pid is the group
 * id) with a temporary root: stop() ends the whole group (SIGTERM, then
 * SIGKILL) and removes the root; a peer not stopped when this process exits
 * is killed and its root removed then.
 */
export class PeerGroup {
  /** Set when the server itself has exited, so that waiting for it can stop early. */
  exited: string | undefined;
  private stopped = false;

  constructor(readonly root: string, readonly pgid: number) {
    unstopped.add(this);
  }

  pids(): number[] {
    return processGroup(this.pgid);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    signalGroup(this.pgid, 'SIGTERM');
    if (!(await this.groupExited(STOP_TIMEOUT_MS))) {
      signalGroup(this.pgid, 'SIGKILL');
      await this.groupExited(STOP_TIMEOUT_MS);
    }
    unstopped.delete(this);
    fs.rmSync(this.root, { recursive: true, force: true });
  }

  private async groupExited(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.pids().length > 0) {
      if (Date.now() > deadline) return false;
      await sleep(50);
    }
    return true;
  }
}

const unstopped = new Set<PeerGroup>();
process.on('exit', () => {
  for (const peer of unstopped) {
    signalGroup(peer.pgid, 'SIGKILL');
    fs.rmSync(peer.root, { recursive: true, force: true });
  }
});
