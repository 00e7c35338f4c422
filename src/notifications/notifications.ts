/**
 * Glance's notifications in a node: the listener (listener.ts), what each
 * event does (image-events.ts), the check of the cached images after every
 * (re)connection (reconcile.ts), and their metrics. Configured by
 * transport_url; without it, none of this runs.
 */
import type { ImageCache } from '../cache/image-cache.js';
import type { Prefetcher } from '../cache/prefetcher.js';
import type { ActivationPolicy } from '../config/option-types.js';
import type { Logger } from '../log.js';
import type { ImageRemoval } from '../server/image-removal.js';
import type { NodeMetrics } from '../server/metrics.js';
import type { ImageSource } from '../sources/source.js';
import { ImageEvents } from './image-events.js';
import { NotificationListener, type NotificationSettings } from './listener.js';
import { removeImagesGoneUpstream } from './reconcile.js';

/** The node's notification options: where to listen, and what events do. */
export interface NodeNotificationSettings extends NotificationSettings {
  evictOnDeactivate: boolean;
  prefetchOnActivate: ActivationPolicy;
  /** Bytes; 0: up to image_cache_max_size. */
  prefetchMaxSize: number;
}

export interface NotificationDeps {
  cache: ImageCache;
  source: ImageSource;
  prefetcher: Prefetcher;
  removal: ImageRemoval;
  metrics: NodeMetrics;
  nodeToken(): Promise<string | undefined>;
  needsToken: boolean;
  log: Logger;
}

export class Notifications {
  private readonly listener: NotificationListener;
  private checking: Promise<void> | undefined;
  private checkAgain = false;
  private closed = false;

  constructor(settings: NodeNotificationSettings, private readonly deps: NotificationDeps) {
    const { cache, prefetcher, removal, metrics, log } = deps;
    const events = new ImageEvents({
      removal,
      prefetcher,
      evictOnDeactivate: settings.evictOnDeactivate,
      prefetchOnActivate: settings.prefetchOnActivate,
      prefetchMaxSize: settings.prefetchMaxSize > 0 ? settings.prefetchMaxSize : cache.options.imageCacheMaxSize,
      log,
    });
    const counter = metrics.watchNotifications(() => this.listener.isConnected);
    this.listener = new NotificationListener(settings, events, { counted: counter, catchUp: () => this.checkCachedImages(settings.evictOnDeactivate) }, log);
  }

  /** Connected to the broker and consuming this node's queue now. */
  get connected(): boolean {
    return this.listener.isConnected;
  }

  /** Resolves when the check of the cached images in progress (if any) has ended: for tests and shutdown. */
  async settled(): Promise<void> {
    while (this.checking !== undefined) await this.checking;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.listener.close();
    await this.settled();
  }

  /** One check at a time; one asked for during a check runs after it. */
  private checkCachedImages(evictOnDeactivate: boolean): void {
    if (this.closed) return;
    if (this.checking !== undefined) {
      this.checkAgain = true;
      return;
    }
    const { cache, source, removal, nodeToken, needsToken, log } = this.deps;
    this.checking = removeImagesGoneUpstream({ cache, source, removal, token: nodeToken, needsToken, evictOnDeactivate, log })
      .then(() => undefined, (err: unknown) => log.warn({ err }, 'notifications: could not check the cached images with the upstream'))
      .finally(() => {
        this.checking = undefined;
        if (this.checkAgain) {
          this.checkAgain = false;
          this.checkCachedImages(evictOnDeactivate);
        }
      });
  }
}
