/**
 * The node's ear on Glance's notifications: a queue of its own on the
 * exchange Glance publishes to, bound to every priority of its topics
 * (`notifications.info`, `notifications.error`, ...), never the shared
 * `notifications.info` queue that telemetry consumes. The queue is durable
 * and outlives the node's restarts, so that events sent while it was down
 * wait for it; one left by a node gone for good expires (x-expires), and a
 * length bound keeps a long-absent node's backlog finite (x-max-length).
 * The exchange is declared exactly as oslo.messaging declares it (topic,
 * durable and auto-delete as amqp_durable_queues and amqp_auto_delete have
 * it), or the broker would close the channel.
 *
 * RabbitMQ unreachable, at start or later, never stops the node: the client
 * reconnects with backoff, the outage is logged once, and after every
 * (re)connection the cached images are checked with the upstream, so that no
 * event lost meanwhile leaves a deleted image on disk. A message is
 * acknowledged only once acted on; one that is not a notification is
 * acknowledged, counted and logged, never redelivered forever.
 */
import { Connection, ConsumerStatus, type AsyncMessage, type Consumer } from 'rabbitmq-client';
import { MalformedNotification } from '../errors.js';
import type { Logger } from '../log.js';
import type { ImageEvents } from './image-events.js';
import { decodeNotification } from './message.js';
import { parseTransportUrl } from './transport-url.js';

/** Known image events, as metric labels; every other event type counts as `other`. */
const EVENT_LABELS = new Set(['image.create', 'image.update', 'image.upload', 'image.activate', 'image.prepare', 'image.delete', 'image.send']);

/** How long a shutdown waits for the broker to confirm the consumer's and the connection's close. */
const CLOSE_TIMEOUT_MS = 3_000;

export interface NotificationSettings {
  transportUrl: string;
  topics: string[];
  exchange: string;
  /** amqp_durable_queues or rabbit_quorum_queue: how oslo.messaging declares the exchange. */
  exchangeDurable: boolean;
  exchangeAutoDelete: boolean;
  queue: string;
  queueExpirySeconds: number;
  queueMaxLength: number;
}

export interface ListenerHooks {
  /** Each message's event (a label) and outcome. */
  counted(event: string, outcome: string): void;
  /** Check the cached images with the upstream: events may have been missed (after a (re)connection, or one that could not be acted on). */
  catchUp(): void;
}

export class NotificationListener {
  private readonly connection: Connection;
  private readonly consumer: Consumer;
  private ready = false;
  /** When the current outage began; undefined while connected (or before the first attempt failed). */
  private downSince: number | undefined;
  private readonly shown: string;

  constructor(
    private readonly settings: NotificationSettings,
    private readonly events: ImageEvents,
    private readonly hooks: ListenerHooks,
    private readonly log: Logger,
  ) {
    const broker = parseTransportUrl(settings.transportUrl);
    this.shown = broker.shown;
    this.connection = new Connection({
      hosts: broker.hosts,
      username: broker.username,
      password: broker.password,
      vhost: broker.vhost,
      tls: broker.tls,
      connectionName: `image-cache ${settings.queue}`,
      retryLow: 1_000,
      retryHigh: 30_000,
      connectionTimeout: 10_000,
      heartbeat: 30,
    });
    this.connection.on('error', (err: unknown) => this.lost(err));
    const { exchange, queue } = settings;
    this.consumer = this.connection.createConsumer(
      {
        queue,
        queueOptions: { durable: true, arguments: { 'x-expires': settings.queueExpirySeconds * 1000, 'x-max-length': settings.queueMaxLength } },
        exchanges: [{ exchange, type: 'topic', durable: settings.exchangeDurable, autoDelete: settings.exchangeAutoDelete }],
        queueBindings: settings.topics.map((topic) => ({ exchange, queue, routingKey: `${topic}.*` })),
        // One at a time, in the order Glance sent them; a few more fetched ahead.
        concurrency: 1,
        qos: { prefetchCount: 16 },
        requeue: false,
      },
      (message) => this.onMessage(message),
    );
    this.consumer.on('ready', () => this.up());
    this.consumer.on('error', (err: unknown) => this.lost(err));
  }

  /** Connected to the broker and consuming now. */
  get isConnected(): boolean {
    return this.ready && this.connection.ready;
  }

  /** Stops consuming (waiting for the message in hand), then closes the connection. */
  async close(): Promise<void> {
    // A broker gone at this moment must not hold the node's shutdown: what is not acknowledged comes again.
    const closed = (async () => {
      await this.consumer.close().catch((err: unknown) => this.log.debug({ err }, 'notifications: the consumer did not close cleanly'));
      await this.connection.close().catch((err: unknown) => this.log.debug({ err }, 'notifications: the connection did not close cleanly'));
    })();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), CLOSE_TIMEOUT_MS)));
    if ((await Promise.race([closed, timedOut])) === 'timeout') this.connection.unsafeDestroy();
    clearTimeout(timer);
  }

  private up(): void {
    if (this.downSince !== undefined) {
      this.log.warn({ broker: this.shown, downForMs: Date.now() - this.downSince }, 'notifications: connected to the broker again');
    } else {
      this.log.info({ broker: this.shown, queue: this.settings.queue }, 'notifications: listening');
    }
    this.ready = true;
    this.downSince = undefined;
    this.hooks.catchUp();
  }

  private lost(err: unknown): void {
    this.ready = false;
    if (this.downSince !== undefined) {
      this.log.debug({ err }, 'notifications: still no broker');
      return;
    }
    this.downSince = Date.now();
    const code = (err as { code?: string }).code;
    const hint = code === 'PRECONDITION_FAILED'
      ? '; the broker refused a declaration: the exchange must be declared as Glance declares it (amqp_durable_queues, amqp_auto_delete, rabbit_quorum_queue in [oslo_messaging_rabbit]), and a changed notifications_queue_expiry or _max_length needs the old queue deleted'
      : '';
    this.log.warn({ broker: this.shown, err }, `notifications: the broker is unreachable; serving without it and retrying${hint}`);
  }

  private async onMessage(message: AsyncMessage): Promise<ConsumerStatus> {
    let event = 'unknown';
    try {
      const notification = decodeNotification(message.body);
      event = EVENT_LABELS.has(notification.eventType) ? notification.eventType : 'other';
      const outcome = await this.events.handle(notification);
      this.hooks.counted(event, outcome);
      return ConsumerStatus.ACK;
    } catch (err) {
      if (err instanceof MalformedNotification) {
        this.hooks.counted(event, 'malformed');
        this.log.warn({ reason: err.reason, routingKey: message.routingKey, messageId: message.messageId }, 'notifications: acknowledged a message that is not a Glance notification');
        return ConsumerStatus.ACK;
      }
      this.hooks.counted(event, 'failed');
      // Once more, later; a second failure is dropped, and a check of every cached image catches up.
      if (!message.redelivered) {
        this.log.warn({ err, event }, 'notifications: could not act on a notification; it will come again');
        return ConsumerStatus.REQUEUE;
      }
      this.log.error({ err, event }, 'notifications: could not act on a notification twice; dropped it, and checking the cached images with the upstream');
      this.hooks.catchUp();
      return ConsumerStatus.DROP;
    }
  }
}
