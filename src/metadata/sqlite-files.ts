/**
 * Names in a cache directory that belong to the sqlite driver, not to images:
 * the database, the files SQLite keeps beside it, and the lock file Glance's
 * sqlite driver creates at start-up (oslo.concurrency's external lock). Every
 * driver reserves them, because a directory may have been used by sqlite
 * (ImageCache falls back to it when another driver cannot be configured).
 */
export function sqliteFileNames(database: string): ReadonlySet<string> {
  return new Set([database, `${database}-wal`, `${database}-shm`, `${database}-journal`, 'image_cache_db_init']);
}
