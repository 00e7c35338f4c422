import fs from 'node:fs';
import path from 'node:path';
import type { ServerResponse } from 'node:http';
import type { ImageCache } from '../../cache/image-cache.js';

/**
 * GET /healthcheck, as Glance's healthcheck middleware answers it: `200 OK`,
 * or 503 with the reason when the cache directory cannot be written (a full
 * or read-only disk, a directory gone): a load balancer then sends the
 * traffic elsewhere.
 */
export function healthRoute(cache: ImageCache) {
  const dir = cache.options.imageCacheDir;
  return function health(res: ServerResponse): void {
    let problem: string | undefined;
    try {
      for (const sub of ['', 'incomplete']) fs.accessSync(path.join(dir, sub), fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      problem = `cache directory unusable: ${(err as Error).message}`;
    }
    const body = problem ?? 'OK';
    res.writeHead(problem ? 503 : 200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
}
