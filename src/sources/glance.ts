import { SourceUnavailable } from '../errors.js';
import type { ByteRange } from '../types.js';
import type { ImageMetadata, ImageSource, MetadataResult, SourceAnswer, SourceResponse } from './source.js';
import { definedHeaders, readBounded, type Upstream, type UpstreamResponse } from './upstream.js';

/** Refusal bodies are kept whole to pass them on; a source that sends more than this is cut short. */
const MAX_ANSWER_BYTES = 64 * 1024;
/** An image document is a few kB; one this large is not Glance's. */
const MAX_DOCUMENT_BYTES = 1024 * 1024;

/**
 * Images from the upstream Glance, asked with the caller's token:
 * `GET /v2/images/{id}` for status, size and checksums, `GET /v2/images/{id}/file` for bytes.
 */
export class GlanceSource implements ImageSource {
  readonly kind = 'glance';

  constructor(private readonly upstream: Upstream) {}

  async metadata(imageId: string, token: string | undefined): Promise<MetadataResult> {
    const response = await this.upstream.request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}`, headers: authHeaders(token) });
    if (response.statusCode !== 200) return { ok: false, answer: await answerOf(response) };
    let document: Record<string, unknown>;
    try {
      document = JSON.parse((await readBounded(response.body, MAX_DOCUMENT_BYTES)).toString('utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new SourceUnavailable('glance', `the metadata of image '${imageId}' is not a JSON document: ${(err as Error).message}`, { cause: err });
    }
    return { ok: true, image: metadataOf(imageId, document) };
  }

  async open(imageId: string, token: string | undefined, range?: ByteRange): Promise<SourceResponse> {
    const headers = authHeaders(token);
    if (range !== undefined) headers.range = `bytes=${range.start}-${range.end ?? ''}`;
    const response = await this.upstream.request({ method: 'GET', path: `/v2/images/${encodeURIComponent(imageId)}/file`, headers });
    return { status: response.statusCode, headers: definedHeaders(response.headers), body: response.body };
  }

  close(): Promise<void> {
    return this.upstream.close();
  }
}

function authHeaders(token: string | undefined): Record<string, string> {
  return token === undefined ? {} : { 'x-auth-token': token };
}

/** Glance's image document, the fields the node needs checked for their types. */
export function metadataOf(imageId: string, document: Record<string, unknown>): ImageMetadata {
  const text = (name: string): string | null => (typeof document[name] === 'string' && document[name] !== '' ? (document[name] as string) : null);
  const size = document.size;
  return {
    id: imageId,
    status: text('status') ?? 'unknown',
    size: typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? size : null,
    checksum: text('checksum'),
    osHashAlgo: text('os_hash_algo'),
    osHashValue: text('os_hash_value'),
    document,
  };
}

/** A refusal, read whole (up to a bound) so it can be passed on with its length. */
async function answerOf(response: UpstreamResponse): Promise<SourceAnswer> {
  return { status: response.statusCode, headers: definedHeaders(response.headers), body: await readBounded(response.body, MAX_ANSWER_BYTES, true) };
}

