import http from 'node:http';

/**
 * The node's own error answers, as Glance's come: webob's error pages
 * (webob/exc.py, WSGIHTTPException), negotiated on the request's Accept the
 * same way. Glance raises them with its message as the explanation, so:
 *  - text/html when Accept takes HTML at least as gladly as JSON (`*\/*`, as
 *    python-glanceclient and curl send): the page glanceclient strips to
 *    "403 Forbidden: <message>";
 *  - application/json when Accept prefers it: {"message", "code", "title"};
 *  - text/plain otherwise (no Accept at all, or one that takes neither).
 */
export interface ErrorPage {
  contentType: string;
  body: string;
}

/** webob's titles where they differ from Node's reason phrases. */
const WEBOB_TITLES: Record<number, string> = {
  413: 'Request Entity Too Large',
  416: 'Request Range Not Satisfiable',
};

/** The media types webob offers for an error, in its order of preference on a tie. */
const OFFERS = ['text/html', 'application/json'] as const;
type Offer = (typeof OFFERS)[number] | 'text/plain';

/** webob's body template: the explanation, then the (empty) detail and comment. */
const BODY_TAIL = '<br /><br />\n\n\n';

export function errorPage(status: number, message: string, accept: string | undefined): ErrorPage {
  const title = WEBOB_TITLES[status] ?? http.STATUS_CODES[status] ?? 'Unknown Error';
  const statusLine = `${status} ${title}`;
  switch (negotiate(accept)) {
    case 'text/html':
      return {
        contentType: 'text/html; charset=UTF-8',
        body: `<html>\n <head>\n  <title>${statusLine}</title>\n </head>\n <body>\n  <h1>${statusLine}</h1>\n  ${escapeHtml(message)}${BODY_TAIL}\n </body>\n</html>`,
      };
    case 'application/json':
      return { contentType: 'application/json', body: JSON.stringify({ message: `${message}${BODY_TAIL}`, code: statusLine, title }) };
    case 'text/plain':
      return { contentType: 'text/plain; charset=UTF-8', body: `${statusLine}\n\n${stripTags(`${message}${BODY_TAIL}`)}` };
  }
}

/**
 * webob's choice (acceptable_offers): each offer takes the quality of the
 * most specific media range that matches it (a range with parameters other
 * than q matches no offer, as in webob); the best quality wins, HTML on a
 * tie. A header that does not parse accepts everything (webob's
 * AcceptInvalidHeader); an absent one, like an empty one, accepts nothing
 * webob offers, so the answer is plain text.
 */
export function negotiate(accept: string | undefined): Offer {
  const ranges = parseAccept(accept ?? '');
  if (ranges === undefined) return OFFERS[0];
  let best: { offer: Offer; q: number } | undefined;
  for (const offer of OFFERS) {
    const q = qualityOf(offer, ranges);
    if (q > 0 && (best === undefined || q > best.q)) best = { offer, q };
  }
  return best?.offer ?? 'text/plain';
}

interface MediaRange {
  type: string;
  subtype: string;
  q: number;
  /** Parameters besides q (a range with any matches no offer). */
  hasParameters: boolean;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

/** The media ranges of an Accept header, or undefined when it does not parse. */
function parseAccept(header: string): MediaRange[] | undefined {
  const ranges: MediaRange[] = [];
  for (const element of header.split(',')) {
    if (element.trim() === '') continue;
    const [range = '', ...parameters] = element.split(';').map((part) => part.trim());
    const [type = '', subtype = '', extra] = range.toLowerCase().split('/');
    if (extra !== undefined || !TOKEN.test(type) || !TOKEN.test(subtype) || (type === '*' && subtype !== '*')) return undefined;
    let q = 1;
    let hasParameters = false;
    for (const parameter of parameters) {
      const [name = '', value = ''] = parameter.split('=', 2).map((part) => part.trim());
      if (!TOKEN.test(name) || value === '') return undefined;
      if (name.toLowerCase() !== 'q') {
        hasParameters = true;
        continue;
      }
      if (!/^(0(\.\d{0,3})?|1(\.0{0,3})?)$/.test(value)) return undefined;
      q = Number(value);
    }
    ranges.push({ type, subtype, q, hasParameters });
  }
  return ranges;
}

/** The quality of the most specific range matching `offer` (0 if none does). */
function qualityOf(offer: string, ranges: MediaRange[]): number {
  const [type, subtype] = offer.split('/');
  let specificity = -1;
  let q = 0;
  for (const range of ranges) {
    const exact = range.type === type && range.subtype === subtype;
    const typeWildcard = range.type === type && range.subtype === '*';
    const anything = range.type === '*' && range.subtype === '*';
    const rank = exact ? 2 : typeWildcard ? 1 : anything ? 0 : -1;
    if (rank < 0 || range.hasParameters) continue;
    if (rank > specificity) {
      specificity = rank;
      q = range.q;
    }
  }
  return q;
}

/**
 * webob's html_escape (every non-ASCII character as &#N;) but for quotes:
 * text content needs none escaped, and glanceclient prints the page's text
 * as it is, so "the 'admin' role" would read "the &#x27;admin&#x27; role".
 */
function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/[^\x00-\x7f]/gu, (char) => `&#${char.codePointAt(0)};`);
}

/** webob's strip_tags: newlines become spaces, each <br> a newline, other tags go. */
function stripTags(text: string): string {
  return text.replace(/\n/g, ' ').replace(/\r/g, '').replace(/<br.*?>/gis, '\n').replace(/<!--|-->/g, '').replace(/<.*?>/gs, '');
}

/** The message of an error answer read back: Glance's (webob's) `{"message": ...}`; a proxy's page may be anything: its first line then, shortened. */
export function messageOfErrorBody(body: Buffer): string {
  const text = body.toString('utf8').trim();
  try {
    const parsed = JSON.parse(text) as { message?: unknown; error?: { message?: unknown } };
    const message = parsed.message ?? parsed.error?.message;
    // Glance's (webob's) JSON error ends its message with the page's line breaks.
    if (typeof message === 'string') return message.replace(/(<br \/>)+\s*$/, '');
  } catch {
    // not JSON: fall through to the text itself
  }
  const firstLine = text.split('\n', 1)[0] ?? '';
  return firstLine === '' ? '(no message)' : firstLine.slice(0, 200);
}
