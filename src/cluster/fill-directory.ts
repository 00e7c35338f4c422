/**
 * Who in the cluster holds an image or is filling it now, and the one claim
 * on its upstream fetch: what a node asks before it reads an image from
 * anywhere. PostgreSQL keeps it (metadata/fill-directory-sql.ts), beside the
 * centralized_db driver's cached_images, so that the nodes need no tracker
 * of their own.
 *
 * A node's rows are leases: renewed while its fills run (renew()), and
 * worthless LEASE_SECONDS after the last renewal, so that the rows of a node
 * that died (or lost its database) stop sending anyone to it within that
 * bound. A lease that lapses under a live node costs at most a second
 * upstream fetch: bytes are checked at every hop whoever sends them.
 */

/** How long a node's claim and its fills' rows stay good without a renewal. */
export const LEASE_SECONDS = 5;
/** How often a node renews the leases of its fills in flight. */
export const RENEW_EVERY_MS = 1_000;

/**
 * A node that may have the image's bytes:
 * - `cached`: it has a record of the whole image (cached_images);
 * - `upstream`: it holds the image's claim, and fetches it from the upstream now;
 * - `filling`: it fills it now from another node.
 */
export interface FillCandidate {
  nodeId: string;
  url: string;
  state: 'cached' | 'upstream' | 'filling';
  /**
   * When it joined the image's fills, in the directory's order (0 for a
   * holder): a node follows only nodes that joined before it, so that no two
   * nodes ever wait on each other's fill.
   */
  joined: number;
}

export interface FillDirectory {
  /** This node's worker_self_reference_url. */
  readonly selfUrl: string;
  /** Records that this node fills the image now; resolves with its place in the order (FillCandidate.joined). */
  join(imageId: string): Promise<number>;
  /** The other nodes that hold the image or fill it now (live leases only). */
  candidates(imageId: string): Promise<FillCandidate[]>;
  /**
   * Takes the image's claim on its upstream fetch: true when this node holds
   * it now (it was free, its lease lapsed, it is this node's, or it is held
   * by one of `replacing`, nodes this node saw fail as the image's source).
   */
  claim(imageId: string, replacing: readonly string[]): Promise<boolean>;
  /** Renews the leases of this node's fills of these images (and their claims). */
  renew(imageIds: readonly string[]): Promise<void>;
  /** This node no longer fills the image: its row and its claim go. */
  leave(imageId: string): Promise<void>;
}
