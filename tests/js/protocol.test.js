// Frame-level conformance (../../docs/demo-app.md sections 2 and 4): exact JSON frames over a raw
// WebSocket.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, RawClient, jwtPayload, uniqueChannel } = require('./harness');

describe('wire protocol (raw frames)', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  describe('handshake', () => {
    it('replies {rid, data:{id, pingTimeout:30000, isAuthenticated:false}} without authError', async () => {
      const raw = await RawClient.open(server);
      raw.sendJson({ event: '#handshake', data: { authToken: null }, cid: 7 });
      const reply = await raw.next();
      assert.deepEqual(Object.keys(reply).sort(), ['data', 'rid']);
      assert.equal(reply.rid, 7);
      assert.equal(typeof reply.data.id, 'string');
      assert.ok(reply.data.id.length > 0);
      assert.equal(reply.data.pingTimeout, 30000);
      assert.equal(reply.data.isAuthenticated, false);
      assert.equal('authError' in reply.data, false);
      raw.close();
    });

    it('transmits greet "hello world" right after the handshake reply', async () => {
      const raw = await RawClient.open(server);
      raw.sendJson({ event: '#handshake', data: { authToken: null }, cid: 1 });
      const first = await raw.next();
      assert.equal(first.rid, 1);
      const second = await raw.next();
      assert.deepEqual(second, { event: 'greet', data: 'hello world' });
      raw.close();
    });

    it('gives every socket a distinct id', async () => {
      const ids = new Set();
      const clients = [];
      for (let i = 0; i < 5; i++) {
        const [raw, reply] = await RawClient.connect(server);
        clients.push(raw);
        ids.add(reply.data.id);
      }
      assert.equal(ids.size, 5);
      clients.forEach((c) => c.close());
    });

    it('accepts a query string on the /socketcluster/ path', async () => {
      const raw = await RawClient.open(server, { path: '/socketcluster/?foo=bar&x=1' });
      const reply = await raw.handshake();
      assert.equal(reply.data.isAuthenticated, false);
      raw.close();
    });

    it('refuses the WebSocket upgrade on another path', async () => {
      await assert.rejects(RawClient.open(server, { path: '/not-socketcluster/' }));
    });
  });

  describe('invoke, transmit and batch', () => {
    it('answers an invoke {event,data,cid} with {rid,data}', async () => {
      const [raw] = await RawClient.connect(server);
      raw.sendJson({ event: 'echo', data: { a: [1, 'two', null, true] }, cid: 42 });
      const reply = await raw.nextMatching((p) => p.rid === 42);
      assert.deepEqual(reply, { rid: 42, data: { a: [1, 'two', null, true] } });
      raw.close();
    });

    it('answers an error invoke with {rid,error:{name,message}}', async () => {
      const [raw] = await RawClient.connect(server);
      const reply = await raw.invoke('fail', { x: 1 }, 3);
      assert.equal(reply.rid, 3);
      assert.equal(reply.error.name, 'BadRequest');
      assert.equal(reply.error.message, 'fail requested');
      assert.equal('data' in reply, false);
      raw.close();
    });

    it('does not answer a transmit (a later invoke reply is the next frame)', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.sendJson({ event: 'echo', data: 'transmitted' });
      raw.sendJson({ event: 'ping' });
      raw.sendJson({ event: 'echo', data: 'marker', cid: 2 });
      assert.deepEqual(await raw.next(), { rid: 2, data: 'marker' });
      raw.close();
    });

    it('processes a batch [packet, ...] in order as separate frames', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.sendJson([
        { event: 'ping' },
        { event: 'ping' },
        { event: 'count', cid: 5 },
        { event: 'ping' },
        { event: 'count', cid: 6 },
        { event: 'echo', data: 'batched', cid: 7 },
      ]);
      const replies = [await raw.next(), await raw.next(), await raw.next()];
      replies.sort((a, b) => a.rid - b.rid);
      assert.deepEqual(replies, [
        { rid: 5, data: 2 },
        { rid: 6, data: 3 },
        { rid: 7, data: 'batched' },
      ]);
      raw.close();
    });

    it('replies with no data key for procedures that return nothing (login, serverPublish)', async () => {
      const [raw] = await RawClient.connect(server);
      const login = await raw.invoke('login', { username: 'raw-user' }, 2);
      assert.deepEqual(login, { rid: 2 });
      const pub = await raw.invoke('serverPublish', { channel: uniqueChannel(), data: 1 }, 3);
      assert.deepEqual(pub, { rid: 3 });
      raw.close();
    });
  });

  describe('channels', () => {
    it('#subscribe is answered {rid}; #publish reaches the subscribed publisher as {event:"#publish",data:{channel,data}}', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel();
      assert.deepEqual(await raw.invoke('#subscribe', { channel }, 2), { rid: 2 });
      raw.sendJson({ event: '#publish', data: { channel, data: { n: 1 } } });
      const msg = await raw.nextMatching((p) => p.event === '#publish');
      assert.deepEqual(msg, { event: '#publish', data: { channel, data: { n: 1 } } });
      raw.close();
    });

    it('invoke #publish is answered {"rid":N}', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel();
      await raw.invoke('#subscribe', { channel }, 2);
      raw.sendJson({ event: '#publish', data: { channel, data: 'x' }, cid: 3 });
      const got = [await raw.next(), await raw.next()];
      const reply = got.find((p) => p.rid === 3);
      const pub = got.find((p) => p.event === '#publish');
      assert.deepEqual(reply, { rid: 3 });
      assert.deepEqual(pub, { event: '#publish', data: { channel, data: 'x' } });
      raw.close();
    });

    it('#subscribe accepts waitForAuth and data fields', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel();
      const reply = await raw.invoke('#subscribe', { channel, waitForAuth: false, data: { k: 1 } }, 2);
      assert.deepEqual(reply, { rid: 2 });
      raw.close();
    });

    it('#unsubscribe (transmit, bare string) stops delivery; a later marker still arrives', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel();
      const marker = uniqueChannel('marker');
      await raw.invoke('#subscribe', { channel }, 2);
      await raw.invoke('#subscribe', { channel: marker }, 3);
      raw.sendJson({ event: '#unsubscribe', data: channel });
      raw.sendJson({ event: '#publish', data: { channel, data: 'after-unsubscribe' } });
      raw.sendJson({ event: '#publish', data: { channel: marker, data: 'marker' } });
      const next = await raw.nextMatching((p) => p.event === '#publish');
      assert.deepEqual(next, { event: '#publish', data: { channel: marker, data: 'marker' } });
      raw.close();
    });

    it('#subscribe to private/ unauthenticated: {rid, error:{name:"ForbiddenError", message}}', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel('private/raw');
      const reply = await raw.invoke('#subscribe', { channel }, 2);
      assert.equal(reply.rid, 2);
      assert.equal(reply.error.name, 'ForbiddenError');
      assert.equal(reply.error.message, 'private channel requires authentication');
      assert.equal('data' in reply, false);
      await raw.invoke('login', { username: 'raw-member' }, 3);
      assert.deepEqual(await raw.invoke('#subscribe', { channel }, 4), { rid: 4 });
      raw.close();
    });

    it('a double #subscribe still delivers each publish once', async () => {
      const [raw] = await RawClient.connect(server);
      const channel = uniqueChannel();
      await raw.invoke('#subscribe', { channel }, 2);
      await raw.invoke('#subscribe', { channel }, 3);
      // The end marker goes to the same channel: order is kept within a channel (not across
      // channels once a store carries them), so a second copy of 'once' would come before it.
      raw.sendJson({ event: '#publish', data: { channel, data: 'once' } });
      raw.sendJson({ event: '#publish', data: { channel, data: 'end' } });
      const first = await raw.nextMatching((p) => p.event === '#publish');
      const second = await raw.nextMatching((p) => p.event === '#publish');
      assert.deepEqual(first.data, { channel, data: 'once' });
      assert.deepEqual(second.data, { channel, data: 'end' });
      raw.close();
    });
  });

  describe('auth frames', () => {
    it('login sends #setAuthToken {token: JWT} whose payload is {username, iat, exp}', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.sendJson({ event: 'login', data: { username: 'alice' }, cid: 2 });
      const frames = [await raw.next(), await raw.next()];
      const reply = frames.find((p) => p.rid === 2);
      const set = frames.find((p) => p.event === '#setAuthToken');
      assert.deepEqual(reply, { rid: 2 });
      assert.ok(set, `no #setAuthToken in ${JSON.stringify(frames)}`);
      assert.deepEqual(Object.keys(set.data), ['token']);
      assert.equal(set.data.token.split('.').length, 3);
      const payload = jwtPayload(set.data.token);
      assert.equal(payload.username, 'alice');
      assert.equal(typeof payload.iat, 'number');
      assert.equal(typeof payload.exp, 'number');
      assert.ok(payload.exp > payload.iat);
      const who = await raw.invoke('whoami', undefined, 3);
      assert.equal(who.data.username, 'alice');
      raw.close();
    });

    it('#authenticate with a token the server signed: {isAuthenticated:true, authError:null}', async () => {
      const [a] = await RawClient.connect(server);
      a.sendJson({ event: 'login', data: { username: 'carol' }, cid: 2 });
      const set = await a.nextMatching((p) => p.event === '#setAuthToken');
      const [b] = await RawClient.connect(server);
      assert.equal((await b.invoke('whoami', undefined, 2)).data, null);
      const reply = await b.invoke('#authenticate', set.data.token, 3);
      assert.deepEqual(reply, { rid: 3, data: { isAuthenticated: true, authError: null } });
      const who = await b.invoke('whoami', undefined, 4);
      assert.equal(who.data.username, 'carol');
      a.close();
      b.close();
    });

    it('#authenticate with a bad token: error AuthTokenInvalidError, then #removeAuthToken', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.sendJson({ event: '#authenticate', data: 'not-a-jwt', cid: 2 });
      const frames = [await raw.next(), await raw.next()];
      const reply = frames.find((p) => p.rid === 2);
      assert.ok(reply, `no reply in ${JSON.stringify(frames)}`);
      assert.equal(reply.error.name, 'AuthTokenInvalidError');
      assert.ok(frames.some((p) => p.event === '#removeAuthToken'), JSON.stringify(frames));
      assert.equal((await raw.invoke('whoami', undefined, 3)).data, null);
      raw.close();
    });

    it('#removeAuthToken from the client deauthenticates the socket', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.invoke('login', { username: 'dave' }, 2);
      assert.equal((await raw.invoke('whoami', undefined, 3)).data.username, 'dave');
      raw.sendJson({ event: '#removeAuthToken' });
      assert.equal((await raw.invoke('whoami', undefined, 4)).data, null);
      raw.close();
    });
  });

  describe('odd input after the handshake', () => {
    const oddFrames = [
      ['non-JSON text', 'hello, not json'],
      ['broken JSON', '{"event":"echo",'],
      ['{}', '{}'],
      ['42', '42'],
      ['"s"', '"s"'],
      ['null', 'null'],
      ['{"event":5}', '{"event":5}'],
      ['{"rid":99999}', '{"rid":99999}'],
      ['[]', '[]'],
      ['{"event":null,"cid":1}', '{"event":null,"cid":1}'],
    ];
    for (const [name, frame] of oddFrames) {
      it(`ignores ${name}; the connection stays usable`, async () => {
        const [raw] = await RawClient.connect(server);
        await raw.nextMatching((p) => p.event === 'greet');
        raw.send(frame);
        raw.sendJson({ event: 'echo', data: 'still-alive', cid: 2 });
        // The echo reply is the very next frame: nothing was sent in response to the odd frame.
        assert.deepEqual(await raw.next(), { rid: 2, data: 'still-alive' });
        raw.close();
      });
    }

    it('ignores a binary frame of non-JSON bytes; the connection stays usable', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.send(Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x7b, 0x01]), { binary: true });
      raw.sendJson({ event: 'echo', data: 'after-binary', cid: 2 });
      assert.deepEqual(await raw.next(), { rid: 2, data: 'after-binary' });
      raw.close();
    });

    it('survives JSON nested 100,000 levels deep (array and object)', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      const depth = 100000;
      raw.send('['.repeat(depth) + ']'.repeat(depth));
      raw.send('{"a":'.repeat(depth) + '1' + '}'.repeat(depth));
      raw.send('{"event":"echo","cid":9,"data":' + '['.repeat(depth) + ']'.repeat(depth) + '}');
      raw.sendJson({ event: 'echo', data: 'after-deep', cid: 2 });
      const reply = await raw.nextMatching((p) => p.rid === 2, 10000);
      assert.deepEqual(reply, { rid: 2, data: 'after-deep' });
      raw.close();
    });

    it('a second #handshake after the handshake leaves the connection usable', async () => {
      const [raw, first] = await RawClient.connect(server);
      raw.sendJson({ event: '#handshake', data: { authToken: null }, cid: 2 });
      raw.sendJson({ event: 'echo', data: 'after-second-handshake', cid: 3 });
      const reply = await raw.nextMatching((p) => p.rid === 3);
      assert.deepEqual(reply, { rid: 3, data: 'after-second-handshake' });
      assert.equal(typeof first.data.id, 'string');
      raw.close();
    });

    it('ignores an unknown invoke, #-prefixed or not (no reply); the connection stays usable', async () => {
      const [raw] = await RawClient.connect(server);
      await raw.nextMatching((p) => p.event === 'greet');
      raw.sendJson({ event: 'no-such-procedure', data: 1, cid: 2 });
      raw.sendJson({ event: '#no-such-procedure', data: 1, cid: 3 });
      raw.sendJson({ event: 'unknownTransmit', data: 1 });
      raw.sendJson({ event: 'echo', data: 'usable', cid: 4 });
      assert.deepEqual(await raw.next(), { rid: 4, data: 'usable' });
      raw.close();
    });

    const invalidActions = [
      ['#publish without data', { event: '#publish', cid: 2 }],
      ['#publish with null data', { event: '#publish', data: null, cid: 2 }],
      ['#publish without channel', { event: '#publish', data: { data: 1 }, cid: 2 }],
      ['#publish with a numeric channel', { event: '#publish', data: { channel: 5, data: 1 }, cid: 2 }],
      ['#subscribe without data', { event: '#subscribe', cid: 2 }],
      ['#subscribe without channel', { event: '#subscribe', data: {}, cid: 2 }],
      ['#subscribe with an array channel', { event: '#subscribe', data: { channel: ['a'] }, cid: 2 }],
      ['#subscribe with a string as data', { event: '#subscribe', data: 'chan', cid: 2 }],
      ['#unsubscribe invoke with numeric data', { event: '#unsubscribe', data: 5, cid: 2 }],
      ['#unsubscribe invoke with object data', { event: '#unsubscribe', data: { channel: 'a' }, cid: 2 }],
      ['#unsubscribe invoke with null data', { event: '#unsubscribe', data: null, cid: 2 }],
    ];
    for (const [name, packet] of invalidActions) {
      it(`${name} is answered with InvalidActionError`, async () => {
        const [raw] = await RawClient.connect(server);
        raw.sendJson(packet);
        const reply = await raw.nextMatching((p) => p.rid === 2);
        assert.equal(reply.error && reply.error.name, 'InvalidActionError', JSON.stringify(reply));
        assert.equal(typeof reply.error.message, 'string');
        assert.equal((await raw.invoke('echo', 'ok', 3)).data, 'ok');
        raw.close();
      });
    }
  });

  describe('before the handshake', () => {
    const early = [
      ["the ping ''", ''],
      ['an invoke', JSON.stringify({ event: 'echo', data: 1, cid: 1 })],
      ['a transmit', JSON.stringify({ event: 'ping' })],
      ['#publish', JSON.stringify({ event: '#publish', data: { channel: 'c', data: 1 } })],
      ['#subscribe', JSON.stringify({ event: '#subscribe', data: { channel: 'c' }, cid: 1 })],
      ['#authenticate', JSON.stringify({ event: '#authenticate', data: 'x', cid: 1 })],
      ['#removeAuthToken', JSON.stringify({ event: '#removeAuthToken' })],
      ['non-JSON text', 'hello'],
      ['{}', '{}'],
      ['null', 'null'],
      ['{"rid":1}', '{"rid":1}'],
      ['a batch', JSON.stringify([{ event: 'ping' }])],
    ];
    for (const [name, frame] of early) {
      it(`${name} closes the socket with 4009`, async () => {
        const raw = await RawClient.open(server);
        raw.send(frame);
        const { code } = await raw.waitClose();
        assert.equal(code, 4009);
      });
    }

    it('#handshake without cid closes with 4008', async () => {
      const raw = await RawClient.open(server);
      raw.sendJson({ event: '#handshake', data: { authToken: null } });
      const { code } = await raw.waitClose();
      assert.equal(code, 4008);
    });

    it('#handshake with a string cid closes with 4008', async () => {
      const raw = await RawClient.open(server);
      raw.sendJson({ event: '#handshake', data: { authToken: null }, cid: '1' });
      const { code } = await raw.waitClose();
      assert.equal(code, 4008);
    });
  });

  describe('payload size', () => {
    it('accepts and echoes a 1.05 MB message', async () => {
      const [raw] = await RawClient.connect(server);
      const big = 'x'.repeat(1050000);
      const reply = await raw.invoke('echo', big, 2, 10000);
      assert.equal(reply.data.length, big.length);
      assert.equal(reply.data, big);
      raw.close();
    });

    it('closes a socket that sends 3 MiB with 1009 and leaves another socket working', async () => {
      const [other] = await RawClient.connect(server);
      const [raw] = await RawClient.connect(server);
      raw.send(JSON.stringify({ event: 'echo', data: 'y'.repeat(3 * 1024 * 1024), cid: 2 }));
      const { code } = await raw.waitClose(10000);
      assert.equal(code, 1009);
      assert.deepEqual(await other.invoke('echo', 'fine', 2), { rid: 2, data: 'fine' });
      other.close();
    });
  });
});
