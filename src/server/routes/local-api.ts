import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ImageSource } from '../../sources/source.js';
import { sendAnswer, sendError, sendJson, tokenOf } from '../respond.js';

/**
 * The little of the Image API a node without an upstream answers itself
 * from its local image directory: an image's metadata, which is what
 * `glance image-download` and openstacksdk ask before they download (version
 * discovery is versions.ts, for every node). The rest needs a Glance: 404 saying so.
 */
export function localApiRoute(source: ImageSource) {
  return async function localApi(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
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
