import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { ChecksumMismatch, PeerFailed, SourceUnavailable, WrongImageLength } from '../errors.js';
import type { Logger } from '../log.js';
import type { BytesFrom, FillOpening, FillSource } from '../cache/fill-source.js';
import { sourceOpening } from '../cache/fill-source.js';
import type { ImageMetadata, ImageSource, SourceResponse } from '../sources/source.js';
import { RENEW_EVERY_MS, type FillCandidate, type FillDirectory } from './fill-directory.js';
import { failureReason, type PeerClient } from './peer-client.js';

/** A node that failed as a source is tried after the others for this long. */
const FAILED_RECENTLY_MS = 30_000;
/** Looks at the directory before a fill gives up on the claim's holder and fetches from the upstream itself. */
const ROUNDS = 4;
/** The wait after the first look that found nobody to read from; doubled after each. */
const FIRST_WAIT_MS = 50;

export interface ClusterFillOptions {
  directory: FillDirectory;
  peers: PeerClient;
  /** The image's source (the upstream Glance). */
  source: ImageSource;
  log: Logger;
  /** Told of every peer that could not give its bytes, with the reason (metrics). */
  fallback(reason: string): void;
}

/** One stream of a fill's bytes, from a peer or the upstream. */
interface Stream {
  body: Readable;
  kind: BytesFrom;
  label: string;
  /** The peer, for a peer's stream. */
  candidate?: FillCandidate;
}

/**
 * Fills from the cluster (peer_fill): a fill this node claimed reads the
 * image from another node that holds it or fills it now, as the fill
 * directory tells, or else takes the image's claim and fetches it from the
 * upstream, once for the whole cluster. The bytes go through the same fill
 * as an upstream fetch (length, hash, commit), so they are checked at every
 * hop, and only bytes: the metadata, and every decision on who may read, came
 * from the upstream already, with the caller's token, which the peer is
 * asked with too.
 *
 * If the stream fails midway (the peer resets, stalls, sends what it should
 * not, dies), the fill goes on from where it is, `Range: bytes=N-`, from the
 * next node or the upstream: the clients following it see one response.
 */
export class ClusterFillSource implements FillSource {
  /** Images this process fills, whose leases it renews. */
  private readonly leases = new Set<string>();
  private readonly health = new PeerHealth();
  private renewing: NodeJS.Timeout | undefined;
  /** Removals from the directory under way, waited for by close(). */
  private readonly leaving = new Set<Promise<void>>();

  constructor(private readonly options: ClusterFillOptions) {}

  get kind(): string {
    return this.options.source.kind;
  }

  async open(image: ImageMetadata, token: string | undefined): Promise<FillOpening> {
    const { directory, source, log } = this.options;
    let joined: number;
    try {
      joined = await directory.join(image.id);
    } catch (err) {
      log.warn({ imageId: image.id, err }, 'the fill directory is unavailable; fetching the image from the upstream');
      return sourceOpening(await source.open(image.id, token));
    }
    this.hold(image.id);
    let ended = false;
    let fill: ClusterFill | undefined;
    const end = (outcome?: 'committed' | Error): void => {
      if (ended) return;
      ended = true;
      this.release(image.id);
      // Bytes of the right length that fail the image's hash: a peer sent them (or the upstream did). Not asked again for a while.
      if (outcome instanceof ChecksumMismatch || outcome instanceof WrongImageLength) for (const url of fill?.peersUsed ?? []) this.health.distrust(url);
    };
    try {
      fill = new ClusterFill(this.options, image, token, joined, this.health);
      const first = await fill.next(0);
      if ('answer' in first) {
        end();
        return sourceOpening(first.answer);
      }
      return {
        response: { status: 200, headers: {}, body: Readable.from(fill.bytes(first), { objectMode: false }) },
        countBytes: (onBytes) => fill!.countBytes(onBytes),
        sources: fill.sources,
        guardsStalls: true,
        ended: end,
      };
    } catch (err) {
      end();
      throw err;
    }
  }

  /** Once the fills have ended (Fills.close()): waits for their rows to go, and lets go of the peers' connections. */
  async close(): Promise<void> {
    clearInterval(this.renewing);
    this.renewing = undefined;
    await Promise.all(this.leaving);
    this.options.peers.close();
  }

