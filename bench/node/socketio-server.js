#!/usr/bin/env node
// Benchmark peer: the demo app on socket.io 4.8 (WebSocket transport), with the same events as the
// SocketCluster app and rooms for channels:
//   echo (ack: the data back), ping (no ack: count it), count (ack: pings so far),
//   subscribe (channel name; joins the room; ack), unsubscribe (leaves the room),
//   publish ({channel, data}: every socket in the room gets `publish` {channel, data}).
//
// Usage: node socketio-server.js [--port 8000]
// Prints `listening on ws://127.0.0.1:PORT/socket.io/` once it accepts connections.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const argv = process.argv.slice(2);
const at = argv.indexOf('--port');
const port = at === -1 ? 8000 : Number(argv[at + 1]);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write('usage: node socketio-server.js [--port PORT]\n');
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

httpServer.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening on ws://127.0.0.1:${httpServer.address().port}/socket.io/\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
