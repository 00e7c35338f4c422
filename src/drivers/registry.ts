import type { DriverName, ResolvedOptions } from '../config.js';
import { CentralizedDbDriver } from './centralized-db.js';
import type { Driver } from './driver.js';
import { SqliteDriver } from './sqlite.js';
import { XattrDriver } from './xattr.js';

type DriverConstructor = new (options: ResolvedOptions) => Driver;

const DRIVERS: Record<DriverName, DriverConstructor> = {
  sqlite: SqliteDriver,
  xattr: XattrDriver,
  centralized_db: CentralizedDbDriver,
};

/** A new, unconfigured driver of the given name. */
export function createDriver(name: DriverName, options: ResolvedOptions): Driver {
  return new DRIVERS[name](options);
}
