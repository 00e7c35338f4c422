/**
 * Glance's notifications as oslo.messaging sends them: with the messagingv2
 * driver, an envelope `{"oslo.version": "2.0", "oslo.message": "<JSON>"}`
 * whose inner message has `event_type`, `payload`, `message_id`,
 * `publisher_id`, `priority` and `timestamp`; with the older messaging
 * driver, that message itself. A payload of an image event is the image as
 * Glance formats it for notifications (glance/notifier.py): `id`, `status`,
 * `size`, `visibility`, `properties`, ...
 */
import { MalformedNotification } from '../errors.js';

export interface ImagePayload {
  id: string;
  status?: string;
  size?: number | null;
  visibility?: string;
  /** Older Glances send is_public instead of visibility. */
  is_public?: boolean;
  properties?: Record<string, unknown>;
}

/** Statuses of an image that will never be active again: it leaves the cache. */
export const GONE_STATUSES: ReadonlySet<string> = new Set(['deleted', 'pending_delete', 'killed']);

export interface Notification {
  eventType: string;
  messageId: string | undefined;
  payload: unknown;
}

const MAX_TEXT = 1_000_000;

/** The notification in an AMQP body (a Buffer, text, or JSON the client decoded already). */
export function decodeNotification(body: unknown): Notification {
  let message = parsed(body, 'the body');
  if (isObject(message) && 'oslo.message' in message) {
    const inner = message['oslo.message'];
    if (typeof inner !== 'string') throw new MalformedNotification('oslo.message is not a string');
    message = parsed(inner, 'oslo.message');
  }
  if (!isObject(message)) throw new MalformedNotification('the message is not a JSON object');
  const eventType = message.event_type;
  if (typeof eventType !== 'string' || eventType === '') throw new MalformedNotification('no event_type');
  const messageId = typeof message.message_id === 'string' ? message.message_id : undefined;
  return { eventType, messageId, payload: message.payload };
}

/** The image of an image.* event's payload; MalformedNotification when it names none. */
export function imagePayload(notification: Notification): ImagePayload {
  const payload = notification.payload;
  if (!isObject(payload) || typeof payload.id !== 'string' || payload.id === '') {
    throw new MalformedNotification(`${notification.eventType} without an image id in its payload`);
  }
  return payload as unknown as ImagePayload;
}

/** Whether the image is public, as either payload format says it. */
export function isPublic(image: ImagePayload): boolean {
  return image.visibility === 'public' || (image.visibility === undefined && image.is_public === true);
}

function parsed(body: unknown, what: string): unknown {
  if (Buffer.isBuffer(body)) body = body.toString('utf8');
  if (typeof body !== 'string') return body;
  if (body.length > MAX_TEXT) throw new MalformedNotification(`${what} is ${body.length} characters long`);
  try {
    return JSON.parse(body) as unknown;
  } catch {
    throw new MalformedNotification(`${what} is not JSON`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
