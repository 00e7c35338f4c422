import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Fills, FollowSpan } from '../../cache/fills.js';
import type { ImageCache } from '../../cache/image-cache.js';
import type { OpenImageFile } from '../../content/read.js';
import { PEER_HEADER, PEER_REFUSAL_HEADER } from '../../cluster/peer-client.js';
import { ImageNotCached, SourceUnavailable } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ImageMetadata, ImageSource } from '../../sources/source.js';
import { parseRange, type ResolvedRange } from '../http-range.js';
import type { NodeMetrics } from '../metrics.js';
import type { ImageRemoval } from '../image-removal.js';
import { relay, sendAnswer, sendError, tokenOf, type RequestNotes } from '../respond.js';
import { sendFile } from '../send-file.js';

export interface ImageDataDeps {
  cache: ImageCache;
  fills: Fills;
  source: ImageSource;
  metrics: NodeMetrics;
  /** Whether the source proves the image gone, beyond what one caller may see. */
  provenGone(imageId: string): Promise<boolean>;
  removal: ImageRemoval;
  /** x_accel_redirect: hand hits to the nginx in front (see ServerOptions). */
  xAccelRedirect: string | undefined;
  /** Streams this process serves to other nodes at once (its share of peer_max_streams); past it they are turned away. */
  peerMaxStreams: number;
  log: Logger;
}

/** Turns through hit → fill when a fill commits (or the image is evicted) under a request. */
const MAX_TURNS = 3;

/**
 * GET /v2/images/{id}/file, as Glance's cache middleware serves it, with one
 * fetch per image (the caller's token already validated by the node under
 * keystone: app.ts): the source is asked for the metadata with the caller's
 * token on every request (it decides who may see the image, and whether it is
 * active); then the cache answers (hit), or the fill of the image does (miss:
 * the first request starts it, every other follows it), or the source itself
 * (bypass: whatever cannot or should not be cached).
 */
