import type { IncomingMessage } from 'node:http';
import type { Keystone } from './keystone.js';
import { tokenOf } from './respond.js';

export type Decision = { ok: true } | { ok: false; status: 401 | 403; message: string };

/** Who may use the cache management API. */
export type Authorizer = (req: IncomingMessage) => Promise<Decision>;

/** noauth: everyone is an admin, as Glance's noauth pipeline makes everyone. */
export const everyoneIsAdmin: Authorizer = async () => ({ ok: true });

/**
 * keystone: a valid token with `role` (Glance's cache_* policies default to
 * admin); 401 without a valid token, 403 without the role.
 */
export function keystoneRole(keystone: Keystone, role: string): Authorizer {
  return async (req) => {
    const token = tokenOf(req);
    if (token === undefined || token === '') return { ok: false, status: 401, message: 'Authentication required: send a Keystone token in X-Auth-Token.' };
    const check = await keystone.check(token);
    if (!check.valid) return { ok: false, status: 401, message: 'The token is not valid (unknown, expired or revoked).' };
    if (!check.roles.includes(role)) return { ok: false, status: 403, message: `Managing the image cache needs the '${role}' role.` };
    return { ok: true };
  };
}
