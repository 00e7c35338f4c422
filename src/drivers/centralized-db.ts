import { BadDriverConfiguration } from '../errors.js';
import type { CacheEntry, CachedImage } from '../types.js';
import { Driver } from './driver.js';

// Work in progress (issue 3): replaced by the real driver before it is registered as done.
export class CentralizedDbDriver extends Driver {
  readonly name = 'centralized_db' as const;
  protected async openMetadataStore(): Promise<void> {
    throw new BadDriverConfiguration('centralized_db', 'not implemented yet');
  }
  protected async closeMetadataStore(): Promise<void> {}
  protected recordCachedImage(): void {}
  protected forgetCachedImages(): void {}
  protected recordAccess(): void {}
  async getCachedImages(): Promise<CachedImage[]> { return []; }
  async getCacheSize(): Promise<number> { return 0; }
  async getHitCount(): Promise<number> { return 0; }
  async listLeastRecentlyAccessed(): Promise<CacheEntry[]> { return []; }
}