  private hold(imageId: string): void {
    this.leases.add(imageId);
    if (this.renewing !== undefined) return;
    this.renewing = setInterval(() => {
      this.options.directory.renew([...this.leases]).catch((err: unknown) => this.options.log.warn({ err }, 'could not renew the leases of this node\'s fills'));
    }, RENEW_EVERY_MS);
    this.renewing.unref();
  }

  private release(imageId: string): void {
    this.leases.delete(imageId);
    if (this.leases.size === 0) {
      clearInterval(this.renewing);
      this.renewing = undefined;
    }
    // Should this fail, the lease lapses by itself.
    const leaving = this.options.directory.leave(imageId)
      .catch((err: unknown) => this.options.log.warn({ imageId, err }, 'could not remove this node\'s fill from the fill directory'))
      .finally(() => this.leaving.delete(leaving));
    this.leaving.add(leaving);
  }
}

/**
 * What this process has seen of other nodes lately: those that failed (gone,
 * reset, stalled) are asked after the others; those whose bytes failed an
 * image's hash are not asked at all, for FAILED_RECENTLY_MS.
 */
class PeerHealth {
  private readonly failedAt = new Map<string, number>();
  private readonly distrustedAt = new Map<string, number>();

  failed(url: string): void {
    this.failedAt.set(url, Date.now());
  }

  distrust(url: string): void {
    this.distrustedAt.set(url, Date.now());
  }

  failedRecently(url: string): boolean {
    return recent(this.failedAt, url);
  }

  distrusted(url: string): boolean {
    return recent(this.distrustedAt, url);
  }
}

function recent(times: Map<string, number>, url: string): boolean {
  const at = times.get(url);
  if (at === undefined) return false;
  if (Date.now() - at < FAILED_RECENTLY_MS) return true;
  times.delete(url);
  return false;
}

/** One fill's way through the cluster: the peers it tried, the claim, the streams. */
class ClusterFill {
  readonly sources: string[] = [];
  private onBytes: (from: BytesFrom, bytes: number) => void = () => {};
  /** Peers that failed this fill: not asked again by it. */
  private readonly failed = new Set<string>();
  /** Nodes that failed this fill: a claim one of them holds may be taken over. */
  private readonly failedHolders = new Set<string>();
  private claimed = false;

  constructor(
    private readonly options: ClusterFillOptions,
    private readonly image: ImageMetadata,
    private readonly token: string | undefined,
    private readonly joined: number,
    private readonly health: PeerHealth,
  ) {}

  /** The peers whose bytes this fill took. */
  get peersUsed(): string[] {
    return this.sources.filter((label) => label.startsWith('peer ')).map((label) => label.slice('peer '.length));
  }

  countBytes(onBytes: (from: BytesFrom, bytes: number) => void): void {
    this.onBytes = onBytes;
  }

  private get size(): number {
    return this.image.size!;
  }

  /** The next stream, from byte `position`: a peer if one can send, else the upstream (with the claim if it can be had). */
  async next(position: number): Promise<Stream | { answer: SourceResponse }> {
    const { directory, peers, log } = this.options;
    for (let round = 0; round < ROUNDS; round++) {
      if (this.claimed) return this.fromUpstream(position);
      let candidates: FillCandidate[];
      try {
        candidates = await directory.candidates(this.image.id);
      } catch (err) {
        log.warn({ imageId: this.image.id, err }, 'the fill directory is unavailable; fetching the image from the upstream');
        return this.fromUpstream(position);
      }
      for (const candidate of this.ordered(candidates)) {
        try {
          const body = await peers.open(candidate.url, this.image.id, this.token, position, this.size);
          return this.started({ body, kind: 'peer', label: `peer ${candidate.url}`, candidate });
        } catch (err) {
          this.peerFailed(candidate, err);
        }
      }
      // Nobody could send: the claim, if it is free, lapsed, or held by a node that failed us.
      try {
        if (await directory.claim(this.image.id, [...this.failedHolders])) {
          this.claimed = true;
          return this.fromUpstream(position);
        }
      } catch (err) {
        log.warn({ imageId: this.image.id, err }, 'the fill directory is unavailable; fetching the image from the upstream');
        return this.fromUpstream(position);
      }
      // Another node holds it and fetches: the next look finds it (or the nodes following it) ready to send.
      await delay(FIRST_WAIT_MS * 2 ** round);
    }
    // The claim's holder could not be followed in all that time: a second upstream fetch rather than none.
    log.warn({ imageId: this.image.id }, 'no node could send the image and its claim is held; fetching it from the upstream too');
    return this.fromUpstream(position);
  }

