/**
 * Debian's nginx on loopback for tests and benchmarks: a static file server
 * (the "plain file from disk with sendfile" line), or the front of a cache
 * node that hands it hits with X-Accel-Redirect. One worker, its own temp
 * paths and logs in a temporary directory that stop() removes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';

export interface NginxPeer {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

export function nginxAvailable(): boolean {
  return ['/usr/sbin/nginx', '/usr/bin/nginx'].some((file) => fs.existsSync(file));
}

/** nginx serving the files of `dir` at /. */
export function startStaticNginx(dir: string): Promise<NginxPeer> {
  return startNginx(`root ${dir};`);
}

/**
 * nginx in front of a cache node: every request is proxied to it, streaming
 * both ways (no request or response buffering, uploads of any size), and the
 * node's X-Accel-Redirect to `location` is served from the cache directory
 * with sendfile, Range included, with the node's checksum as Content-MD5.
 */
export function startFrontNginx(nodeUrl: string, cacheDir: string, location = '/_image_cache/'): Promise<NginxPeer> {
  return startNginx(`client_max_body_size 0;
    location / {
      proxy_pass ${nodeUrl};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
    location ${location} {
      internal;
      alias ${cacheDir}/;
      types { }
      default_type application/octet-stream;
      add_header Content-MD5 $arg_md5;
    }`);
}

/**
 * nginx as a caching proxy in front of `upstreamUrl` (proxy_cache into
 * `cacheDir`, every 200 kept): the first request for a URL is a miss that
 * nginx streams to its client while it writes the cache file. Each answer
 * says which it was in X-Cache-Status (MISS, HIT).
 */
export function startCachingNginx(upstreamUrl: string, cacheDir: string): Promise<NginxPeer> {
  return startNginx(`location / {
      proxy_pass ${upstreamUrl};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache images;
      proxy_cache_valid 200 1d;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      proxy_read_timeout 1h;
      add_header X-Cache-Status $upstream_cache_status;
    }`, `proxy_cache_path ${cacheDir} levels=1:2 keys_zone=images:1m inactive=1d use_temp_path=off;`);
}

async function startNginx(serverBody: string, httpBody = ''): Promise<NginxPeer> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'nginx-peer-'));
  const port = await freePort();
  const conf = path.join(home, 'nginx.conf');
  const temp = (kind: string): string => `${kind}_temp_path ${path.join(home, `${kind}_temp`)};`;
  // master_process off: one process, running as whoever started it, so that it can read
  // files in the caller's private temporary directories (a root master's workers could not).
  fs.writeFileSync(conf, `daemon off;
master_process off;
pid ${path.join(home, 'nginx.pid')};
error_log ${path.join(home, 'error.log')};
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  default_type application/octet-stream;
  ${httpBody}
  ${['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(temp).join('\n  ')}
  server {
    listen 127.0.0.1:${port};
    ${serverBody}
  }
}
`);
  const child: ChildProcess = spawn('nginx', ['-p', home, '-c', conf, '-e', path.join(home, 'error.log')], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
    fs.rmSync(home, { recursive: true, force: true });
  };
  try {
    await untilListening(port, child, home);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, pid: child.pid!, stop };
}

async function untilListening(port: number, child: ChildProcess, home: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited: ${readLog(home)}`);
    if (await connects(port)) return;
    if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port}: ${readLog(home)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function readLog(home: string): string {
  const file = path.join(home, 'error.log');
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').slice(-2000) : '(no log)';
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
