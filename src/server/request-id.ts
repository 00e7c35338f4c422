import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';

/** The header of OpenStack's request ids: each service's own on its answers, a caller's global one on requests. */
export const REQUEST_ID_HEADER = 'x-openstack-request-id';

/**
 * What oslo.middleware's RequestId takes as a caller's global request id
 * (`req-` and a UUID, as oslo.context makes them); anything else in the
 * header is ignored, so that a caller cannot write what it likes into our logs.
 */
const GLOBAL_REQUEST_ID = /^req-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$/;

/** A request's ids, for its answer, its log line and the requests it makes. */
export interface RequestIds {
  /** The node's own id for the request (`req-<uuid>`), sent back in x-openstack-request-id. */
  requestId: string;
  /** The caller's global request id (an inbound X-OpenStack-Request-ID in oslo's form), when it sent one. */
  globalRequestId?: string;
}

/** A new id of our own, and the caller's global id when it sent a valid one. */
export function requestIdsOf(req: IncomingMessage): RequestIds {
  const inbound = req.headers[REQUEST_ID_HEADER];
  const value = Array.isArray(inbound) ? inbound[0] : inbound;
  const requestId = `req-${randomUUID()}`;
  return value !== undefined && GLOBAL_REQUEST_ID.test(value) ? { requestId, globalRequestId: value } : { requestId };
}

/**
 * The ids of the request being served, wherever its work goes (the fill it
 * starts, the upstream requests of either): the image sources are shared by
 * all requests and are not told whose request they serve.
 */
const current = new AsyncLocalStorage<RequestIds>();

/** Runs `work` as part of the request with these ids. */
export function withRequestIds<T>(ids: RequestIds, work: () => T): T {
  return current.run(ids, work);
}

/**
 * The header for a request to another service made on behalf of the request
 * being served: its global id, as oslo.context's global_id gives it (the
 * caller's global id, else our own id), so that the upstream's log line and
 * ours carry the same id. None outside a request (the node's own fetches).
 */
export function outboundRequestIdHeaders(): OutgoingHttpHeaders {
  const ids = current.getStore();
  return ids === undefined ? {} : { [REQUEST_ID_HEADER]: ids.globalRequestId ?? ids.requestId };
}
