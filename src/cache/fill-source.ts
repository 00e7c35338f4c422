import type { ImageMetadata, ImageSource, SourceResponse } from '../sources/source.js';

/** Where a fill's bytes come from: the image's source (the upstream Glance, or the local store), or another node. */
export type BytesFrom = 'upstream' | 'peer';

/** A claimed fill's bytes, opened. */
export interface FillOpening {
  /** 200 with a body that streams the whole image; anything else is the source's refusal, passed to the client. */
  response: SourceResponse;
  /**
   * Counts the body's bytes by where each came from, when the opening knows
   * better than "the source" (a fill that moves from node to node); unset,
   * every byte is the source's.
   */
  countBytes?(onBytes: (from: BytesFrom, bytes: number) => void): void;
  /** Where they have come from, in order, for the request log (`peer http://b:9292`, `upstream`). */
  readonly sources: readonly string[];
  /**
   * The body guards against silence itself (each of its streams has
   * upstream_timeout), and may pause between two of them to find the next:
   * the fill's own stall guard stays out of the way.
   */
  readonly guardsStalls: boolean;
  /** Told once, when the fill has ended: committed, or failed. */
  ended(outcome: 'committed' | Error): void;
}

/** Opens the bytes of a fill this node claimed (Fills). */
export interface FillSource {
  /** The image source's kind (`glance`, `local`), for errors. */
  readonly kind: string;
  open(image: ImageMetadata, token: string | undefined): Promise<FillOpening>;
}

/** A fill from the image's source alone: one node, or a cluster without peer_fill. */
export function sourceFills(source: ImageSource): FillSource {
  return {
    kind: source.kind,
    async open(image, token) {
      return sourceOpening(await source.open(image.id, token));
    },
  };
}

/** The opening of a response of the image's source. */
export function sourceOpening(response: SourceResponse): FillOpening {
  return { response, sources: ['upstream'], guardsStalls: false, ended() {} };
}
