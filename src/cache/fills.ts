import fs from 'node:fs';
import { CacheClosed, CacheWriteFailed, ImageAlreadyCached, ImageBeingCached, SourceUnavailable } from '../errors.js';
import { errorCode } from '../fs/files.js';
import type { Logger } from '../log.js';
import type { ImageMetadata, SourceResponse } from '../sources/source.js';
import type { BytesFrom, FillSource } from './fill-source.js';
import { Fill, type FillEvents } from './fill.js';
import { ForeignFillProgress, untilWritten, type FillProgress } from './fill-progress.js';
import type { ImageCache } from './image-cache.js';

/**
 * Where a follower reads the image: its own hold on the fill's file, the
 * bytes [start, end] it wants, and the fill's progress (what is on disk, and
 * how it ended). release() once, when done reading.
 */
export interface FollowSpan {
  fd: number;
  start: number;
  end: number;
  progress: FillProgress;
  /** Where the fill's bytes came from, for the request log (`upstream`, `peer http://...`, ...). */
  bytesFrom(): string;
  release(): void;
}

/** What a request for an uncached image gets. */
export type FollowResult =
  /** The image's bytes (or the range asked for), following a fill from disk. */
  | { kind: 'follow'; span: FollowSpan; coalesced: boolean }
  /** It got cached meanwhile: read it from the cache. */
  | { kind: 'cached' }
  /** The source refused the fetch: its answer, for the client. */
  | { kind: 'answer'; response: SourceResponse }
  /** No fill can be had (not cacheable, no size, larger than the cache, cache unusable): fetch straight from the source. */
  | { kind: 'bypass'; reason: string };

export interface FillsOptions {
  /** upstream_timeout: a source that sends nothing for this long fails its fill. */
  stallMs: number;
  events: FillEvents & { fillOpened(from: BytesFrom): void; fillStarted(): void; fillEnded(outcome: 'committed' | Error): void; followerJoined(): void };
  log: Logger;
}

/** Tries before a request gives up on joining a fill that keeps ending under it (each end is progress: a commit or an abort). */
const FOLLOW_ATTEMPTS = 4;

/**
 * One fetch per image. The first request for an uncached image claims it
 * (the cache writer's claim, which holds across processes), fetches it from
 * the source and writes it to the cache; every request for it meanwhile,
 * the first included, reads the growing file from disk at its own pace. A
 * request in another process finds the claim held and follows the same file
 * through its own descriptor, polling (ForeignFillProgress).
 */
export class Fills {
  private readonly inFlight = new Map<string, Fill>();
  private closed = false;

  constructor(
    private readonly cache: ImageCache,
    /** Where a fill this node claims gets its bytes: the image's source, or the cluster (ClusterFillSource). */
    private readonly source: FillSource,
    private readonly options: FillsOptions,
  ) {}

  /**
   * The bytes [start, end] of an image that is not cached: from the fill in
   * flight (here or in another process), or from a new one that this call
   * starts with the caller's token.
   */
  async follow(image: ImageMetadata, token: string | undefined, start: number, end: number): Promise<FollowResult> {
    const unfillable = this.unfillable(image);
    if (unfillable !== undefined) return { kind: 'bypass', reason: unfillable };
    try {
      return await this.followOrFill(image, token, start, end);
    } catch (err) {
      // The cache's disk failed before there was a byte to follow: the source serves this one whole.
      if (err instanceof CacheWriteFailed) return { kind: 'bypass', reason: 'the cache\'s disk failed' };
      throw err;
    }
  }

  private async followOrFill(image: ImageMetadata, token: string | undefined, start: number, end: number): Promise<FollowResult> {
    for (let attempt = 0; attempt < FOLLOW_ATTEMPTS; attempt++) {
      const running = this.inFlight.get(image.id);
      if (running !== undefined) return this.joined(this.spanOf(running, start, end));
      let fill: Fill;
      try {
        fill = await this.claim(image);
      } catch (err) {
        if (err instanceof ImageAlreadyCached) return { kind: 'cached' };
        if (!(err instanceof ImageBeingCached)) {
          this.options.log.warn({ imageId: image.id, err }, 'cannot cache the image; serving it from its source');
          return { kind: 'bypass', reason: 'cache unusable' };
        }
        const foreign = this.followForeign(image, start, end);
        if (foreign !== undefined) return this.joined(foreign);
        continue; // the other fill ended between our claim and our look: start over
      }
      const response = await this.fetch(fill, image, token);
      if (response !== undefined) return { kind: 'answer', response };
      return { kind: 'follow', span: await this.spanOf(fill, start, end), coalesced: false };
    }
    return { kind: 'bypass', reason: 'the image\'s fill kept ending under us' };
  }

