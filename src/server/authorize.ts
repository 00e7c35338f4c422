import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Keystone } from './keystone.js';
import { tokenOf } from './respond.js';

export type Decision = { ok: true } | { ok: false; status: 401 | 403; message: string; headers?: OutgoingHttpHeaders };

/** Whether a request may go on. */
export type Authorizer = (req: IncomingMessage) => Promise<Decision>;

/** Who may do what on the node. */
export interface Access {
  /** Who may download image data (GET /v2/images/{id}/file, hit or miss). */
  reader: Authorizer;
  /** Who may use the cache management API. */
  admin: Authorizer;
}

/** noauth: everyone is an admin, as Glance's noauth pipeline makes everyone; the upstream alone decides who reads. */
const everyone: Authorizer = async () => ({ ok: true });

/**
 * Who may do what under the auth strategy: everyone under noauth; under
 * keystone, a reader is a caller whose token Keystone validates (as
 * keystonemiddleware in front of Glance checks it, but with the node's own
 * bound on how long a validation is trusted, so that what the node serves
 * from its cache never outlives a revocation by more than token_cache_time,
 * whatever the upstream caches), and an admin a reader with `adminRole`
 * (Glance's cache_* policies default to admin). Whether a reader may see
 * a given image is still the upstream's to say.
 */
export function accessFor(keystone: Keystone | undefined, adminRole: string): Access {
  if (keystone === undefined) return { reader: everyone, admin: everyone };
  // keystonemiddleware's answer to a missing or refused token: 401 saying where to authenticate.
  const unauthenticated = (message: string): Decision => ({ ok: false, status: 401, message, headers: { 'www-authenticate': `Keystone uri="${keystone.authUrl}"` } });
  const roles = async (req: IncomingMessage): Promise<string[] | Decision> => {
    const token = tokenOf(req);
    if (token === undefined || token === '') return unauthenticated('Authentication required: send a Keystone token in X-Auth-Token.');
    const check = await keystone.check(token);
    if (!check.valid) return unauthenticated('The token is not valid (unknown, expired or revoked).');
    return check.roles;
  };
  return {
    async reader(req) {
      const found = await roles(req);
      return Array.isArray(found) ? { ok: true } : found;
    },
    async admin(req) {
      const found = await roles(req);
      if (!Array.isArray(found)) return found;
      if (!found.includes(adminRole)) return { ok: false, status: 403, message: `Managing the image cache needs the '${adminRole}' role.` };
      return { ok: true };
    },
  };
}
