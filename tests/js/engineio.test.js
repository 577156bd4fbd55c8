// The engine.io endpoint (../../docs/demo-app.md section 5) with the real engine.io-client 6: the
// demo app's protocol over long-polling only, WebSocket only, and polling upgraded to WebSocket;
// ordering across the upgrade; one exchange and one token key for both endpoints; the in-band
// close.
//
// Only our server has this endpoint: with SC_SERVER=reference the file is skipped.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Socket } = require('engine.io-client');
const WebSocket = require('ws');
const {
  HOST,
  startServer,
  connectClient,
  closeClients,
  subscribe,
  collect,
  withTimeout,
  jwtPayload,
} = require('./harness');

const REFERENCE = process.env.SC_SERVER === 'reference';
const TIMEOUT_MS = 10000;
const CLOSE_PREFIX = '#close:';

/** A SocketCluster client speaking raw protocol frames over one engine.io-client socket. */
class EioClient {
  constructor(server, transports, options = {}) {
    this.frames = [];
    this.waiters = [];
    this.cid = 0;
    this.closed = null;
    this.upgraded = null;
    this.inBandClose = null;
    this.socket = new Socket(`http://${HOST}:${server.port}`, {
      path: '/engine.io/',
      transports,
      ...options,
    });
    this.opened = withTimeout(
      new Promise((resolve, reject) => {
        this.socket.once('open', resolve);
        this.socket.once('error', reject);
      }),
      TIMEOUT_MS,
      'engine.io open'
    );
    this.upgraded = new Promise((resolve) => this.socket.once('upgrade', (t) => resolve(t.name)));
    this.closed = new Promise((resolve) =>
      this.socket.once('close', (reason, description) => resolve({ reason, description }))
    );
    this.socket.on('message', (data) => this._onMessage(data));
  }

  _onMessage(data) {
    if (typeof data === 'string' && data.startsWith(CLOSE_PREFIX)) {
      this.inBandClose = JSON.parse(data.slice(CLOSE_PREFIX.length));
      this.socket.close();
      return;
    }
    // The SocketCluster ping of protocol v2 is an empty message: answer it like the client does.
    // (engine.io-client decodes an empty message as undefined.)
    if (data === '' || data === undefined) {
      this.socket.send('');
      return;
    }
    const frame = JSON.parse(data);
    this.frames.push(frame);
    for (const w of [...this.waiters]) {
      const idx = this.frames.findIndex(w.match);
      if (idx !== -1) {
        const [hit] = this.frames.splice(idx, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  }

  /** The next frame matching `match` (already received ones first). */
  next(match, what = 'a frame', ms = TIMEOUT_MS) {
    const idx = this.frames.findIndex(match);
    if (idx !== -1) return Promise.resolve(this.frames.splice(idx, 1)[0]);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { match, resolve };
      this.waiters.push(waiter);
    });
    return withTimeout(p, ms, what).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i !== -1) this.waiters.splice(i, 1);
    });
  }

  event(name, ms) {
    return this.next((f) => f.event === name, `event ${name}`, ms);
  }

  send(packet) {
    this.socket.send(JSON.stringify(packet));
  }

  transmit(event, data) {
    this.send(data === undefined ? { event } : { event, data });
  }

  /** Sends an invoke and resolves with its `{rid, data|error}` response. */
  invoke(event, data, ms) {
    const cid = ++this.cid;
    this.send(data === undefined ? { event, cid } : { event, data, cid });
    return this.next((f) => f.rid === cid, `the reply to ${event} (cid ${cid})`, ms);
  }

  async handshake(authToken = null) {
    await this.opened;
    const reply = await this.invoke('#handshake', { authToken });
    assert.equal(reply.error, undefined, JSON.stringify(reply.error));
    return reply.data;
  }

  close() {
    this.socket.close();
  }
}

function eioClient(server, transports, options) {
  const c = new EioClient(server, transports, options);
  return c;
}

