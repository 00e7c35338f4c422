import type { Readable } from 'node:stream';
import type { ByteRange } from '../types.js';

/**
 * What the node needs to know about an image before serving its bytes, as
 * Glance's `GET /v2/images/{id}` gives it (snake_case there, camelCase here).
 */
export interface ImageMetadata {
  id: string;
  /** Glance's image status: only `active` images are served from or written to the cache. */
  status: string;
  /** Bytes, when the source knows them (Glance: null until the upload ends). */
  size: number | null;
  /** Glance's legacy md5 `checksum`, hex. */
  checksum: string | null;
  /** The multihash pair (Glance: `sha512` and its hex digest). */
  osHashAlgo: string | null;
  osHashValue: string | null;
  /** The source's whole image document, as it sent it (served as-is where the node answers metadata itself). */
  document: Record<string, unknown>;
}

/**
 * A source's answer that is not what was asked for (401, 403, 404, 5xx, ...):
 * passed to the client unchanged, with its body, because it carries the
 * source's reason (Glance's JSON or HTML error pages).
 */
export interface SourceAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
}

export type MetadataResult =
  | { ok: true; image: ImageMetadata }
  | { ok: false; answer: SourceAnswer };

/** A response body from a source: 200 (whole image), 206 (the range asked for) or anything else, passed through. */
export interface SourceResponse {
  status: number;
  headers: Record<string, string | string[]>;
  body: Readable;
}

/**
 * Where images come from: an upstream Glance, a local directory store, and
 * (later) another cache node that holds the image. The routes know only this
 * interface. Every call carries the caller's token (undefined without one),
 * because the source, not the node, decides who may read an image.
 *
 * A source that cannot be reached rejects with SourceUnavailable; anything it
 * answers, including a refusal, resolves.
 */
export interface ImageSource {
  /** For logs and metrics: `glance`, `local`, ... */
  readonly kind: string;
  metadata(imageId: string, token: string | undefined): Promise<MetadataResult>;
  /** The image's bytes, or the inclusive range of them. */
  open(imageId: string, token: string | undefined, range?: ByteRange): Promise<SourceResponse>;
  close(): Promise<void>;
}
