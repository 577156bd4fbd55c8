// Channels (../../docs/demo-app.md section 3): subscribe, publish (transmit and invoke),
// serverPublish, unsubscribe, the private/ rule, publisher echo, ordering, no loss and no
// duplicates.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startServer,
  connectClient,
  closeClients,
  subscribe,
  collect,
  withTimeout,
  uniqueChannel,
} = require('./harness');

/** Raw inbound frames of a client socket, parsed, for wire-level assertions. */
function recordFrames(socket) {
  const frames = [];
  (async () => {
    for await (const { message } of socket.listener('message')) {
      if (message === '') continue;
      try {
        frames.push(JSON.parse(message));
      } catch {
        frames.push(message);
      }
    }
  })();
  return frames;
}

describe('channels via socketcluster-client', () => {
  let server;
  const sockets = [];
  const connect = async (options) => {
    const result = await connectClient(server, options);
    sockets.push(result.socket);
    return result.socket;
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    closeClients(sockets);
    await server.stop();
  });

  it('transmitPublish reaches every subscriber, the subscribed publisher included', async () => {
    const channel = uniqueChannel();
    const [pub, a, b] = [await connect(), await connect(), await connect()];
    const chans = [await subscribe(pub, channel), await subscribe(a, channel), await subscribe(b, channel)];
    const received = chans.map((ch) => collect(ch, 1));
    pub.transmitPublish(channel, { hello: 'world' });
    for (const got of await Promise.all(received)) assert.deepEqual(got, [{ hello: 'world' }]);
  });

  it('invokePublish resolves and reaches every subscriber', async () => {
    const channel = uniqueChannel();
    const [pub, a] = [await connect(), await connect()];
    const chA = await subscribe(a, channel);
    const received = collect(chA, 2);
    assert.equal(await pub.invokePublish(channel, 'one'), undefined);
    assert.equal(await pub.invokePublish(channel, ['two', 2]), undefined);
    assert.deepEqual(await received, ['one', ['two', 2]]);
  });

  it('a publish to a channel without subscribers succeeds', async () => {
    const pub = await connect();
    await pub.invokePublish(uniqueChannel('nobody'), 'into the void');
    assert.equal(await pub.invoke('echo', 'ok'), 'ok');
  });

  it('delivers each publish as {"event":"#publish","data":{"channel":C,"data":X}}', async () => {
    const channel = uniqueChannel();
    const sub = await connect();
    const frames = recordFrames(sub);
    const ch = await subscribe(sub, channel);
    const received = collect(ch, 1);
    sub.transmitPublish(channel, { n: 1 });
    await received;
    const pubs = frames.filter((f) => f && f.event === '#publish');
    assert.deepEqual(pubs, [{ event: '#publish', data: { channel, data: { n: 1 } } }]);
  });

  it('serverPublish publishes through the server exchange to every subscriber', async () => {
    const channel = uniqueChannel();
    const [caller, a, b] = [await connect(), await connect(), await connect()];
    const received = [collect(await subscribe(a, channel), 2), collect(await subscribe(b, channel), 2)];
    assert.equal(await caller.invoke('serverPublish', { channel, data: { from: 'server' } }), undefined);
    assert.equal(await caller.invoke('serverPublish', { channel, data: 7 }), undefined);
    for (const got of await Promise.all(received)) assert.deepEqual(got, [{ from: 'server' }, 7]);
  });

  it('unsubscribe stops delivery on the wire; a later marker still arrives', async () => {
    const channel = uniqueChannel();
    const marker = uniqueChannel('marker');
    const sub = await connect();
    const pub = await connect();
    const frames = recordFrames(sub);
    await subscribe(sub, channel);
    const markerCh = await subscribe(sub, marker);
    sub.unsubscribe(channel);
    // The unsubscribe transmit is processed before this echo on the same connection.
    assert.equal(await sub.invoke('echo', 'sync'), 'sync');
    const gotMarker = collect(markerCh, 1);
    await pub.invokePublish(channel, 'must-not-arrive');
    await pub.invokePublish(marker, 'marker');
    assert.deepEqual(await gotMarker, ['marker']);
    const leaked = frames.filter((f) => f && f.event === '#publish' && f.data && f.data.channel === channel);
    assert.deepEqual(leaked, []);
  });

  it('subscribing again after unsubscribe delivers again', async () => {
    const channel = uniqueChannel();
    const sub = await connect();
    await subscribe(sub, channel);
    sub.unsubscribe(channel);
    const ch = await subscribe(sub, channel);
    const received = collect(ch, 1);
    await sub.invokePublish(channel, 'back');
    assert.deepEqual(await received, ['back']);
  });

  describe('private/ channels', () => {
    it('an unauthenticated subscribe is rejected with ForbiddenError', async () => {
      const sock = await connect();
      const channel = uniqueChannel('private/room');
      await assert.rejects(subscribe(sock, channel), (err) => {
        assert.equal(err.name, 'ForbiddenError');
        assert.equal(err.message, 'private channel requires authentication');
        return true;
      });
      assert.equal(sock.isSubscribed(channel, true), false);
      assert.equal(await sock.invoke('echo', 'usable'), 'usable');
    });

    it('the same subscribe succeeds after login and receives publishes', async () => {
      const sock = await connect();
      const channel = uniqueChannel('private/room');
      await assert.rejects(subscribe(sock, channel), { name: 'ForbiddenError' });
      await sock.invoke('login', { username: 'member' });
      const ch = await subscribe(sock, channel);
      const received = collect(ch, 1);
      await sock.invokePublish(channel, 'secret');
      assert.deepEqual(await received, ['secret']);
    });

    it('publishing to private/ is not restricted', async () => {
      const channel = uniqueChannel('private/news');
      const member = await connect();
      await member.invoke('login', { username: 'reader' });
      const ch = await subscribe(member, channel);
      const received = collect(ch, 2);
      const anon = await connect();
      assert.equal(anon.authState, anon.UNAUTHENTICATED);
      await anon.invokePublish(channel, 'from-anonymous');
      anon.transmitPublish(channel, 'transmitted');
      assert.deepEqual(await received, ['from-anonymous', 'transmitted']);
    });

    it('only the exact prefix "private/" is protected', async () => {
      const sock = await connect();
      for (const channel of [uniqueChannel('private'), uniqueChannel('privatex/'), uniqueChannel('x/private/')]) {
        await subscribe(sock, channel);
      }
      await assert.rejects(subscribe(sock, uniqueChannel('private/')), { name: 'ForbiddenError' });
    });
  });

  describe('waitForAuth', () => {
    it('a waitForAuth subscription is sent once the client is authenticated, then receives publishes', async () => {
      const sock = await connect();
      const channel = uniqueChannel('private/wait');
      const ch = sock.subscribe(channel, { waitForAuth: true });
      const subscribed = withTimeout(ch.listener('subscribe').once(), 5000, 'the waitForAuth subscription');
      assert.equal(ch.state, ch.PENDING);
      await sock.invoke('login', { username: 'waiter' });
      await subscribed;
      const received = collect(ch, 1);
      await sock.invokePublish(channel, 'welcome');
      assert.deepEqual(await received, ['welcome']);
    });
  });

  describe('order, loss and duplicates', () => {
    it('publishes from one client arrive in order, none lost, none duplicated', async () => {
      const channel = uniqueChannel();
      const pub = await connect();
      const subs = [await connect(), await connect(), await connect()];
      const received = [];
      for (const s of subs) received.push(collect(await subscribe(s, channel), 300, 10000));
      for (let i = 0; i < 300; i++) {
        if (i % 2) pub.transmitPublish(channel, i);
        else pub.invokePublish(channel, i);
      }
      const expected = Array.from({ length: 300 }, (_, i) => i);
      for (const got of await Promise.all(received)) assert.deepEqual(got, expected);
    });

    it('concurrent publishers: every subscriber sees the same order, each publisher in its own order', async () => {
      const channel = uniqueChannel();
      const publishers = [await connect(), await connect(), await connect()];
      const subs = [await connect(), await connect(), await connect(), await connect()];
      const perPublisher = 100;
      const total = perPublisher * publishers.length;
      const received = [];
      for (const s of subs) received.push(collect(await subscribe(s, channel), total, 15000));
      await Promise.all(
        publishers.map(async (p, pi) => {
          for (let i = 0; i < perPublisher; i++) p.transmitPublish(channel, { p: pi, i });
          await p.invoke('echo', 'flush');
        })
      );
      const results = await Promise.all(received);
      const reference = results[0];
      assert.equal(reference.length, total);
      for (const got of results) assert.deepEqual(got, reference);
      for (let pi = 0; pi < publishers.length; pi++) {
        const seq = reference.filter((m) => m.p === pi).map((m) => m.i);
        assert.deepEqual(seq, Array.from({ length: perPublisher }, (_, i) => i));
      }
    });

    it('a publisher that is not subscribed does not receive its own publish', async () => {
      const channel = uniqueChannel();
      const marker = uniqueChannel('marker');
      const pub = await connect();
      const frames = recordFrames(pub);
      const markerCh = await subscribe(pub, marker);
      const gotMarker = collect(markerCh, 1);
      await pub.invokePublish(channel, 'not-for-me');
      await pub.invokePublish(marker, 'end');
      await gotMarker;
      assert.deepEqual(
        frames.filter((f) => f && f.event === '#publish' && f.data.channel === channel),
        []
      );
    });

    it('client-side subscriptions survive a client reconnect (re-subscribed automatically)', async () => {
      const channel = uniqueChannel();
      const sub = await connect();
      const ch = await subscribe(sub, channel);
      sub.disconnect();
      const resubscribed = withTimeout(ch.listener('subscribe').once(), 5000, 're-subscribe');
      sub.connect();
      await resubscribed;
      const received = collect(ch, 1);
      await sub.invokePublish(channel, 'after-reconnect');
      assert.deepEqual(await received, ['after-reconnect']);
    });
  });
});