/** GET/POST on the engine.io path; resolves with { status, text }. */
async function http(server, method, query, body) {
  const res = await fetch(`http://${HOST}:${server.port}/engine.io/?${query}`, {
    method,
    body,
    headers: body ? { 'content-type': 'text/plain;charset=UTF-8' } : undefined,
  });
  return { status: res.status, text: await res.text() };
}

const MODES = [
  { name: 'long-polling only', transports: ['polling'], upgrade: false },
  { name: 'WebSocket only', transports: ['websocket'], upgrade: false },
  { name: 'polling upgraded to WebSocket', transports: ['polling', 'websocket'], upgrade: true },
];

describe('engine.io endpoint', { skip: REFERENCE && 'the reference server has no engine.io endpoint' }, () => {
  let server;
  const clients = [];
  const scSockets = [];
  const open = (transports, options) => {
    const c = eioClient(server, transports, options);
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    for (const c of clients) c.close();
    closeClients(scSockets);
    await server.stop();
  });

  describe('open packet', () => {
    it('polling: sid, upgrades ["websocket"], pingInterval 25000, pingTimeout 20000, maxPayload 1000000', async () => {
      const { status, text } = await http(server, 'GET', 'EIO=4&transport=polling');
      assert.equal(status, 200);
      assert.equal(text[0], '0');
      const open = JSON.parse(text.slice(1));
      assert.equal(typeof open.sid, 'string');
      assert.deepEqual(open.upgrades, ['websocket']);
      assert.equal(open.pingInterval, 25000);
      assert.equal(open.pingTimeout, 20000);
      assert.equal(open.maxPayload, 1000000);
      // Close it: a close packet in a POST.
      const closed = await http(server, 'POST', `EIO=4&transport=polling&sid=${open.sid}`, '1');
      assert.equal(closed.status, 200);
    });

    it('websocket: upgrades []', async () => {
      const ws = new WebSocket(`ws://${HOST}:${server.port}/engine.io/?EIO=4&transport=websocket`);
      const first = await withTimeout(
        new Promise((resolve, reject) => {
          ws.once('message', (d) => resolve(String(d)));
          ws.once('error', reject);
        }),
        TIMEOUT_MS,
        'the open packet'
      );
      ws.close();
      assert.equal(first[0], '0');
      const open = JSON.parse(first.slice(1));
      assert.deepEqual(open.upgrades, []);
      assert.equal(open.pingInterval, 25000);
      assert.equal(open.pingTimeout, 20000);
      assert.equal(open.maxPayload, 1000000);
    });
  });

  for (const mode of MODES) {
    describe(mode.name, () => {
      let c;
      before(async () => {
        c = open(mode.transports, { upgrade: mode.upgrade });
        await c.opened;
        if (mode.upgrade) {
          assert.equal(await withTimeout(c.upgraded, TIMEOUT_MS, 'the upgrade'), 'websocket');
        }
      });

      it('runs on the expected transport', () => {
        assert.equal(c.socket.transport.name, mode.transports.at(-1));
      });

      it('handshake reply: id, pingTimeout 30000, isAuthenticated false; then greet', async () => {
        const status = await c.handshake();
        assert.equal(typeof status.id, 'string');
        assert.equal(status.pingTimeout, 30000);
        assert.equal(status.isAuthenticated, false);
        const greet = await c.event('greet');
        assert.equal(greet.data, 'hello world');
      });

      it('echo: values unchanged, 100 KB included', async () => {
        for (const v of [1, 'héllo ✓ 𝄞', null, true, { a: [1, { b: 'c' }] }, [[], {}]]) {
          assert.deepEqual((await c.invoke('echo', v)).data, v);
        }
        const big = 'x'.repeat(100 * 1024);
        const reply = await c.invoke('echo', { big });
        assert.equal(reply.data.big, big);
      });

      it('fail: BadRequest', async () => {
        const reply = await c.invoke('fail', 1);
        assert.equal(reply.error.name, 'BadRequest');
        assert.equal(reply.error.message, 'fail requested');
      });

      it('ping/count', async () => {
        const before = (await c.invoke('count')).data;
        for (let i = 0; i < 5; i++) c.transmit('ping');
        assert.equal((await c.invoke('count')).data, before + 5);
      });

      it('login/whoami', async () => {
        assert.equal((await c.invoke('whoami')).data, null);
        const tokenFrame = c.event('#setAuthToken');
        const reply = await c.invoke('login', { username: 'alice' });
        assert.equal(reply.error, undefined);
        const { data } = await tokenFrame;
        assert.equal(jwtPayload(data.token).username, 'alice');
        assert.equal((await c.invoke('whoami')).data.username, 'alice');
      });

      it('subscribe/publish', async () => {
        const channel = `eio-${mode.transports.join('-')}`;
        const sub = await c.invoke('#subscribe', { channel });
        assert.equal(sub.error, undefined);
        const got = c.next((f) => f.event === '#publish' && f.data.channel === channel, 'the #publish');
        const pub = await c.invoke('#publish', { channel, data: { n: 1 } });
        assert.equal(pub.error, undefined);
        assert.deepEqual((await got).data, { channel, data: { n: 1 } });
      });

      it('private/ channels need authentication (already logged in: allowed)', async () => {
        const sub = await c.invoke('#subscribe', { channel: 'private/eio' });
        assert.equal(sub.error, undefined);
      });
    });
  }

  it('private/ subscribe is rejected before login', async () => {
    const c = open(['polling']);
    await c.handshake();
    const sub = await c.invoke('#subscribe', { channel: 'private/x' });
    assert.equal(sub.error.name, 'ForbiddenError');
  });

  it('hundreds of messages sent during the upgrade arrive complete and in order', async () => {
    const c = open(['polling', 'websocket']);
    const channel = 'eio-upgrade-order';
    await c.opened;
    assert.equal(c.socket.transport.name, 'polling');
    // The handshake and the subscription go first; the burst follows without waiting, so it
    // runs while engine.io probes and switches to WebSocket.
    const hs = c.invoke('#handshake', { authToken: null });
    const sub = c.invoke('#subscribe', { channel });
    const firstCid = c.cid + 1;
    let cidAtUpgrade = null;
    c.upgraded.then(() => {
      cidAtUpgrade = c.cid;
    });
    const pending = [];
    let n = 0;
    // Batches of 20 on successive turns of the event loop, until the switch was seen and 300
    // more went after it (bounded).
    while (n < 10000 && (cidAtUpgrade === null || c.cid - cidAtUpgrade < 300)) {
      for (let k = 0; k < 20; k++, n++) {
        pending.push(c.invoke('echo', { seq: n }));
        c.transmit('ping');
        c.send({ event: '#publish', data: { channel, data: n } });
      }
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal((await hs).error, undefined);
    assert.equal((await sub).error, undefined);
    assert.ok(cidAtUpgrade > firstCid, `the switch came after the burst began (${cidAtUpgrade} > ${firstCid})`);
    assert.ok(n >= 320, `${n} messages of each kind`);
    const replies = await withTimeout(Promise.all(pending), 30000, `${n} echo replies`);
    assert.deepEqual(
      replies.map((r) => r.data.seq),
      Array.from({ length: n }, (_, i) => i)
    );
    const publishes = [];
    for (let i = 0; i < n; i++) {
      publishes.push(await c.next((f) => f.event === '#publish' && f.data.channel === channel, `publish ${i}`));
    }
    assert.deepEqual(
      publishes.map((p) => p.data.data),
      Array.from({ length: n }, (_, i) => i)
    );
    assert.equal((await c.invoke('count')).data, n);
    assert.equal(c.socket.transport.name, 'websocket');
  });

  it('a socketcluster-client publish reaches an engine.io subscriber, and back', async () => {
    const channel = 'eio-cross';
    const c = open(['polling']);
    await c.handshake();
    assert.equal((await c.invoke('#subscribe', { channel })).error, undefined);
    const { socket } = await connectClient(server);
    scSockets.push(socket);
    const ch = await subscribe(socket, channel);
    const atEio = c.next((f) => f.event === '#publish' && f.data.data.from === 'ws', 'the ws publish');
    const atWs = collect(ch, 2, TIMEOUT_MS, 'publishes at the ws subscriber');
    await socket.invokePublish(channel, { from: 'ws' });
    assert.deepEqual((await atEio).data, { channel, data: { from: 'ws' } });
    assert.equal((await c.invoke('#publish', { channel, data: { from: 'eio' } })).error, undefined);
    assert.deepEqual(await atWs, [{ from: 'ws' }, { from: 'eio' }]);
  });

  it('serverPublish from an engine.io socket reaches a WebSocket subscriber', async () => {
    const channel = 'eio-server-publish';
    const { socket } = await connectClient(server);
    scSockets.push(socket);
    const ch = await subscribe(socket, channel);
    const got = collect(ch, 1, TIMEOUT_MS, 'the server publish');
    const c = open(['polling']);
    await c.handshake();
    assert.equal((await c.invoke('serverPublish', { channel, data: 'from-eio' })).error, undefined);
    assert.deepEqual(await got, ['from-eio']);
  });

  it('a token issued over engine.io is accepted by #authenticate on /socketcluster/', async () => {
    const c = open(['polling']);
    await c.handshake();
    const tokenFrame = c.event('#setAuthToken');
    await c.invoke('login', { username: 'bob' });
    const { token } = (await tokenFrame).data;
    const { socket } = await connectClient(server);
    scSockets.push(socket);
    const result = await socket.authenticate(token);
    assert.equal(result.isAuthenticated, true);
    assert.equal((await socket.invoke('whoami')).username, 'bob');
  });

  it('a token from /socketcluster/ is accepted in the engine.io #handshake', async () => {
    const { socket } = await connectClient(server);
    scSockets.push(socket);
    await socket.invoke('login', { username: 'carol' });
    const token = socket.signedAuthToken || (await withTimeout(
      new Promise((resolve) => {
        (async () => {
          for await (const { signedAuthToken } of socket.listener('authenticate')) {
            resolve(signedAuthToken);
            break;
          }
        })();
      }),
      TIMEOUT_MS,
      'the token'
    ));
    const c = open(['polling']);
    const status = await c.handshake(token);
    assert.equal(status.isAuthenticated, true);
    assert.equal((await c.invoke('whoami')).data.username, 'carol');
  });

  describe('in-band close', () => {
    for (const transports of [['polling'], ['websocket']]) {
      it(`${transports[0]}: a #handshake without cid gets #close 4008, then the engine.io close`, async () => {
        const c = open(transports);
        await c.opened;
        c.transmit('#handshake', { authToken: null });
        const closed = await withTimeout(c.closed, TIMEOUT_MS, 'the close');
        assert.equal(c.inBandClose.code, 4008);
        assert.equal(typeof c.inBandClose.reason, 'string');
        assert.ok(closed.reason);
      });

      it(`${transports[0]}: a message before the handshake gets #close 4009`, async () => {
        const c = open(transports);
        await c.opened;
        c.transmit('ping');
        await withTimeout(c.closed, TIMEOUT_MS, 'the close');
        assert.equal(c.inBandClose.code, 4009);
      });
    }

    it('a client #close ends the socket with that code (the server answers with it)', async () => {
      const c = open(['polling']);
      await c.handshake();
      c.socket.send(`${CLOSE_PREFIX}${JSON.stringify({ code: 4500, reason: 'bye' })}`);
      await withTimeout(c.closed, TIMEOUT_MS, 'the close');
      assert.equal(c.inBandClose.code, 4500);
    });
  });

  it('an unknown sid is refused', async () => {
    const { status } = await http(server, 'GET', 'EIO=4&transport=polling&sid=nope');
    assert.equal(status, 400);
  });
});
