// Odd input and abrupt drops must only ever affect the offending socket (../../docs/demo-app.md
// section 4): malformed frames, a 3 MiB frame, connections dropped before the upgrade, before the
// handshake and with replies pending. After each, a watching client keeps working and new
// connections succeed.
'use strict';

const { describe, it, before, after, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const {
  HOST,
  startServer,
  connectClient,
  closeClients,
  subscribe,
  collect,
  RawClient,
  uniqueChannel,
} = require('./harness');

describe('robustness: other clients are unaffected', () => {
  let server;
  let watcher;
  let watcherChannel;
  let channel;
  const sockets = [];

  /** The watcher still answers, still receives publishes, the server runs, new clients connect. */
  async function assertHealthy(label) {
    assert.ok(server.isRunning(), `server process died (${label})\n${server.tail()}`);
    assert.equal(watcher.state, watcher.OPEN, `watcher lost its connection (${label})`);
    assert.equal(await watcher.invoke('echo', label), label);
    const received = collect(watcherChannel, 1, 5000, `a publish after ${label}`);
    const { socket: fresh } = await connectClient(server);
    sockets.push(fresh);
    await fresh.invokePublish(channel, `after ${label}`);
    assert.deepEqual(await received, [`after ${label}`]);
    assert.equal(await fresh.invoke('echo', 'fresh'), 'fresh');
    closeClients(fresh);
  }

  before(async () => {
    server = await startServer();
    ({ socket: watcher } = await connectClient(server));
    sockets.push(watcher);
  });
  beforeEach(async () => {
    channel = uniqueChannel('watch');
    watcherChannel = await subscribe(watcher, channel);
  });
  after(async () => {
    closeClients(sockets);
    await server.stop();
  });

  it('malformed frames on another socket', async () => {
    const [raw] = await RawClient.connect(server);
    const depth = 100000;
    const frames = [
      'not json at all',
      '{"unterminated": ',
      '{}',
      '42',
      '"s"',
      'null',
      '{"event":5}',
      '{"rid":99999}',
      '{"rid":"1","data":1}',
      '[1,2,3]',
      '[[[]]]',
      '{"event":"#publish","data":{"channel":5}}',
      '{"event":"#subscribe","data":null}',
      '{"event":"#unsubscribe","data":{}}',
      '{"event":"#authenticate","data":"garbage","cid":98}',
      '\u0000\u0001\u0002',
      '\ud800',
      '['.repeat(depth) + ']'.repeat(depth),
      '{"a":'.repeat(depth) + '0' + '}'.repeat(depth),
    ];
    for (const frame of frames) raw.send(frame);
    raw.send(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00]), { binary: true });
    raw.send(Buffer.alloc(0), { binary: true });
    // The offending socket itself stays usable.
    assert.deepEqual(await raw.invoke('echo', 'still here', 500, 10000), { rid: 500, data: 'still here' });
    await assertHealthy('malformed frames');
    raw.close();
  });

  it('a 3 MiB frame closes only that socket with 1009', async () => {
    const [big] = await RawClient.connect(server);
    const [bystander] = await RawClient.connect(server);
    big.send('z'.repeat(3 * 1024 * 1024));
    const { code } = await big.waitClose(10000);
    assert.equal(code, 1009);
    assert.deepEqual(await bystander.invoke('echo', 'ok', 2), { rid: 2, data: 'ok' });
    await assertHealthy('a 3 MiB frame');
    bystander.close();
  });

  it('connections dropped before the WebSocket upgrade', async () => {
    const drops = [];
    for (let i = 0; i < 10; i++) {
      drops.push(
        new Promise((resolve) => {
          const sock = net.connect({ host: HOST, port: server.port }, () => {
            if (i % 3 === 0) {
              sock.destroy();
            } else if (i % 3 === 1) {
              sock.write('GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs');
              sock.destroy();
            } else {
              sock.write(
                'GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
                  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'
              );
              sock.destroy();
            }
            resolve();
          });
          sock.on('error', resolve);
        })
      );
    }
    await Promise.all(drops);
    await assertHealthy('drops before the upgrade');
  });

  it('connections dropped after the upgrade, before the handshake', async () => {
    for (let i = 0; i < 10; i++) {
      const raw = await RawClient.open(server);
      if (i % 2) raw.send('{"event":"#handsh');
      raw.terminate();
    }
    // A connection that sends half a WebSocket frame header and vanishes.
    const half = await RawClient.open(server);
    half.ws._socket.write(Buffer.from([0x81, 0xfe, 0x10]));
    half.terminate();
    await assertHealthy('drops before the handshake');
  });

  it('connections dropped with replies and publishes pending', async () => {
    const pendingChannel = uniqueChannel('pending');
    for (let i = 0; i < 5; i++) {
      const [raw] = await RawClient.connect(server);
      await raw.invoke('#subscribe', { channel: pendingChannel }, 2);
      const payload = 'p'.repeat(100000);
      for (let cid = 10; cid < 40; cid++) raw.sendJson({ event: 'echo', data: payload, cid });
      raw.sendJson({ event: 'login', data: { username: 'gone' }, cid: 41 });
      raw.sendJson({ event: '#publish', data: { channel: pendingChannel, data: payload } });
      raw.terminate();
    }
    // Publishes to sockets that are gone or going.
    const { socket: pub } = await connectClient(server);
    sockets.push(pub);
    for (let i = 0; i < 50; i++) pub.transmitPublish(pendingChannel, i);
    await pub.invokePublish(pendingChannel, 'last');
    await assertHealthy('drops with pending replies');
    closeClients(pub);
  });

  it('a socketcluster-client connection killed mid-stream leaves its peers streaming', async () => {
    const streamChannel = uniqueChannel('stream');
    const { socket: doomed } = await connectClient(server);
    const { socket: survivor } = await connectClient(server);
    sockets.push(doomed, survivor);
    await subscribe(doomed, streamChannel);
    const survivorCh = await subscribe(survivor, streamChannel);
    const received = collect(survivorCh, 200, 10000);
    for (let i = 0; i < 200; i++) {
      survivor.transmitPublish(streamChannel, i);
      if (i === 50) doomed.transport.socket.terminate();
    }
    assert.deepEqual(await received, Array.from({ length: 200 }, (_, i) => i));
    closeClients(doomed);
    await assertHealthy('a client killed mid-stream');
  });
});
