import type pg from 'pg';
import { LEASE_SECONDS, type FillCandidate, type FillDirectory } from '../cluster/fill-directory.js';

/**
 * The cluster's fill directory (cluster/fill-directory.ts) in the
 * centralized_db driver's database: tables of our own beside Glance's
 * (created with them, centralized-db.ts SCHEMA):
 * - image_cache_fills: every node filling an image now, with its place in
 *   the order (seq) and its lease;
 * - image_cache_fill_claims: the one node per image fetching it from the
 *   upstream, with its lease.
 * Leases are judged by the database's clock (clock_timestamp()), so the
 * nodes' clocks do not matter. Writes do not wait for the WAL flush: a lease
 * lost in a server crash costs at most a second upstream fetch.
 */
export const FILL_DIRECTORY_SCHEMA = `
  CREATE TABLE IF NOT EXISTS image_cache_fills (
    image_id VARCHAR(255) NOT NULL,
    node_reference_id BIGINT NOT NULL REFERENCES node_reference (node_reference_id),
    seq BIGSERIAL NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (image_id, node_reference_id)
  );
  CREATE TABLE IF NOT EXISTS image_cache_fill_claims (
    image_id VARCHAR(255) NOT NULL PRIMARY KEY,
    node_reference_id BIGINT NOT NULL REFERENCES node_reference (node_reference_id),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL
  );
`;

/** The tables FILL_DIRECTORY_SCHEMA makes, for the check that the schema is all there. */
export const FILL_DIRECTORY_TABLES = ['image_cache_fills', 'image_cache_fill_claims'] as const;

const ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";
const LEASE = `clock_timestamp() + interval '${LEASE_SECONDS} seconds'`;

const SQL = {
  join: `INSERT INTO image_cache_fills AS f (image_id, node_reference_id, expires_at)
         SELECT $2, $1, ${LEASE} FROM ${ASYNC_COMMIT}
         ON CONFLICT (image_id, node_reference_id) DO UPDATE SET seq = EXCLUDED.seq, expires_at = EXCLUDED.expires_at
         RETURNING f.seq`,
  candidates: `SELECT n.node_reference_id AS node_id, n.node_reference_url AS url, 'cached' AS state, 0::bigint AS joined
               FROM cached_images AS c JOIN node_reference AS n ON n.node_reference_id = c.node_reference_id
               WHERE c.image_id = $2 AND c.node_reference_id <> $1
               UNION ALL
               SELECT n.node_reference_id, n.node_reference_url,
                      CASE WHEN k.node_reference_id IS NULL THEN 'filling' ELSE 'upstream' END, f.seq
               FROM image_cache_fills AS f JOIN node_reference AS n ON n.node_reference_id = f.node_reference_id
               LEFT JOIN image_cache_fill_claims AS k
                 ON k.image_id = f.image_id AND k.node_reference_id = f.node_reference_id AND k.expires_at > clock_timestamp()
               WHERE f.image_id = $2 AND f.node_reference_id <> $1 AND f.expires_at > clock_timestamp()`,
  // One statement decides, under the row's lock: free, lapsed, ours already, or held by a node we saw fail.
  claim: `INSERT INTO image_cache_fill_claims AS k (image_id, node_reference_id, expires_at)
          SELECT $2, $1, ${LEASE} FROM ${ASYNC_COMMIT}
          ON CONFLICT (image_id) DO UPDATE SET node_reference_id = EXCLUDED.node_reference_id, expires_at = EXCLUDED.expires_at
          WHERE k.expires_at < clock_timestamp() OR k.node_reference_id = $1 OR k.node_reference_id = ANY($3::bigint[])
          RETURNING k.node_reference_id`,
  // The lapsed rows of nodes long gone are swept by whoever renews.
  renew: `WITH fills AS (
            UPDATE image_cache_fills SET expires_at = ${LEASE} WHERE node_reference_id = $1 AND image_id = ANY($2::varchar[])
          ), swept AS (
            DELETE FROM image_cache_fills WHERE expires_at < clock_timestamp() - interval '1 minute'
          )
          UPDATE image_cache_fill_claims SET expires_at = ${LEASE}
          FROM ${ASYNC_COMMIT}
          WHERE node_reference_id = $1 AND image_id = ANY($2::varchar[])`,
  leave: `WITH fills AS (
            DELETE FROM image_cache_fills WHERE node_reference_id = $1 AND image_id = $2
          )
          DELETE FROM image_cache_fill_claims USING ${ASYNC_COMMIT} WHERE node_reference_id = $1 AND image_id = $2`,
} as const;

/** How the driver runs a statement: through its pool, outages turned into MetadataStoreUnavailable, writes retried on deadlocks. */
export type RunStatement = (text: string, values: unknown[], write: boolean) => Promise<pg.QueryResult>;

export class CentralizedFillDirectory implements FillDirectory {
  constructor(
    private readonly run: RunStatement,
    private readonly nodeId: string,
    readonly selfUrl: string,
  ) {}

  async join(imageId: string): Promise<number> {
    const result = await this.run(SQL.join, [this.nodeId, imageId], true);
    return Number((result.rows[0] as { seq: string }).seq);
  }

  async candidates(imageId: string): Promise<FillCandidate[]> {
    const result = await this.run(SQL.candidates, [this.nodeId, imageId], false);
    return (result.rows as Array<{ node_id: string; url: string; state: FillCandidate['state']; joined: string }>)
      .map((row) => ({ nodeId: String(row.node_id), url: row.url, state: row.state, joined: Number(row.joined) }));
  }

  async claim(imageId: string, replacing: readonly string[]): Promise<boolean> {
    const result = await this.run(SQL.claim, [this.nodeId, imageId, [...replacing]], true);
    return result.rowCount === 1;
  }

  async renew(imageIds: readonly string[]): Promise<void> {
    if (imageIds.length === 0) return;
    await this.run(SQL.renew, [this.nodeId, [...imageIds].sort()], true);
  }

  async leave(imageId: string): Promise<void> {
    await this.run(SQL.leave, [this.nodeId, imageId], true);
  }
}
