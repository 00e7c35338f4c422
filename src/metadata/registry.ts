import type { DriverName } from '../config.js';
import type { IndexContext, MetadataIndex } from './metadata-index.js';

export type IndexConstructor = new (ctx: IndexContext) => MetadataIndex;

/**
 * Each driver's index is loaded when it is asked for: a process pays only
 * for its own (the PostgreSQL client, for one, costs a cache node using
 * sqlite some 15 MB of memory it would never use; importing the package
 * loads none of them, which test/metadata/lazy-drivers.test.ts checks).
 */
const INDEXES: Record<DriverName, () => Promise<IndexConstructor>> = {
  sqlite: async () => (await import('./sqlite.js')).SqliteIndex,
  xattr: async () => (await import('./xattr.js')).XattrIndex,
  centralized_db: async () => (await import('./centralized-db.js')).CentralizedDbIndex,
};

/** The named driver's index class, loaded on first use. */
export function loadIndex(name: DriverName): Promise<IndexConstructor> {
  return INDEXES[name]();
}