  /** Only a follow of a fill in flight: for a range of an image nobody is filling, which is not worth a fill of its own. */
  async followIfFilling(image: ImageMetadata, start: number, end: number): Promise<FollowSpan | undefined> {
    if (this.unfillable(image) !== undefined) return undefined;
    let span: Promise<FollowSpan> | undefined;
    const running = this.inFlight.get(image.id);
    if (running !== undefined) span = this.spanOf(running, start, end);
    else if (await this.cache.isBeingCached(image.id)) span = this.followForeign(image, start, end);
    if (span === undefined) return undefined;
    try {
      return (await this.joined(span)).span;
    } catch (err) {
      if (err instanceof CacheWriteFailed) return undefined;
      throw err;
    }
  }

  /** Aborts the fills in flight (nothing of them is cached) and waits for them to end. */
  async close(): Promise<void> {
    this.closed = true;
    const fills = [...this.inFlight.values()];
    for (const fill of fills) fill.fail(new CacheClosed('finish filling an image'));
    await Promise.all(fills.map((fill) => fill.done));
  }

  private unfillable(image: ImageMetadata): string | undefined {
    if (this.closed) return 'shutting down';
    if (image.size === null) return 'the source gives no size';
    if (image.size > this.cache.options.imageCacheMaxSize) return 'larger than the whole cache';
    return undefined;
  }

  private async claim(image: ImageMetadata): Promise<Fill> {
    const writer = await this.cache.openForWrite(image.id);
    let fill: Fill;
    try {
      fill = new Fill(image.id, image.size!, { checksum: image.checksum, osHashAlgo: image.osHashAlgo, osHashValue: image.osHashValue }, writer, this.cache.getImageFilepath(image.id, 'incomplete'));
    } catch (err) {
      writer.destroy();
      throw err;
    }
    this.inFlight.set(image.id, fill);
    const { events, log } = this.options;
    events.fillStarted();
    fill.done.then(() => {
      this.inFlight.delete(image.id);
      events.fillEnded(fill.outcome!);
      if (fill.outcome instanceof Error) log.warn({ imageId: image.id, err: fill.outcome }, 'image fill failed; nothing cached');
      else log.info({ imageId: image.id, size: image.size }, 'image cached');
    });
    return fill;
  }

  /** Opens the source for a claimed fill. Undefined when it streams; the source's answer when it refused (the fill is then failed). */
  private async fetch(fill: Fill, image: ImageMetadata, token: string | undefined): Promise<SourceResponse | undefined> {
    let opening;
    try {
      opening = await this.source.open(image, token);
    } catch (err) {
      fill.fail(err as Error);
      throw err;
    }
    const { response } = opening;
    if (response.status === 200) {
      this.options.events.fillOpened(opening.sources[0]?.startsWith('peer') === true ? 'peer' : 'upstream');
      fill.start(opening, this.options.stallMs, this.options.events);
      return undefined;
    }
    fill.fail(new SourceUnavailable(this.source.kind, `answered ${response.status} to the download of image '${fill.imageId}'`));
    opening.ended(fill.outcome as Error);
    return response;
  }

  private spanOf(fill: Fill, start: number, end: number): Promise<FollowSpan> {
    return spanWhenReadable({ fd: fill.readFd, start, end, progress: fill, bytesFrom: () => fill.sources.join(', then '), release: fill.acquire() });
  }

  /** Follows the fill another process runs; undefined when there is none (any more). */
  private followForeign(image: ImageMetadata, start: number, end: number): Promise<FollowSpan> | undefined {
    let fd: number;
    try {
      fd = fs.openSync(this.cache.getImageFilepath(image.id, 'incomplete'), 'r');
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return undefined;
      throw err;
    }
    const progress = new ForeignFillProgress(fd, image.id, this.cache.getImageFilepath(image.id), image.size!, this.options.stallMs * 2);
    // Opened after that writer let go: an abandoned file is no fill to follow (its bytes may never have been whole).
    if (progress.outcome instanceof Error) {
      fs.closeSync(fd);
      return undefined;
    }
    let open = true;
    return spanWhenReadable({
      fd,
      start,
      end,
      progress,
      bytesFrom: () => 'a fill in another worker',
      release: () => {
        if (open) fs.closeSync(fd);
        open = false;
      },
    });
  }

  /** Counted when it joins, not when bytes come: a follower waits for the fill's first bytes like everyone. */
  private async joined(span: Promise<FollowSpan>): Promise<{ kind: 'follow'; span: FollowSpan; coalesced: true }> {
    this.options.events.followerJoined();
    return { kind: 'follow', span: await span, coalesced: true };
  }
}

/** The span once the fill has bytes at its start; if the fill fails first, its error (and the span released). */
async function spanWhenReadable(span: FollowSpan): Promise<FollowSpan> {
  try {
    await untilWritten(span.progress, span.start);
  } catch (err) {
    span.release();
    throw err;
  }
  return span;
}
