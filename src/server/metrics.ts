import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { ImageCache } from '../cache/image-cache.js';
import type { FillsOptions } from '../cache/fills.js';
import { MetadataStoreUnavailable } from '../errors.js';

/** How a GET of image data was served: the label operators know from nginx's $upstream_cache_status. */
export type CacheStatusLabel = 'hit' | 'miss' | 'bypass';

/**
 * The node's Prometheus metrics, named in the style of the NGINX Plus
 * exporter (nginxplus_cache_hit_responses, _bytes, cache size and max size)
 * and Varnish's (backend bytes, coalesced requests, LRU evictions), under
 * the prefix image_cache_. With several workers each has its own registry
 * and the primary adds them up (prom-client's AggregatorRegistry): the
 * aggregator of each metric says how.
 */
/** Why the node removed a cached image (prune's 'prune' comes from the cache's own eviction events). */
export type EvictionReason = 'upstream_deleted' | 'stale' | 'image_deleted' | 'notification';

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly responses: Record<CacheStatusLabel, Counter>;
  private readonly bytes: Record<CacheStatusLabel, Counter>;
  private readonly upstreamBytes: Counter;
  private readonly fetches: Counter<'outcome'>;
  private readonly fillsInFlight: Gauge;
  private readonly coalesced: Counter;
  private readonly evictions: Counter<'reason'>;
  private readonly fillBytes: Counter<'source'>;
  private readonly fillsBySource: Counter<'source'>;
  private readonly peerFallbacks: Counter<'reason'>;
  private readonly peerStreamsServed: Counter;
  private readonly peerStreamsActive: Gauge;

  constructor(cache: ImageCache) {
    const registry = this.registry;
    const counter = (name: string, help: string): Counter => new Counter({ name, help, registers: [registry] });
    this.responses = {
      hit: counter('image_cache_hit_responses_total', 'Image downloads served from the cache.'),
      miss: counter('image_cache_miss_responses_total', 'Image downloads served from a fill (the first of an image, and every request that followed it).'),
      bypass: counter('image_cache_bypass_responses_total', 'Image downloads served straight from the source, not cached (non-active images, ranges of uncached images, images that cannot be cached).'),
    };
    this.bytes = {
      hit: counter('image_cache_hit_bytes_total', 'Body bytes sent from the cache.'),
      miss: counter('image_cache_miss_bytes_total', 'Body bytes sent from fills.'),
      bypass: counter('image_cache_bypass_bytes_total', 'Body bytes sent straight from the source.'),
    };
    this.upstreamBytes = counter('image_cache_upstream_bytes_total', 'Image bytes received from the source (the upstream) by fills.');
    this.fillBytes = new Counter({ name: 'image_cache_fill_bytes_total', help: 'Image bytes received by fills, by where they came from: the upstream, or another node (peer).', labelNames: ['source'], registers: [registry] });
    this.fillsBySource = new Counter({ name: 'image_cache_fills_total', help: 'Fills started, by where their first bytes came from: the upstream, or another node (peer).', labelNames: ['source'], registers: [registry] });
    this.peerFallbacks = new Counter({ name: 'image_cache_peer_fallbacks_total', help: 'Times another node could not give a fill its bytes and the fill asked the next node or the upstream, by reason.', labelNames: ['reason'], registers: [registry] });
    this.peerStreamsServed = counter('image_cache_peer_streams_served_total', 'Image streams this node served to other nodes.');
    this.peerStreamsActive = new Gauge({ name: 'image_cache_peer_streams_active', help: 'Image streams this node serves to other nodes now.', registers: [registry] });
    for (const source of ['upstream', 'peer']) {
      this.fillBytes.inc({ source }, 0);
      this.fillsBySource.inc({ source }, 0);
    }
    this.fetches = new Counter({ name: 'image_cache_upstream_fetches_total', help: 'Fills by outcome: committed to the cache, or failed (nothing cached).', labelNames: ['outcome'], registers: [registry] });
    this.fillsInFlight = new Gauge({ name: 'image_cache_fills_in_flight', help: 'Images being fetched into the cache now.', registers: [registry] });
    this.coalesced = counter('image_cache_coalesced_total', 'Requests that followed a fill in flight instead of fetching the image again.');
    this.evictions = new Counter({ name: 'image_cache_evictions_total', help: 'Cached images removed, by reason.', labelNames: ['reason'], registers: [registry] });
    new Gauge({
      name: 'image_cache_size_bytes',
      help: 'Bytes of the cached images.',
      registers: [registry],
      aggregator: 'max', // every worker sees the same directory
      async collect() {
        try {
          this.set(await cache.getCacheSize());
        } catch (err) {
          // Sizes come from the records: while their store is down the last value stands, and the
          // other metrics are still served (an outage is when they are wanted most).
          if (!(err instanceof MetadataStoreUnavailable)) throw err;
        }
      },
    });
    new Gauge({
      name: 'image_cache_max_size_bytes',
      help: 'image_cache_max_size: the size prune brings the cache down to.',
      registers: [registry],
      aggregator: 'max',
      collect() {
        this.set(cache.options.imageCacheMaxSize);
      },
    });
    collectDefaultMetrics({ register: registry });
    cache.addEvictionListener((eviction) => this.evictions.inc({ reason: eviction.reason }, eviction.imageIds.length));
  }

  served(status: CacheStatusLabel, bytes: number): void {
    this.responses[status].inc();
    this.bytes[status].inc(bytes);
  }

  /** The HTTP layer's removals; prune's ('prune') are counted from the cache's eviction events. */
  evicted(reason: EvictionReason): void {
    this.evictions.inc({ reason });
  }

  /**
   * The notifications listener's metrics, registered only where one runs:
   * image_cache_notifications_connected (with workers, 1 only if every
   * worker's listener is connected) and image_cache_notifications_total;
   * returns the counter's increment.
   */
  watchNotifications(isConnected: () => boolean): (event: string, outcome: string) => void {
    new Gauge({
      name: 'image_cache_notifications_connected',
      help: '1 while the node listens to Glance\'s notifications (connected to the broker, consuming its queue), else 0.',
      registers: [this.registry],
      aggregator: 'min',
      collect() {
        this.set(isConnected() ? 1 : 0);
      },
    });
    const total = new Counter({ name: 'image_cache_notifications_total', help: 'Glance notifications received, by event and what came of them (removed, queued, nothing, ignored, malformed, failed).', labelNames: ['event', 'outcome'], registers: [this.registry] });
    return (event, outcome) => total.inc({ event, outcome });
  }

  /** Another node could not give a fill its bytes. */
  peerFallback(reason: string): void {
    this.peerFallbacks.inc({ reason });
  }

  /** A stream to another node starts; the returned function ends it. */
  peerStreamStarted(): () => void {
    this.peerStreamsServed.inc();
    this.peerStreamsActive.inc();
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.peerStreamsActive.dec();
    };
  }

  /** The hooks a fill reports through. */
  get fillEvents(): FillsOptions['events'] {
    return {
      fillBytes: (from, n) => {
        if (from === 'upstream') this.upstreamBytes.inc(n);
        this.fillBytes.inc({ source: from }, n);
      },
      fillOpened: (from) => this.fillsBySource.inc({ source: from }),
      fillStarted: () => this.fillsInFlight.inc(),
      fillEnded: (outcome) => {
        this.fillsInFlight.dec();
        this.fetches.inc({ outcome: outcome === 'committed' ? 'committed' : 'failed' });
      },
      followerJoined: () => this.coalesced.inc(),
    };
  }
}
