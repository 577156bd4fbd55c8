#!/usr/bin/env node
// Reference implementation of the demo app (../../docs/demo-app.md sections 1-4) on the real
// socketcluster-server@20.0.1. It is the ground truth the conformance suite is validated against,
// and the Node server the Rust client's integration tests start.
//
// Usage: node reference-server.js [--host 127.0.0.1] [--port 8000] [--auth-key KEY]
// Prints `listening on ws://HOST:PORT/socketcluster/` on stdout once it accepts connections.
'use strict';

const http = require('node:http');
const socketClusterServer = require('socketcluster-server');

const USAGE = 'usage: node reference-server.js [--host HOST] [--port PORT] [--auth-key KEY]';

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 8000, authKey: undefined };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const takeValue = () => {
      if (value !== undefined) return value;
      if (i + 1 >= argv.length) fail(`missing value for ${arg}`);
      return argv[++i];
    };
    switch (arg) {
      case '--host':
        opts.host = takeValue();
        break;
      case '--port': {
        const raw = takeValue();
        const port = Number(raw);
        if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid port: ${raw}`);
        opts.port = port;
        break;
      }
      case '--auth-key':
        opts.authKey = takeValue();
        if (opts.authKey === '') fail('--auth-key must not be empty');
        break;
      case '-h':
      case '--help':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default:
        fail(`unknown argument: ${arg}`);
    }
  }
  return opts;
}

function fail(message) {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function appError(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}

const opts = parseArgs(process.argv.slice(2));

const httpServer = http.createServer((req, res) => {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found\n');
});

const agServer = socketClusterServer.attach(httpServer, {
  // Without an auth key socketcluster-server makes a random one per process.
  ...(opts.authKey !== undefined ? { authKey: opts.authKey } : {}),
  maxPayload: 2 * 1024 * 1024,
});

// Per-socket `ping` counters. They are kept in the inbound middleware, which sees every packet of a
// socket strictly in arrival order, and a `count` invoke carries the counter value it saw as its
// data, so a `count` reply reflects exactly the pings that arrived before it.
const pingCounts = new WeakMap();

agServer.setMiddleware(agServer.MIDDLEWARE_INBOUND, async (middlewareStream) => {
  for await (const action of middlewareStream) {
    const socket = action.socket;
    if (action.type === action.TRANSMIT && action.receiver === 'ping') {
      pingCounts.set(socket, (pingCounts.get(socket) || 0) + 1);
      action.allow();
    } else if (action.type === action.INVOKE && action.procedure === 'count') {
      action.allow({ data: pingCounts.get(socket) || 0 });
    } else if (
      action.type === action.SUBSCRIBE &&
      action.channel.startsWith('private/') &&
      !socket.authToken
    ) {
      action.block(appError('ForbiddenError', 'private channel requires authentication'));
    } else {
      action.allow();
    }
  }
});

function handleSocket(socket) {
  socket.transmit('greet', 'hello world');

  (async () => {
    for await (const req of socket.procedure('echo')) {
      req.end(req.data);
    }
  })();
  (async () => {
    for await (const req of socket.procedure('fail')) {
      req.error(appError('BadRequest', 'fail requested'));
    }
  })();
  (async () => {
    for await (const req of socket.procedure('count')) {
      // req.data is the counter value set by the inbound middleware.
      req.end(req.data);
    }
  })();
  (async () => {
    for await (const req of socket.procedure('login')) {
      const data = req.data;
      if (data == null || typeof data !== 'object' || typeof data.username !== 'string') {
        req.error(appError('BadRequest', 'login requires {"username": string}'));
        continue;
      }
      try {
        await socket.setAuthToken({ username: data.username });
      } catch (error) {
        req.error(error);
        continue;
      }
      req.end();
    }
  })();
  (async () => {
    for await (const req of socket.procedure('whoami')) {
      req.end(socket.authToken == null ? null : socket.authToken);
    }
  })();
  (async () => {
    for await (const req of socket.procedure('serverPublish')) {
      const data = req.data;
      if (data == null || typeof data !== 'object' || typeof data.channel !== 'string') {
        req.error(appError('BadRequest', 'serverPublish requires {"channel": string, "data": any}'));
        continue;
      }
      try {
        await agServer.exchange.invokePublish(data.channel, data.data);
      } catch (error) {
        req.error(error);
        continue;
      }
      req.end();
    }
  })();
}

// socketcluster-server emits `connection` again when an open socket sends another #handshake; the
// app is set up once per socket.
const appSockets = new WeakSet();

(async () => {
  for await (const { socket } of agServer.listener('connection')) {
    if (appSockets.has(socket)) continue;
    appSockets.add(socket);
    handleSocket(socket);
  }
})();

(async () => {
  for await (const { error } of agServer.listener('error')) {
    process.stderr.write(`server error: ${error && error.message}\n`);
  }
})();

httpServer.on('error', (error) => {
  process.stderr.write(`error: cannot listen on ${opts.host}:${opts.port}: ${error.message}\n`);
  process.exit(1);
});

httpServer.listen(opts.port, opts.host, () => {
  const { port } = httpServer.address();
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  process.stdout.write(`listening on ws://${host}:${port}/socketcluster/\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
