// The demo app (../../docs/demo-app.md section 3) through the real socketcluster-client: greet,
// echo, fail, count/ping, unknown invokes, connect/disconnect.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startServer,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  withTimeout,
} = require('./harness');

function nested(depth) {
  let value = { leaf: 'bottom', n: depth };
  for (let i = 0; i < depth; i++) value = i % 2 ? { level: i, child: value } : [i, value];
  return value;
}

describe('demo app via socketcluster-client', () => {
  let server;
  const sockets = [];
  const connect = async (options) => {
    const result = await connectClient(server, options);
    sockets.push(result.socket);
    return result;
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    closeClients(sockets);
    await server.stop();
  });

  it('connect status carries id, pingTimeout 30000 and isAuthenticated false', async () => {
    const { socket, status } = await connect();
    assert.equal(typeof status.id, 'string');
    assert.equal(status.id, socket.id);
    assert.equal(status.pingTimeout, 30000);
    assert.equal(status.isAuthenticated, false);
    assert.equal(socket.state, socket.OPEN);
  });

  it('receives greet "hello world" right after the handshake', async () => {
    const socket = createClient(server);
    sockets.push(socket);
    const greet = withTimeout(socket.receiver('greet').once(), 5000, 'greet');
    socket.connect();
    assert.equal(await greet, 'hello world');
  });

  describe('echo', () => {
    let socket;
    before(async () => {
      ({ socket } = await connect());
    });

    const values = [
      ['a string', 'hello'],
      ['an empty string', ''],
      ['an integer', 42],
      ['a negative float', -3.25],
      ['a large safe integer', Number.MAX_SAFE_INTEGER],
      ['a small float', 1.5e-7],
      ['true', true],
      ['false', false],
      ['null', null],
      ['an empty array', []],
      ['an empty object', {}],
      ['a mixed array', [1, 'two', null, false, { three: [3] }]],
      ['an object', { a: 1, b: { c: [true, null, 'x'] }, 'key with spaces': 'v' }],
      [
        'Unicode text',
        {
          text: 'héllo wörld · 日本語 · 中文 · 한국어 · עברית · العربية · Ελληνικά · Русский',
          emoji: '😀🎉👩‍👩‍👧‍👦🏳️‍🌈',
          combining: 'e\u0301 a\u0308',
          specials: '\u0000\u0001\u001f\u007f\u2028\u2029\ufeff"\\/\b\f\n\r\t',
          astral: '\u{1F600}\u{10FFFF}\u{1D11E}',
          '键': 'ключ',
        },
      ],
      ['data nested 100 levels deep', nested(100)],
      ['an array of 10,000 numbers', Array.from({ length: 10000 }, (_, i) => i * 1.5)],
    ];
    for (const [name, value] of values) {
      it(`returns ${name} unchanged`, async () => {
        assert.deepEqual(await socket.invoke('echo', value), value);
      });
    }

    it('returns a 1.05 MB object unchanged', async () => {
      const value = { blob: 'é'.repeat(200000) + 'z'.repeat(650000), items: Array.from({ length: 1000 }, (_, i) => `item-${i}`) };
      assert.ok(Buffer.byteLength(JSON.stringify(value)) > 1050000);
      const reply = await socket.invoke('echo', value, { ackTimeout: 10000 });
      assert.deepEqual(reply, value);
    });

    it('returns undefined data as undefined (no data key)', async () => {
      assert.equal(await socket.invoke('echo'), undefined);
    });
  });

  describe('fail', () => {
    let socket;
    before(async () => {
      ({ socket } = await connect());
    });
    for (const data of [undefined, null, 1, 'x', { a: [1] }]) {
      it(`rejects with BadRequest / "fail requested" (data ${JSON.stringify(data)})`, async () => {
        await assert.rejects(socket.invoke('fail', data), (err) => {
          assert.equal(err.name, 'BadRequest');
          assert.equal(err.message, 'fail requested');
          return true;
        });
      });
    }
    it('leaves the connection usable', async () => {
      await assert.rejects(socket.invoke('fail'));
      assert.equal(await socket.invoke('echo', 'after-fail'), 'after-fail');
    });
  });

  describe('count and ping', () => {
    it('starts at 0 on a new socket', async () => {
      const { socket } = await connect();
      assert.equal(await socket.invoke('count'), 0);
    });

    it('counts ping transmits in arrival order', async () => {
      const { socket } = await connect();
      for (let i = 0; i < 5; i++) socket.transmit('ping');
      assert.equal(await socket.invoke('count'), 5);
      for (let i = 0; i < 3; i++) socket.transmit('ping');
      assert.equal(await socket.invoke('count'), 8);
    });

    it('interleaved ping / count sees exactly the pings sent before each count', async () => {
      const { socket } = await connect();
      const expected = [];
      const replies = [];
      let pings = 0;
      for (let round = 0; round < 50; round++) {
        const burst = round % 4;
        for (let i = 0; i < burst; i++) {
          socket.transmit('ping');
          pings++;
        }
        expected.push(pings);
        replies.push(socket.invoke('count'));
      }
      assert.deepEqual(await Promise.all(replies), expected);
    });

    it('a client batch [ping, ping, ping, count] is processed in order', async () => {
      const { socket } = await connect();
      const sent = [];
      const ws = socket.transport.socket;
      const send = ws.send.bind(ws);
      ws.send = (data, ...rest) => {
        sent.push(data);
        return send(data, ...rest);
      };
      socket.startBatching();
      socket.transmit('ping');
      socket.transmit('ping');
      socket.transmit('ping');
      const count = socket.invoke('count');
      const echo = socket.invoke('echo', 'batched');
      socket.stopBatching();
      assert.equal(await count, 3);
      assert.equal(await echo, 'batched');
      // The five packets went out as one JSON array frame.
      const batches = sent.filter((f) => typeof f === 'string' && f.startsWith('['));
      assert.equal(batches.length, 1, JSON.stringify(sent));
      assert.equal(JSON.parse(batches[0]).length, 5);
    });

    it('other transmits and ping data do not change the count; counters are per socket', async () => {
      const { socket: a } = await connect();
      const { socket: b } = await connect();
      a.transmit('ping', { any: 'data' });
      a.transmit('pong');
      a.transmit('count');
      a.transmit('unknown', 1);
      b.transmit('ping');
      b.transmit('ping');
      assert.equal(await a.invoke('count'), 1);
      assert.equal(await b.invoke('count'), 2);
    });

    it('a reconnected socket starts at 0 again', async () => {
      const { socket } = await connect();
      socket.transmit('ping');
      socket.transmit('ping');
      assert.equal(await socket.invoke('count'), 2);
      socket.disconnect();
      const reconnected = nextEvent(socket, 'connect');
      socket.connect();
      await reconnected;
      assert.equal(await socket.invoke('count'), 0);
    });
  });

  describe('unknown invokes', () => {
    for (const name of ['noSuchProcedure', '#noSuchProcedure']) {
      it(`"${name}" gets no reply (client times out) and the connection stays usable`, async () => {
        const { socket } = await connect();
        await assert.rejects(socket.invoke(name, { x: 1 }, { ackTimeout: 500 }), (err) => {
          assert.equal(err.name, 'TimeoutError');
          return true;
        });
        assert.equal(socket.state, socket.OPEN);
        assert.equal(await socket.invoke('echo', 'usable'), 'usable');
      });
    }

    it('an unknown transmit is ignored', async () => {
      const { socket } = await connect();
      socket.transmit('noSuchReceiver', { x: 1 });
      socket.transmit('#noSuchReceiver', 1);
      assert.equal(await socket.invoke('echo', 'usable'), 'usable');
    });
  });

  describe('disconnect', () => {
    it('disconnect() closes with 1000, does not reconnect, and a later connect() gets a new id', async () => {
      const { socket } = await connect();
      const firstId = socket.id;
      const disconnected = nextEvent(socket, 'disconnect');
      socket.disconnect();
      const { code } = await disconnected;
      assert.equal(code, 1000);
      assert.equal(socket.state, socket.CLOSED);
      assert.equal(socket.pendingReconnect, false);
      // Bounded negative window: with reconnect delays of 100-200 ms a reconnect would start here.
      const reconnecting = nextEvent(socket, 'connecting', 600).then(
        () => true,
        () => false
      );
      assert.equal(await reconnecting, false, 'client reconnected after disconnect()');
      assert.equal(socket.state, socket.CLOSED);

      const connected = nextEvent(socket, 'connect');
      socket.connect();
      const status = await connected;
      assert.notEqual(status.id, firstId);
      assert.equal(await socket.invoke('echo', 'again'), 'again');
    });
  });
});
