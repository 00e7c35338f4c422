/**
 * oslo.messaging's transport URL, `rabbit://user:password@host:port[,user:password@host:port...]/virtual_host[?ssl=1]`,
 * as the connection options of the AMQP client. The hosts of one URL are one
 * RabbitMQ cluster: the client connects to one and moves to the next when it
 * is lost. oslo allows credentials per host; a cluster has one set, so the
 * first host's are used for all.
 */
import { ConfigurationError } from '../errors.js';
import { redactUserInfo } from '../config/option-types.js';

export interface BrokerAddress {
  hosts: string[];
  username: string;
  password: string;
  vhost: string;
  tls: boolean;
  /** The URL without its password, for logs. */
  shown: string;
}

const DEFAULT_PORT = 5672;
const DEFAULT_TLS_PORT = 5671;

export function parseTransportUrl(url: string): BrokerAddress {
  const match = /^(rabbit|amqp|amqps|kombu):\/\/([^/?]*)(\/[^?]*)?(\?.*)?$/.exec(url);
  const shown = redactUserInfo(url);
  const refuse = (why: string): never => {
    throw new ConfigurationError('transport_url', shown, why);
  };
  if (match === null) return refuse('is not a rabbit:// transport URL');
  const [, scheme, hostPart, pathPart, query] = match;
  const params = new URLSearchParams(query?.slice(1) ?? '');
  const sslParam = (params.get('ssl') ?? '').toLowerCase();
  const tls = scheme === 'amqps' || ['1', 'true', 'yes', 'on'].includes(sslParam);
  let username = 'guest';
  let password = 'guest';
  const hosts: string[] = [];
  for (const [index, entry] of hostPart!.split(',').entries()) {
    if (entry === '') return refuse('has an empty host');
    const at = entry.lastIndexOf('@');
    const hostPort = at < 0 ? entry : entry.slice(at + 1);
    if (at >= 0 && index === 0) {
      const userInfo = entry.slice(0, at);
      const colon = userInfo.indexOf(':');
      username = decodeURIComponent(colon < 0 ? userInfo : userInfo.slice(0, colon));
      password = colon < 0 ? '' : decodeURIComponent(userInfo.slice(colon + 1));
    }
    const hostMatch = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(hostPort);
    if (hostMatch === null) return refuse(`has a host that is not host[:port]: ${JSON.stringify(hostPort)}`);
    const port = hostMatch[2] === undefined ? (tls ? DEFAULT_TLS_PORT : DEFAULT_PORT) : Number(hostMatch[2]);
    if (port < 1 || port > 65535) return refuse(`has a port out of range: ${port}`);
    hosts.push(`${hostMatch[1]}:${port}`);
  }
  // oslo: no path or "/" is the default virtual host "/"; otherwise the path without its slash.
  const vhostText = pathPart === undefined || pathPart === '/' ? '/' : decodeURIComponent(pathPart.slice(1));
  return { hosts, username, password, vhost: vhostText, tls, shown };
}
