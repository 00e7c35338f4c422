/**
 * The node's error pages beside webob's own (Debian's python3-webob, the
 * library Glance's errors come from): for each Accept header and message,
 * the same media type, and the same page (JSON compared parsed; HTML and
 * plain text byte for byte, but for the quotes webob escapes in HTML and we
 * do not: see error-page.ts).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { errorPage } from '../../src/server/error-page.js';

const PYTHON = '/usr/bin/python3';

function webobAvailable(): boolean {
  try {
    execFileSync(PYTHON, ['-c', 'import webob'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const missing = webobAvailable() ? undefined : 'Debian\'s python3-webob is not installed (glance-api brings it)';
if (missing !== undefined && process.env.CI) throw new Error(missing);

/** Answers each case as Glance does: webob's exception for the status, with the message as its explanation. */
const WEBOB = `
import json, sys, webob, webob.exc
out = []
for case in json.load(sys.stdin):
    headers = {} if case['accept'] is None else {'Accept': case['accept']}
    page = webob.exc.status_map[case['status']](explanation=case['message'])
    res = webob.Request.blank('/', headers=headers).get_response(page)
    out.append({'contentType': res.headers['Content-Type'], 'body': res.body.decode('utf-8')})
json.dump(out, sys.stdout)
`;

const ACCEPTS = [
  undefined, '', '*/*', 'application/json', 'text/html', 'text/plain', 'text/*', 'application/*',
  'application/json, text/plain', 'text/html;q=0.5, application/json', 'application/json;q=0, */*',
  'application/json;q=0.5, text/html;q=0.5', '*/*;q=0.5, application/json', 'APPLICATION/JSON',
  'application/json;charset=utf-8', 'garbage;;', 'text/html;level=1, application/json;q=0.2',
];
const MESSAGES: Array<[number, string]> = [
  [400, 'The image ID in the path is not valid percent-encoding'],
  [401, 'The token is not valid (unknown, expired or revoked).'],
  [404, 'Image <b>x</b> & co not found.'],
  [409, 'Listing the nodes that cache an image needs the centralized_db cache driver, not sqlite.'],
  [416, 'Requested range not satisfiable: the image has 10 bytes'],
  [503, 'Service unavailable: métadonnées\nsur deux lignes'],
];

describe('error pages as webob makes them', { skip: missing }, () => {
  it('negotiates the type and renders the page as webob does, for every Accept and message', () => {
    const cases = ACCEPTS.flatMap((accept) => MESSAGES.map(([status, message]) => ({ accept: accept ?? null, status, message })));
    const expected = JSON.parse(execFileSync(PYTHON, ['-c', WEBOB], { input: JSON.stringify(cases) }).toString()) as Array<{ contentType: string; body: string }>;
    cases.forEach((c, i) => {
      const ours = errorPage(c.status, c.message, c.accept ?? undefined);
      const theirs = expected[i]!;
      const what = `${c.status} with Accept ${JSON.stringify(c.accept)}`;
      assert.equal(ours.contentType, theirs.contentType, what);
      if (theirs.contentType === 'application/json') assert.deepEqual(JSON.parse(ours.body), JSON.parse(theirs.body), what);
      else assert.equal(ours.body, theirs.body, what);
    });
  });
});
