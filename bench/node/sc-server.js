#!/usr/bin/env node
// Benchmark peer: the demo app's benchmark surface (echo, ping/count, subscribe/publish) on the
// real socketcluster-server@20.0.1, written the way a SocketCluster user would write it.
//
// Usage: node sc-server.js [--port 8000]
// Prints `listening on ws://127.0.0.1:PORT/socketcluster/` once it accepts connections.
'use strict';

const http = require('node:http');
const socketClusterServer = require('socketcluster-server');

const port = portArg(process.argv.slice(2), 8000);

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const agServer = socketClusterServer.attach(httpServer, { maxPayload: 2 * 1024 * 1024 });

// Per-socket `ping` counters, kept in the inbound middleware, which sees every packet of a socket in
// arrival order; a `count` invoke carries the value it saw, so the reply counts exactly the pings
// that arrived before it (as in tests/js/reference-server.js).
const pingCounts = new WeakMap();
agServer.setMiddleware(agServer.MIDDLEWARE_INBOUND, async (stream) => {
  for await (const action of stream) {
    if (action.type === action.TRANSMIT && action.receiver === 'ping') {
      pingCounts.set(action.socket, (pingCounts.get(action.socket) || 0) + 1);
      action.allow();
    } else if (action.type === action.INVOKE && action.procedure === 'count') {
      action.allow({ data: pingCounts.get(action.socket) || 0 });
    } else {
      action.allow();
    }
  }
});

(async () => {
  for await (const { socket } of agServer.listener('connection')) {
    socket.transmit('greet', 'hello world');
    (async () => {
      for await (const req of socket.procedure('echo')) req.end(req.data);
    })();
    (async () => {
      for await (const req of socket.procedure('count')) req.end(req.data);
    })();
  }
})();

httpServer.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening on ws://127.0.0.1:${httpServer.address().port}/socketcluster/\n`);
});

function portArg(argv, dflt) {
  const i = argv.indexOf('--port');
  if (i === -1) return dflt;
  const p = Number(argv[i + 1]);
  if (!Number.isInteger(p) || p < 0 || p > 65535) {
    process.stderr.write('usage: node sc-server.js [--port PORT]\n');
    process.exit(2);
  }
  return p;
}

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
