import type { DriverName, ResolvedOptions } from '../config.js';
import { BadDriverConfiguration } from '../errors.js';
import type { Driver } from './driver.js';
import { SqliteDriver } from './sqlite.js';

type DriverConstructor = new (options: ResolvedOptions) => Driver;

const DRIVERS: Partial<Record<DriverName, DriverConstructor>> = {
  sqlite: SqliteDriver,
};

/** A new, unconfigured driver of the given name. */
export function createDriver(name: DriverName, options: ResolvedOptions): Driver {
  const Ctor = DRIVERS[name];
  if (Ctor === undefined) throw new BadDriverConfiguration(name, 'this driver is not available in this build');
  return new Ctor(options);
}