export function imageDataRoute(deps: ImageDataDeps) {
  const { cache, fills, source, metrics } = deps;
  /** Peer streams of this process now, refusals excluded. */
  let peerStreams = 0;

  return async function getImageData(req: IncomingMessage, res: ServerResponse, notes: RequestNotes, imageId: string): Promise<void> {
    notes.imageId = imageId;
    const peer = req.headers[PEER_HEADER];
    if (peer !== undefined) return servePeer(req, res, notes, imageId, Array.isArray(peer) ? peer[0]! : peer);
    const token = tokenOf(req);
    const metadata = await source.metadata(imageId, token);
    if (!metadata.ok) {
      if (metadata.answer.status === 404) await dropIfProvenGone(deps, imageId);
      sendAnswer(res, metadata.answer);
      return;
    }
    const image = metadata.image;
    if (image.status !== 'active' || !cache.isValidImageId(imageId)) {
      notes.bypass = image.status !== 'active' ? `image is ${image.status}` : 'the ID cannot name a cache file';
      await bypass(req, res, notes, image, undefined);
      return;
    }
    const size = image.size;
    const range = size === null ? undefined : parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      sendError(res, 416, `Requested range not satisfiable: the image has ${size} bytes`, { 'content-range': `bytes */${size}` });
      return;
    }
    for (let turn = 0; turn < MAX_TURNS; turn++) {
      const hit = await openHit(image, range);
      if (hit !== undefined) {
        await serveHit(res, notes, image, hit, range !== undefined);
        return;
      }
      const missed = await serveMiss(res, notes, image, token, range);
      if (missed === 'served') return;
      if (missed === 'bypass') break;
    }
    await bypass(req, res, notes, image, range);
  };

  /**
   * Another node's request (x-image-cache-peer): answered from the cache or
   * a fill in flight here, and from nothing else. Never a fetch of its own,
   * so requests cannot loop or chain misses from node to node: a node that
   * has nothing answers at once (404, refusal `not-cached`), one serving as
   * many peers as it may too (503, `busy`), and the asker goes on to the
   * next. The caller's token is checked with the upstream as for any
   * request (the metadata); its refusal is passed on.
   */
  async function servePeer(req: IncomingMessage, res: ServerResponse, notes: RequestNotes, imageId: string, peer: string): Promise<void> {
    notes.peer = peer;
    if (peerStreams >= deps.peerMaxStreams) {
      refusePeer(res, 503, 'busy', `This node serves ${deps.peerMaxStreams} streams to other nodes already.`);
      return;
    }
    peerStreams++;
    let streamEnded: (() => void) | undefined;
    try {
      const metadata = await source.metadata(imageId, tokenOf(req));
      if (!metadata.ok) {
        sendAnswer(res, metadata.answer);
        return;
      }
      const image = metadata.image;
      if (image.status !== 'active' || image.size === null || !cache.isValidImageId(imageId)) {
        refusePeer(res, 404, 'not-cached', `This node does not cache image ${imageId}.`);
        return;
      }
      const range = parseRange(req.headers.range, image.size);
      if (range === 'unsatisfiable') {
        sendError(res, 416, `Requested range not satisfiable: the image has ${image.size} bytes`, { 'content-range': `bytes */${image.size}` });
        return;
      }
      const hit = await openHit(image, range);
      if (hit !== undefined) {
        streamEnded = metrics.peerStreamStarted();
        await serveHit(res, notes, image, hit, range !== undefined, false);
        return;
      }
      const following = await fills.followIfFilling(image, range?.start ?? 0, range?.end ?? image.size - 1);
      if (following === undefined) {
        refusePeer(res, 404, 'not-cached', `This node neither caches nor fills image ${imageId}.`);
        return;
      }
      streamEnded = metrics.peerStreamStarted();
      await serveFill(res, notes, image, null, following, range !== undefined, true);
    } finally {
      peerStreams--;
      streamEnded?.();
    }
  }

  /**
   * A miss, from the image's fill (joined, or started here), or from a fill
   * of a range in flight. 'cached' when the image got cached meanwhile (read
   * it from the cache); 'bypass' (with the reason noted) when the source must serve it.
   */
  async function serveMiss(res: ServerResponse, notes: RequestNotes, image: ImageMetadata, token: string | undefined, range: ResolvedRange | undefined): Promise<'served' | 'cached' | 'bypass'> {
    if (image.size === null) {
      notes.bypass = 'the source gives no size';
      return 'bypass';
    }
    if (range !== undefined) {
      // A range of an image nobody is filling is not worth a fill of its own: the source serves it.
      const following = await fills.followIfFilling(image, range.start, range.end);
      if (following === undefined) {
        notes.bypass = 'a range of an image not being filled';
        return 'bypass';
      }
      await serveFill(res, notes, image, token, following, true, true);
      return 'served';
    }
    const result = await fills.follow(image, token, 0, image.size - 1);
    switch (result.kind) {
      case 'cached':
        return 'cached';
      case 'bypass':
        notes.bypass = result.reason;
        return 'bypass';
      case 'answer':
        await relay(res, result.response);
        return 'served';
      case 'follow':
        await serveFill(res, notes, image, token, result.span, false, result.coalesced);
        return 'served';
    }
  }

  /** The cached file (or range of it), if it is cached and is this image; a copy of another size is stale and dropped. */
  async function openHit(image: ImageMetadata, range: ResolvedRange | undefined): Promise<OpenImageFile | undefined> {
    let hit: OpenImageFile;
    try {
      hit = await cache.openFile(image.id, range);
    } catch (err) {
      if (err instanceof ImageNotCached) return undefined;
      throw err;
    }
    if (image.size === null || hit.fileSize === image.size) return hit;
    hit.close();
    deps.log.warn({ imageId: image.id, cached: hit.fileSize, source: image.size }, 'cached copy has the wrong size; dropping it');
    await cache.deleteCachedImage(image.id);
    metrics.evicted('stale');
    return undefined;
  }

  /** The hot path: the cached file (or range) from disk, or handed to the nginx in front. */
  async function serveHit(res: ServerResponse, notes: RequestNotes, image: ImageMetadata, hit: OpenImageFile, partial: boolean, viaFront = true): Promise<void> {
    notes.cache = 'hit';
    notes.bytesFrom = 'cache';
    // Another node may reach this one past the nginx in front: it gets the bytes, not a redirect.
    if (viaFront && deps.xAccelRedirect !== undefined) {
      redirectToFront(res, image, hit, deps.xAccelRedirect);
      return;
    }
    res.writeHead(partial ? 206 : 200, dataHeaders(image, hit.start, hit.end, hit.fileSize, partial));
    try {
      metrics.served('hit', await sendFile(res, hit));
    } finally {
      hit.close();
    }
  }

  /**
   * The hit, authorized, handed to the nginx in front: it serves the file
   * (and the client's Range) from its internal location with sendfile. The
   * checksum rides in the query, for nginx to send as Content-MD5.
   */
  function redirectToFront(res: ServerResponse, image: ImageMetadata, hit: OpenImageFile, location: string): void {
    hit.close(); // records the hit; nginx opens the file itself
    const query = image.checksum === null ? '' : `?md5=${encodeURIComponent(image.checksum)}`;
    res.writeHead(200, { 'x-accel-redirect': `${location}${encodeURIComponent(image.id)}${query}`, 'content-type': 'application/octet-stream', 'content-length': 0 });
    res.end();
    metrics.served('hit', hit.end - hit.start + 1);
  }

  /**
   * A response following a fill. If the cache's disk fails under it, the rest
   * comes from the source with `token`, the caller's; `null` for a peer's
   * request, which gets nothing but what is here (its node takes the rest elsewhere).
   */
  async function serveFill(res: ServerResponse, notes: RequestNotes, image: ImageMetadata, token: string | undefined | null, span: FollowSpan, partial: boolean, coalesced: boolean): Promise<void> {
    notes.cache = 'miss';
    notes.coalesced = coalesced;
    res.writeHead(partial ? 206 : 200, dataHeaders(image, span.start, span.end, image.size!, partial));
    // Known when the response starts; a fill that moves on from a failed peer adds to it as it goes.
    const noteBytesFrom = (): void => {
      notes.bytesFrom = span.bytesFrom() + (notes.restFromSource === undefined ? '' : ', then upstream');
    };
    noteBytesFrom();
    const rest = token === null ? undefined : async (position: number): Promise<Readable> => {
      notes.restFromSource = position;
      const response = await source.open(image.id, token, { start: position, end: span.end });
      if (response.status === 206 || (response.status === 200 && position === 0)) return response.body;
      response.body.destroy();
      throw new SourceUnavailable(source.kind, `answered ${response.status} to the rest of image '${image.id}' from byte ${position}`);
    };
    try {
      metrics.served('miss', await sendFile(res, { ...span, rest }));
    } finally {
      noteBytesFrom();
      span.release();
    }
  }

  async function bypass(req: IncomingMessage, res: ServerResponse, notes: RequestNotes, image: ImageMetadata, range: ResolvedRange | undefined): Promise<void> {
    notes.cache = 'bypass';
    notes.bytesFrom = 'upstream';
    const response = await source.open(image.id, tokenOf(req), range);
    metrics.served('bypass', await relay(res, response));
  }
}


