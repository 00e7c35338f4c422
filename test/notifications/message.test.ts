/** The pieces of the notifications listener that need no broker: the envelope, the transport URL, the activation policy. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { activationPolicy, transportUrl } from '../../src/config/option-types.js';
import { ConfigurationError, MalformedNotification } from '../../src/errors.js';
import { decodeNotification, imagePayload, isPublic } from '../../src/notifications/message.js';
import { parseTransportUrl } from '../../src/notifications/transport-url.js';

const envelope = (message: unknown): Buffer => Buffer.from(JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify(message) }));

describe('decodeNotification', () => {
  it('reads messagingv2\'s envelope and the older bare message alike', () => {
    const inner = { event_type: 'image.delete', payload: { id: 'abc' }, message_id: 'm1' };
    assert.deepEqual(decodeNotification(envelope(inner)), { eventType: 'image.delete', messageId: 'm1', payload: { id: 'abc' } });
    assert.deepEqual(decodeNotification(JSON.stringify(inner)), { eventType: 'image.delete', messageId: 'm1', payload: { id: 'abc' } });
    assert.deepEqual(decodeNotification(inner), { eventType: 'image.delete', messageId: 'm1', payload: { id: 'abc' } });
  });

  it('refuses what is not a notification with MalformedNotification, whatever it is', () => {
    for (const body of [Buffer.from('nope'), '[]', 'null', '{"oslo.message": 3}', '{"oslo.message": "{"}', JSON.stringify({ payload: {} }), JSON.stringify({ event_type: '' }), 42, undefined]) {
      assert.throws(() => decodeNotification(body), MalformedNotification, String(body));
    }
  });

  it('takes the image of an image event\'s payload, and says which are public', () => {
    const notification = decodeNotification(envelope({ event_type: 'image.activate', payload: { id: 'i', visibility: 'public' } }));
    assert.equal(isPublic(imagePayload(notification)), true);
    assert.equal(isPublic({ id: 'i', visibility: 'shared' }), false);
    assert.equal(isPublic({ id: 'i', is_public: true }), true);
    assert.throws(() => imagePayload(decodeNotification(envelope({ event_type: 'image.delete', payload: { name: 'x' } }))), MalformedNotification);
  });
});

describe('parseTransportUrl', () => {
  it('reads oslo.messaging\'s rabbit:// URLs: several hosts, the default port and virtual host, TLS', () => {
    assert.deepEqual(parseTransportUrl('rabbit://guest:guest@127.0.0.1:5672/'), { hosts: ['127.0.0.1:5672'], username: 'guest', password: 'guest', vhost: '/', tls: false, shown: 'rabbit://guest:***@127.0.0.1:5672/' });
    const cluster = parseTransportUrl('rabbit://openstack:p%40ss@rabbit1:5672,openstack:p%40ss@rabbit2,openstack:p%40ss@[::1]:5673/openstack?ssl=1');
    assert.deepEqual(cluster.hosts, ['rabbit1:5672', 'rabbit2:5671', '[::1]:5673']);
    assert.equal(cluster.password, 'p@ss');
    assert.equal(cluster.vhost, 'openstack');
    assert.equal(cluster.tls, true);
    assert.equal(parseTransportUrl('amqp://broker').vhost, '/');
    assert.doesNotMatch(cluster.shown, /p%40ss/);
  });

  it('refuses a URL it cannot use, naming the option and hiding the password', () => {
    for (const url of ['http://broker:5672/', 'rabbit://', 'rabbit://u:secret@host:99999/', 'rabbit://u:secret@,host/']) {
      assert.throws(() => parseTransportUrl(url), (err: unknown) => err instanceof ConfigurationError && err.option === 'transport_url' && !err.message.includes('secret'), url);
    }
    const refused = transportUrl.parse('http://u:secret@host/');
    assert.ok('invalid' in refused && !refused.invalid.includes('secret'));
  });
});

describe('image_cache_prefetch_on_activate', () => {
  it('is none, public, all or property:NAME=VALUE', () => {
    assert.deepEqual(activationPolicy.parse('none'), { value: { kind: 'none' } });
    assert.deepEqual(activationPolicy.parse('public'), { value: { kind: 'public' } });
    assert.deepEqual(activationPolicy.parse('property:os_distro=ubuntu'), { value: { kind: 'property', name: 'os_distro', value: 'ubuntu' } });
    assert.ok('invalid' in activationPolicy.parse('property:os_distro'));
    assert.ok('invalid' in activationPolicy.parse('private'));
  });
});
