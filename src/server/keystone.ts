import { SourceUnavailable } from '../errors.js';
import type { Logger } from '../log.js';
import { readBounded, Upstream, type UpstreamResponse } from '../sources/upstream.js';
import type { KeystoneSettings } from './config.js';

/** The node's own Keystone credentials and where Keystone is ([keystone_authtoken]), and where to log. */
export type KeystoneOptions = KeystoneSettings & { log: Logger };

/** What Keystone says of a caller's token. */
export type TokenCheck = { valid: true; roles: string[]; expiresAt: number } | { valid: false };

/** Validations kept at most; the oldest go first. */
const MAX_CACHED_TOKENS = 10_000;
/** The node renews its own token this long before it expires. */
const RENEW_BEFORE_MS = 120_000;
/** Keystone answers within this, or the request fails (the caller gets a 502 saying so). */
const KEYSTONE_TIMEOUT_MS = 30_000;
/** A token document with its catalog can be large; one past this is not Keystone's. */
const MAX_TOKEN_DOCUMENT_BYTES = 4 * 1024 * 1024;

/**
 * Keystone v3 for the node: its own token (password authentication with the
 * [keystone_authtoken] credentials, renewed before it expires), and the
 * validation of callers' tokens with `GET /v3/auth/tokens`, as
 * keystonemiddleware does for Glance. A validation is cached for
 * token_cache_time at most, and never past the token's expiry.
 */
export class Keystone {
  private readonly keystone: Upstream;
  private own: { token: string; expiresAt: number } | undefined;
  private renewing: Promise<string> | undefined;
  private readonly checks = new Map<string, { check: TokenCheck; until: number }>();

  /** Where callers authenticate: auth_url as configured (what a 401's WWW-Authenticate names). */
  get authUrl(): string {
    return this.options.authUrl;
  }

  constructor(private readonly options: KeystoneOptions) {
    const url = options.authUrl.replace(/\/+$/, '');
    this.keystone = new Upstream(/\/v3$/.test(url) ? url : `${url}/v3`, { timeoutMs: KEYSTONE_TIMEOUT_MS, name: 'keystone' });
  }

  /** The node's own token, fetched or renewed when it is missing or about to expire. */
  async nodeToken(): Promise<string> {
    if (this.own !== undefined && this.own.expiresAt - Date.now() > RENEW_BEFORE_MS) return this.own.token;
    this.renewing ??= this.authenticate().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  /** Validates a caller's token (cached; see the class). */
  async check(token: string): Promise<TokenCheck> {
    const now = Date.now();
    const cached = this.checks.get(token);
    if (cached !== undefined && cached.until > now) return cached.check;
    this.checks.delete(token);
    const check = await this.validate(token, true);
    const until = Math.min(now + this.options.tokenCacheSeconds * 1000, check.valid ? check.expiresAt : Infinity);
    if (until > now) {
      if (this.checks.size >= MAX_CACHED_TOKENS) this.checks.delete(this.checks.keys().next().value!);
      this.checks.set(token, { check, until });
    }
    return check;
  }

  private async validate(token: string, mayRenew: boolean): Promise<TokenCheck> {
    const response = await this.keystone.request({ method: 'GET', path: '/auth/tokens?nocatalog', headers: { 'x-auth-token': await this.nodeToken(), 'x-subject-token': token } });
    const status = response.statusCode;
    if (status !== 200) response.body.resume();
    if (status === 404) return { valid: false };
    if (status === 401 && mayRenew) {
      // Our own token expired or was revoked: once more with a new one.
      this.own = undefined;
      return this.validate(token, false);
    }
    if (status !== 200) throw new SourceUnavailable('keystone', `token validation answered ${status}`);
    const body = (await json(response)) as { token?: { roles?: Array<{ name?: string }>; expires_at?: string } };
    const expiresAt = Date.parse(body.token?.expires_at ?? '');
    if (!Number.isFinite(expiresAt) || expiresAt <= Date.now()) return { valid: false };
    return { valid: true, roles: (body.token?.roles ?? []).map((role) => String(role.name)), expiresAt };
  }

  private async authenticate(): Promise<string> {
    const { username, password, projectName, userDomainName, projectDomainName } = this.options;
    const response = await this.keystone.request({
      method: 'POST',
      path: '/auth/tokens?nocatalog',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify({
        auth: {
          identity: { methods: ['password'], password: { user: { name: username, domain: { name: userDomainName }, password } } },
          scope: { project: { name: projectName, domain: { name: projectDomainName } } },
        },
      })),
    });
    const token = response.headers['x-subject-token'];
    if (response.statusCode !== 201 || typeof token !== 'string') {
      response.body.resume();
      throw new SourceUnavailable('keystone', `the node's own credentials ([keystone_authtoken] username ${username}) were refused: ${response.statusCode}`);
    }
    const body = (await json(response)) as { token?: { expires_at?: string } };
    const expiresAt = Date.parse(body.token?.expires_at ?? '');
    this.own = { token, expiresAt: Number.isFinite(expiresAt) ? expiresAt : Date.now() + RENEW_BEFORE_MS * 2 };
    this.options.log.info({ user: username, expiresAt: new Date(this.own.expiresAt).toISOString() }, 'got the node\'s own Keystone token');
    return token;
  }
}

async function json(response: UpstreamResponse): Promise<unknown> {
  try {
    return JSON.parse((await readBounded(response.body, MAX_TOKEN_DOCUMENT_BYTES)).toString('utf8'));
  } catch (err) {
    throw new SourceUnavailable('keystone', `answered something that is not a token document: ${(err as Error).message}`, { cause: err });
  }
}
