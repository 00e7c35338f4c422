/**
 * The machine's RabbitMQ (127.0.0.1:5672, guest/guest) for the notification
 * tests: whether it answers, and a connection of the test's own to publish
 * what Glance would not (malformed messages), look at a node's queue, and
 * clean up the exchange and queues a test declared.
 */
import net from 'node:net';
import { Connection } from 'rabbitmq-client';

export const RABBIT_HOST = process.env.IMAGE_CACHE_TEST_RABBIT_HOST ?? '127.0.0.1';
export const RABBIT_PORT = Number(process.env.IMAGE_CACHE_TEST_RABBIT_PORT ?? 5672);
/** oslo.messaging's spelling of the broker's address, as glance-api.conf has it. */
export const RABBIT_URL = `rabbit://guest:guest@${RABBIT_HOST}:${RABBIT_PORT}/`;

/** Why RabbitMQ cannot be used here, or undefined when it answers. */
export function rabbitUnreachable(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(RABBIT_PORT, RABBIT_HOST);
    const done = (reason: string | undefined): void => {
      socket.destroy();
      resolve(reason);
    };
    socket.setTimeout(2_000, () => done(`RabbitMQ at ${RABBIT_HOST}:${RABBIT_PORT} did not answer within 2 s`));
    socket.once('connect', () => done(undefined));
    socket.once('error', (err) => done(`RabbitMQ at ${RABBIT_HOST}:${RABBIT_PORT} is not reachable: ${err.message}`));
  });
}

export class TestBroker {
  readonly connection = new Connection({ hostname: RABBIT_HOST, port: RABBIT_PORT, username: 'guest', password: 'guest', connectionName: 'image-cache tests' });
  private readonly publisher = this.connection.createPublisher({ confirm: true });

  constructor() {
    this.connection.on('error', () => {});
  }

  /** Publishes `body` to the exchange with a routing key, as oslo.messaging would (JSON text). */
  async publish(exchange: string, routingKey: string, body: string | Buffer): Promise<void> {
    await this.publisher.send({ exchange, routingKey, contentType: 'application/json' }, body);
  }

  /** Messages waiting in a queue (not yet delivered to a consumer). */
  async waiting(queue: string): Promise<number> {
    return (await this.connection.queueDeclare({ queue, passive: true })).messageCount;
  }

  async deleteQueue(queue: string): Promise<void> {
    await this.connection.queueDelete({ queue });
  }

  async deleteExchange(exchange: string): Promise<void> {
    await this.connection.exchangeDelete({ exchange });
  }

  async close(): Promise<void> {
    await this.publisher.close();
    await this.connection.close();
  }
}
