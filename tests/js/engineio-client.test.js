// The unchanged socketcluster-client v20 over engine.io in Node: the browser module served by the
// worker (/socketcluster-engineio.js) is loaded as a CommonJS module and put in the place of `ws`
// for a separately loaded copy of socketcluster-client. Long-polling only and polling upgraded to
// WebSocket: connect, echo, publish round trip, auth, close codes both ways, and reconnection with
// re-subscription after the server is killed and restarted.
//
// Only our server has the endpoint: with SC_SERVER=reference the file is skipped.
'use strict';

const path = require('node:path');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { HOST, startServer, withTimeout, subscribe, collect, nextEvent } = require('./harness');

const REFERENCE = process.env.SC_SERVER === 'reference';
const TIMEOUT_MS = 10000;

/** Evaluates the module the worker serves, as CommonJS (engine.io-client from node_modules). */
async function loadShim(server) {
  const res = await fetch(`http://${HOST}:${server.port}/socketcluster-engineio.js`);
  assert.equal(res.status, 200);
  const mod = { exports: {} };
  // eslint-disable-next-line no-new-func
  new Function('module', 'exports', 'require', await res.text())(mod, mod.exports, require);
  return mod.exports;
}

/** A fresh copy of socketcluster-client whose `require('ws')` yields `WebSocketImpl`. */
function loadClientWith(WebSocketImpl) {
  const clientDir = path.dirname(require.resolve('socketcluster-client/package.json')) + path.sep;
  const wsPath = require.resolve('ws', { paths: [clientDir] });
  const own = (k) => k.startsWith(clientDir);
  const saved = Object.entries(require.cache).filter(([k]) => own(k) || k === wsPath);
  for (const [k] of saved) delete require.cache[k];
  require.cache[wsPath] = { id: wsPath, filename: wsPath, loaded: true, exports: WebSocketImpl };
  try {
    return require('socketcluster-client');
  } finally {
    for (const k of Object.keys(require.cache)) if (own(k) || k === wsPath) delete require.cache[k];
    for (const [k, v] of saved) require.cache[k] = v;
  }
}

describe('socketcluster-client over engine.io (Node)', { skip: REFERENCE && 'the reference server has no engine.io endpoint' }, () => {
  let server;
  let shim;
  let client;
  const sockets = [];

  const create = (transports, options = {}) => {
    shim.options.transports = transports;
    const socket = client.create({
      hostname: HOST,
      port: server.port,
      autoConnect: false,
      ackTimeout: 5000,
      autoReconnectOptions: { initialDelay: 100, randomness: 100, multiplier: 1.5, maxDelay: 1000 },
      ...options,
    });
    sockets.push(socket);
    return socket;
  };
  const connect = async (transports, options) => {
    const socket = create(transports, options);
    const connected = nextEvent(socket, 'connect', TIMEOUT_MS);
    socket.connect();
    return { socket, status: await connected };
  };

  before(async () => {
    server = await startServer();
    shim = await loadShim(server);
    shim.options.engineIoClient = require('engine.io-client');
    client = loadClientWith(shim.WebSocket);
  });
  after(async () => {
    for (const s of sockets) {
      s.disconnect();
      s.killAllListeners();
      s.closeAllChannels();
    }
    await server.stop();
  });

  for (const transports of [['polling'], ['polling', 'websocket']]) {
    describe(transports.join(' → '), () => {
      let socket;
      before(async () => {
        ({ socket } = await connect(transports));
      });

      it('connects through the shim', () => {
        assert.ok(socket.transport.socket instanceof shim.WebSocket);
        assert.equal(socket.state, socket.OPEN);
      });

      it('echo (100 KB included), fail, count', async () => {
        assert.deepEqual(await socket.invoke('echo', { a: ['é', 1] }), { a: ['é', 1] });
        const big = 'y'.repeat(100 * 1024);
        assert.equal(await socket.invoke('echo', big), big);
        await assert.rejects(socket.invoke('fail', 1), { name: 'BadRequest', message: 'fail requested' });
        for (let i = 0; i < 3; i++) socket.transmit('ping');
        assert.equal(await socket.invoke('count'), 3);
      });

      it('200 invokes in a burst come back in order', async () => {
        const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => socket.invoke('echo', i)));
        assert.deepEqual(replies, Array.from({ length: 200 }, (_, i) => i));
      });

      it('publish round trip and login', async () => {
        const channel = `shim-${transports.join('-')}`;
        const ch = await subscribe(socket, channel);
        const got = collect(ch, 1, TIMEOUT_MS, 'the publish');
        await socket.invokePublish(channel, { via: transports });
        assert.deepEqual(await got, [{ via: transports }]);
        const authed = nextEvent(socket, 'authenticate', TIMEOUT_MS);
        await socket.invoke('login', { username: 'dora' });
        await authed;
        assert.equal(socket.authState, socket.AUTHENTICATED);
        assert.equal((await socket.invoke('whoami')).username, 'dora');
      });

      it('disconnect(code, reason) closes with that code', async () => {
        const closed = nextEvent(socket, 'close', TIMEOUT_MS);
        socket.disconnect(4321, 'bye');
        const { code, reason } = await closed;
        assert.equal(code, 4321);
        assert.equal(reason, 'bye');
      });
    });
  }

  it("a server's close code reaches the client through the in-band close", async () => {
    const { socket } = await connect(['polling']);
    const closed = nextEvent(socket, 'close', TIMEOUT_MS);
    // The server closes a socket whose #authenticate has no cid with 4008.
    socket.transport.socket.send(JSON.stringify({ event: '#authenticate', data: 'x' }));
    const { code } = await closed;
    assert.equal(code, 4008);
  });

  it('reconnects and re-subscribes after the server is killed and restarted', async () => {
    const { socket } = await connect(['polling', 'websocket']);
    const channel = 'shim-restart';
    const ch = await subscribe(socket, channel);
    const closed = nextEvent(socket, 'close', TIMEOUT_MS);
    await server.restart();
    const { code } = await closed;
    assert.ok([1006, 4000].includes(code), `close code ${code}`);
    await nextEvent(ch, 'subscribe', 3 * TIMEOUT_MS);
    const got = collect(ch, 1, TIMEOUT_MS, 'the publish after the restart');
    await socket.invokePublish(channel, 'after');
    assert.deepEqual(await got, ['after']);
  });
});