  /** The image's bytes, from stream to stream until the last. */
  async *bytes(first: Stream): AsyncGenerator<Buffer> {
    let stream = first;
    let position = 0;
    try {
      for (;;) {
        try {
          for await (const chunk of stream.body as AsyncIterable<Buffer>) {
            if (stream.kind === 'peer' && position + chunk.length > this.size) throw new PeerFailed(stream.candidate!.url, 'wrong_bytes', 'sent more bytes than the image has');
            position += chunk.length;
            this.onBytes(stream.kind, chunk.length);
            yield chunk;
          }
          // The upstream's short body is the fill's length guard's to judge.
          if (stream.kind === 'upstream' || position === this.size) return;
          throw new PeerFailed(stream.candidate!.url, 'reset', `ended at byte ${position} of ${this.size}`);
        } catch (err) {
          if (stream.kind === 'upstream') throw err;
          stream.body.destroy();
          this.peerFailed(stream.candidate!, err);
          this.options.log.info({ imageId: this.image.id, peer: stream.candidate!.url, position, err }, 'a peer\'s stream failed; going on from the next source');
        }
        const next = await this.next(position);
        if ('answer' in next) throw new SourceUnavailable('glance', `answered ${next.answer.status} to the rest of image '${this.image.id}' from byte ${position}`);
        stream = next;
      }
    } finally {
      stream.body.destroy();
    }
  }

  /** Holders first (they have every byte), then the claim's holder, then nodes following it that joined before this one; each group shuffled, recent failures last. */
  private ordered(candidates: FillCandidate[]): FillCandidate[] {
    const rank = { cached: 0, upstream: 1, filling: 2 } as const;
    const usable = candidates.filter((c) => !this.failed.has(c.url) && !this.health.distrusted(c.url) && (c.state !== 'filling' || c.joined < this.joined));
    const keyed = usable.map((c) => ({ c, key: (this.health.failedRecently(c.url) ? 10 : 0) + rank[c.state] + Math.random() * 0.5 }));
    keyed.sort((a, b) => a.key - b.key);
    // One node may show twice (a record, and a fill): ask it once.
    const seen = new Set<string>();
    return keyed.map(({ c }) => c).filter((c) => !seen.has(c.url) && seen.add(c.url));
  }

  private peerFailed(candidate: FillCandidate, err: unknown): void {
    const reason = failureReason(err);
    this.options.fallback(reason);
    this.options.log.debug({ imageId: this.image.id, peer: candidate.url, reason, err }, 'a peer could not send the image');
    if (reason === 'wrong_bytes') this.health.distrust(candidate.url);
    if (reason === 'busy') return; // it may have room at the next look
    this.failed.add(candidate.url);
    if (reason === 'connect' || reason === 'reset' || reason === 'stall' || reason === 'error') this.health.failed(candidate.url);
    // It may hold the claim by now though it did not when it was chosen: its claim may be taken over.
    if (reason !== 'refused') this.failedHolders.add(candidate.nodeId);
  }

  private async fromUpstream(position: number): Promise<Stream | { answer: SourceResponse }> {
    const { source } = this.options;
    const response = await source.open(this.image.id, this.token, position > 0 ? { start: position } : undefined);
    if (response.status === 200 && position === 0) return this.started({ body: response.body, kind: 'upstream', label: 'upstream' });
    const range = response.headers['content-range'];
    if (response.status === 206 && position > 0 && typeof range === 'string' && range.startsWith(`bytes ${position}-`)) {
      return this.started({ body: response.body, kind: 'upstream', label: 'upstream' });
    }
    if (position === 0) return { answer: response };
    response.body.destroy();
    throw new SourceUnavailable(source.kind, `answered ${response.status} to the rest of image '${this.image.id}' from byte ${position}`);
  }

  private started(stream: Stream): Stream {
    this.sources.push(stream.label);
    return stream;
  }
}
