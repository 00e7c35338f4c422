import { BadDriverConfiguration } from '../errors.js';
import type { CacheEntry, CachedImage } from '../types.js';
import { Driver } from './driver.js';

// Work in progress (issue 3): replaced by the real driver before it is registered as done.
export class XattrDriver extends Driver {
  readonly name = 'xattr' as const;
  protected async openMetadataStore(): Promise<void> {
    throw new BadDriverConfiguration('xattr', 'not implemented yet');
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
