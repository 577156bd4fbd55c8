// Many clients and many messages (../../docs/demo-app.md sections 3-4): 200 clients connecting at
// once, and 1000 publishes reaching 20 subscribers complete and in order.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startServer,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  collect,
  uniqueChannel,
} = require('./harness');

describe('scale', () => {
  let server;
  const sockets = [];

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    closeClients(sockets);
    await server.stop();
  });

  it('200 clients connecting at once get distinct ids and all receive one publish', async () => {
    const count = 200;
    const clients = Array.from({ length: count }, () => createClient(server));
    sockets.push(...clients);
    const connected = clients.map((c) => nextEvent(c, 'connect', 20000));
    clients.forEach((c) => c.connect());
    const statuses = await Promise.all(connected);
    const ids = new Set(statuses.map((s) => s.id));
    assert.equal(ids.size, count);
    for (const s of statuses) assert.equal(typeof s.id, 'string');

    const channel = uniqueChannel('crowd');
    const chans = await Promise.all(clients.map((c) => subscribe(c, channel)));
    const received = chans.map((ch) => collect(ch, 1, 20000));
    const { socket: publisher } = await connectClient(server);
    sockets.push(publisher);
    await publisher.invokePublish(channel, { to: 'everyone' });
    const results = await Promise.all(received);
    assert.equal(results.length, count);
    for (const got of results) assert.deepEqual(got, [{ to: 'everyone' }]);

    // Every one of them is still fully usable.
    const echoes = await Promise.all(clients.map((c, i) => c.invoke('echo', i)));
    assert.deepEqual(echoes, Array.from({ length: count }, (_, i) => i));
    closeClients(clients);
  });

  it('1000 publishes reach 20 subscribers, complete and in order', async () => {
    const channel = uniqueChannel('stream');
    const subscribers = [];
    for (let i = 0; i < 20; i++) {
      const { socket } = await connectClient(server);
      sockets.push(socket);
      subscribers.push(socket);
    }
    const chans = await Promise.all(subscribers.map((s) => subscribe(s, channel)));
    const total = 1000;
    const received = chans.map((ch) => collect(ch, total, 30000, 'publishes'));
    const { socket: publisher } = await connectClient(server);
    sockets.push(publisher);
    for (let i = 0; i < total; i++) {
      publisher.transmitPublish(channel, { seq: i, body: `message ${i}` });
    }
    const expected = Array.from({ length: total }, (_, i) => ({ seq: i, body: `message ${i}` }));
    const results = await Promise.all(received);
    for (const got of results) assert.deepEqual(got, expected);
    closeClients(subscribers, publisher);
  });

  it('1000 serverPublish calls reach 20 subscribers, complete and in order', async () => {
    const channel = uniqueChannel('server-stream');
    const subscribers = [];
    for (let i = 0; i < 20; i++) {
      const { socket } = await connectClient(server);
      sockets.push(socket);
      subscribers.push(socket);
    }
    const chans = await Promise.all(subscribers.map((s) => subscribe(s, channel)));
    const total = 1000;
    const received = chans.map((ch) => collect(ch, total, 30000, 'publishes'));
    const { socket: caller } = await connectClient(server);
    sockets.push(caller);
    // One invoke at a time: each publish is accepted before the next is sent.
    for (let i = 0; i < total; i++) {
      await caller.invoke('serverPublish', { channel, data: i });
    }
    const expected = Array.from({ length: total }, (_, i) => i);
    for (const got of await Promise.all(received)) assert.deepEqual(got, expected);
    closeClients(subscribers, caller);
  });
});
