import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ImageSource } from '../../sources/source.js';
import { sendAnswer, sendError, sendJson, tokenOf } from '../respond.js';

/**
 * The little of the Image API a node without an upstream answers itself
 * from its local image directory: version discovery and an image's
 * metadata, which is what `glance image-download` and openstacksdk ask before
 * they download. The rest needs a Glance: 404 saying so.
 */
export function localApiRoute(source: ImageSource) {
  return async function localApi(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (req.method === 'GET' && (path === '/versions' || path === '/' || path === '/v2' || path === '/v2/')) {
      sendJson(res, 200, VERSIONS);
      return;
    }
    const image = /^\/v2\/images\/([^/]+)$/.exec(path);
    if (req.method === 'GET' && image !== null) {
      const metadata = await source.metadata(decodeURIComponent(image[1]!), tokenOf(req));
      if (metadata.ok) sendJson(res, 200, metadata.image.document);
      else sendAnswer(res, metadata.answer);
      return;
    }
    sendError(res, 404, `${req.method} ${path} is not served by this node: it serves images from a local directory; set upstream_url to put it in front of Glance`);
  };
}

/** Glance's version document, v2 current: enough for clients' discovery. */
const VERSIONS = {
  versions: [{ id: 'v2.9', status: 'CURRENT', links: [{ rel: 'self', href: '/v2/' }] }],
};
