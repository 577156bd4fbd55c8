// The server process dies and comes back (../../docs/demo-app.md section 4): clients see a
// reconnecting close code, reconnect, re-subscribe, and tokens issued before the restart stay valid
// (same --auth-key).
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startServer,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  collect,
  withTimeout,
  RawClient,
  uniqueChannel,
} = require('./harness');

describe('server kill -9 and restart', () => {
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

  it('clients reconnect, re-subscribe, keep their token, and get publishes after the restart', async () => {
    const channel = uniqueChannel('public');
    const privateChannel = uniqueChannel('private/room');
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await connect());
    const owner = clients[0];
    await owner.invoke('login', { username: 'survivor' });
    const chans = [];
    for (const c of clients) chans.push(await subscribe(c, channel));
    const privateCh = await subscribe(owner, privateChannel);
    owner.transmit('ping');
    assert.equal(await owner.invoke('count'), 1);
    const oldIds = clients.map((c) => c.id);
    const tokenBefore = owner.signedAuthToken;

    const disconnects = clients.map((c) => nextEvent(c, 'disconnect', 10000));
    const reconnects = clients.map((c) => nextEvent(c, 'connect', 15000));
    const resubscribed = [...chans, privateCh].map((ch) =>
      withTimeout(ch.listener('subscribe').once(), 15000, 're-subscription')
    );

    await server.kill();
    for (const { code } of await Promise.all(disconnects)) {
      assert.notEqual(code, 1000, 'a dying server must not look like a normal close');
      assert.ok(code < 4500, `close code ${code} would stop the client from reconnecting`);
    }

    await server.start();
    const statuses = await Promise.all(reconnects);
    await Promise.all(resubscribed);

    // The token issued by the previous process is accepted by the new one.
    assert.equal(statuses[0].isAuthenticated, true);
    assert.equal(statuses[0].authError, undefined);
    assert.equal(owner.authState, owner.AUTHENTICATED);
    assert.equal(owner.signedAuthToken, tokenBefore);
    assert.equal((await owner.invoke('whoami')).username, 'survivor');
    for (const s of statuses.slice(1)) assert.equal(s.isAuthenticated, false);

    // New sockets on the server: new ids, counters start again.
    clients.forEach((c, i) => assert.notEqual(c.id, oldIds[i]));
    assert.equal(await owner.invoke('count'), 0);

    // A publish after the restart reaches every re-subscribed client.
    const received = chans.map((ch) => collect(ch, 1));
    const privateReceived = collect(privateCh, 1);
    const publisher = await connect();
    await publisher.invokePublish(channel, 'after-restart');
    await publisher.invokePublish(privateChannel, 'private-after-restart');
    for (const got of await Promise.all(received)) assert.deepEqual(got, ['after-restart']);
    assert.deepEqual(await privateReceived, ['private-after-restart']);
  });

  it('a token issued before a restart authenticates a new connection (raw #handshake and #authenticate)', async () => {
    const [raw] = await RawClient.connect(server);
    raw.sendJson({ event: 'login', data: { username: 'before-restart' }, cid: 2 });
    const token = (await raw.nextMatching((p) => p.event === '#setAuthToken')).data.token;
    raw.close();

    await server.restart();

    const [fresh, reply] = await RawClient.connect(server, { authToken: token });
    assert.equal(reply.data.isAuthenticated, true);
    assert.equal('authError' in reply.data, false);
    assert.equal((await fresh.invoke('whoami', undefined, 2)).data.username, 'before-restart');
    fresh.close();

    const [other] = await RawClient.connect(server);
    const auth = await other.invoke('#authenticate', token, 2);
    assert.deepEqual(auth, { rid: 2, data: { isAuthenticated: true, authError: null } });
    assert.equal((await other.invoke('whoami', undefined, 3)).data.username, 'before-restart');
    other.close();
  });

  it('a server restarted with another auth key rejects the old token (soft error)', async () => {
    const [raw] = await RawClient.connect(server);
    raw.sendJson({ event: 'login', data: { username: 'old-key' }, cid: 2 });
    const token = (await raw.nextMatching((p) => p.event === '#setAuthToken')).data.token;
    raw.close();

    const originalKey = server.authKey;
    await server.kill();
    server.authKey = `${originalKey}-rotated`;
    try {
      await server.start();
      const [fresh, reply] = await RawClient.connect(server, { authToken: token });
      assert.equal(reply.data.isAuthenticated, false);
      assert.equal(reply.data.authError.name, 'AuthTokenInvalidError');
      assert.equal((await fresh.invoke('whoami', undefined, 2)).data, null);
      fresh.close();
    } finally {
      await server.kill();
      server.authKey = originalKey;
      await server.start();
    }
  });
});
