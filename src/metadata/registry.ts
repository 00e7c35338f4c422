import type { DriverName, ResolvedOptions } from '../config.js';
import type { Driver } from './driver.js';

type DriverConstructor = new (options: ResolvedOptions) => Driver;

/**
 * Each driver is loaded when it is asked for: a process pays only for its
 * own (the PostgreSQL client, for one, costs a cache node using sqlite
 * some 15 MB of memory it would never use).
 */
const DRIVERS: Record<DriverName, () => Promise<DriverConstructor>> = {
  sqlite: async () => (await import('./sqlite.js')).SqliteDriver,
  xattr: async () => (await import('./xattr.js')).XattrDriver,
  centralized_db: async () => (await import('./centralized-db.js')).CentralizedDbDriver,
};

/** A new, unconfigured driver of the given name. */
export async function createDriver(name: DriverName, options: ResolvedOptions): Promise<Driver> {
  return new (await DRIVERS[name]())(options);
}
