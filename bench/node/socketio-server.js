#!/usr/bin/env node
// Benchmark peer: the demo app on socket.io 4.8 (WebSocket transport), with the same events as the
// SocketCluster app and rooms for channels:
//   echo (ack: the data back), ping (no ack: count it), count (ack: pings so far),
//   subscribe (channel name; joins the room; ack), unsubscribe (leaves the room),
//   publish ({channel, data}: every socket in the room gets `publish` {channel, data}).
//
// With --redis redis://HOST:PORT, rooms are shared with every other node on that Redis through
// @socket.io/redis-adapter's sharded adapter (createShardedAdapter: SPUBLISH/SSUBSCRIBE, Redis 7,
// the `redis` v4 client; the default subscription mode "dynamic", one Redis channel per room):
// a publish on one node reaches the room's sockets on every node (scripts/bench-redis).
//
// Usage: node socketio-server.js [--port 8000] [--redis redis://127.0.0.1:6379]
// Prints `listening on ws://127.0.0.1:PORT/socket.io/` once it accepts connections (and, with
// --redis, once both Redis clients are connected).
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const argv = process.argv.slice(2);
const arg = (name) => {
  const at = argv.indexOf(name);
  return at === -1 ? undefined : argv[at + 1];
};
const port = arg('--port') === undefined ? 8000 : Number(arg('--port'));
const redisUrl = arg('--redis');
if (!Number.isInteger(port) || port < 0 || port > 65535 || (argv.includes('--redis') && !redisUrl)) {
  process.stderr.write('usage: node socketio-server.js [--port PORT] [--redis redis://HOST:PORT]\n');
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, { transports: ['websocket'], maxHttpBufferSize: 2 * 1024 * 1024 });

io.on('connection', (socket) => {
  let count = 0;
  socket.emit('greet', 'hello world');
  socket.on('echo', (data, ack) => {
    if (typeof ack === 'function') ack(data);
  });
  socket.on('ping', () => {
    count += 1;
  });
  socket.on('count', (_data, ack) => {
    if (typeof ack === 'function') ack(count);
  });
  socket.on('subscribe', (channel, ack) => {
    if (typeof channel === 'string') socket.join(channel);
    if (typeof ack === 'function') ack();
  });
  socket.on('unsubscribe', (channel) => {
    if (typeof channel === 'string') socket.leave(channel);
  });
  socket.on('publish', (msg) => {
    if (msg && typeof msg.channel === 'string') io.to(msg.channel).emit('publish', msg);
  });
});

async function useRedis(url) {
  const { createClient } = require('redis');
  const { createShardedAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on('error', (e) => process.stderr.write(`redis: ${e.message}\n`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createShardedAdapter(pubClient, subClient));
}

(redisUrl ? useRedis(redisUrl) : Promise.resolve()).then(
  () => {
    httpServer.listen(port, '127.0.0.1', () => {
      process.stdout.write(`listening on ws://127.0.0.1:${httpServer.address().port}/socket.io/\n`);
    });
  },
  (e) => {
    process.stderr.write(`cannot connect to Redis at ${redisUrl}: ${e.message}\n`);
    process.exit(1);
  },
);

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