/** A peer request turned away, with the reason the asking node reads (PEER_REFUSAL_HEADER). */
function refusePeer(res: ServerResponse, status: 404 | 503, refusal: 'busy' | 'not-cached', message: string): void {
  sendError(res, status, message, { [PEER_REFUSAL_HEADER]: refusal });
}

/** Glance's download headers: octet-stream, the length, Content-MD5 (Glance sends the hex checksum), and Content-Range for a range. */
function dataHeaders(image: ImageMetadata, start: number, end: number, size: number, partial: boolean): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {
    'content-type': 'application/octet-stream',
    'content-length': end - start + 1,
    'accept-ranges': 'bytes',
  };
  if (partial) headers['content-range'] = `bytes ${start}-${end}/${size}`;
  else if (image.checksum !== null) headers['content-md5'] = image.checksum;
  return headers;
}

/**
 * The source told a caller the image does not exist. Its cached copy goes,
 * as the DELETE that removed it upstream would have removed it had it passed
 * here, but only on proof (provenGone): a 404 may mean only "not yours", and
 * one caller's 404 must never evict another project's image.
 */
async function dropIfProvenGone(deps: ImageDataDeps, imageId: string): Promise<void> {
  if (!deps.cache.isValidImageId(imageId) || !(await deps.cache.isCached(imageId))) return;
  if (!(await deps.provenGone(imageId))) return;
  await deps.removal.remove(imageId, 'upstream_deleted');
  deps.log.info({ imageId }, 'the source no longer has the image; dropped its cached copy');
}
