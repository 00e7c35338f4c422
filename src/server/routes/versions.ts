import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendJson } from '../respond.js';

/** The newest Image API version the node answers for. The cache API arrived in v2.14; python-glanceclient looks for it here. */
const NEWEST_MINOR = 18;

/**
 * GET /versions (and / and /v2), answered by the node itself rather than the
 * upstream: Glance lists v2.14+ only when its cache middleware is on, and
 * the node is where the cache is. Links point at the node, as the client addressed it.
 */
export function versionsRoute() {
  return function versions(req: IncomingMessage, res: ServerResponse): void {
    const host = req.headers.host ?? 'localhost';
    const versions = [];
    for (let minor = NEWEST_MINOR; minor >= 0; minor--) {
      versions.push({
        id: `v2.${minor}`,
        status: minor === NEWEST_MINOR ? 'CURRENT' : 'SUPPORTED',
        links: [{ rel: 'self', href: `http://${host}/v2/` }],
      });
    }
    sendJson(res, 200, { versions });
  };
}
