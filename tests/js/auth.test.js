// Auth (../../docs/demo-app.md sections 2-4): login / #setAuthToken, whoami, tokens at handshake
// and in #authenticate, rejected tokens (soft AuthTokenInvalidError + #removeAuthToken),
// deauthenticate.
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
  RawClient,
  jwtPayload,
  signToken,
  uniqueChannel,
} = require('./harness');

/** Variants of a valid token that the server must reject as invalid. */
function badTokens(validToken) {
  const [header, , signature] = validToken.split('.');
  const forged = Buffer.from(JSON.stringify({ username: 'mallory', iat: 1, exp: 4102444800 })).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  return [
    ['a malformed token (not-a-jwt)', 'not-a-jwt'],
    ['a tampered token (payload swapped, signature kept)', `${header}.${forged}.${signature}`],
    ['a token signed with another key', signToken({ username: 'mallory', iat: now, exp: now + 3600 }, 'another-key')],
    ['an unsigned alg:none token', signToken({ username: 'mallory', iat: now, exp: now + 3600 }, '', { alg: 'none', typ: 'JWT' })],
  ];
}

/**
 * whoami returns the socket's token object: {username} plus, optionally, the iat/exp the server
 * added (../../docs/demo-app.md: "`iat`/`exp` may be added"); whatever it returns must match the
 * signed payload.
 */
function assertTokenObject(who, payload) {
  assert.equal(who.username, payload.username);
  for (const key of Object.keys(who)) {
    assert.ok(['username', 'iat', 'exp'].includes(key), `unexpected key ${key} in ${JSON.stringify(who)}`);
    assert.deepEqual(who[key], payload[key], `whoami ${key} differs from the token payload`);
  }
}

describe('auth', () => {
  let server;
  let validToken;
  const sockets = [];
  const connect = async (options) => {
    const result = await connectClient(server, options);
    sockets.push(result.socket);
    return result;
  };
  /** A client whose token store already holds `token` when it connects. */
  const connectWithToken = async (token) => {
    const socket = createClient(server);
    sockets.push(socket);
    await socket.auth.saveToken(socket.authTokenName, token, {});
    const connected = nextEvent(socket, 'connect');
    socket.connect();
    return { socket, status: await connected };
  };

  before(async () => {
    server = await startServer();
    const [raw] = await RawClient.connect(server);
    raw.sendJson({ event: 'login', data: { username: 'token-owner' }, cid: 2 });
    validToken = (await raw.nextMatching((p) => p.event === '#setAuthToken')).data.token;
    raw.close();
  });
  after(async () => {
    closeClients(sockets);
    await server.stop();
  });

  describe('login and whoami', () => {
    it('whoami is null before login', async () => {
      const { socket } = await connect();
      assert.equal(await socket.invoke('whoami'), null);
      assert.equal(socket.authState, socket.UNAUTHENTICATED);
    });

    it('login makes the client authenticated via #setAuthToken; whoami returns the token object', async () => {
      const { socket } = await connect();
      const authenticated = nextEvent(socket, 'authenticate');
      assert.equal(await socket.invoke('login', { username: 'alice' }), undefined);
      const { signedAuthToken, authToken } = await authenticated;
      assert.equal(socket.authState, socket.AUTHENTICATED);
      assert.equal(authToken.username, 'alice');
      assert.equal(typeof authToken.iat, 'number');
      assert.equal(typeof authToken.exp, 'number');
      assert.equal(signedAuthToken.split('.').length, 3);
      assert.deepEqual(jwtPayload(signedAuthToken), authToken);
      assert.equal(await socket.auth.loadToken(socket.authTokenName), signedAuthToken);
      const who = await socket.invoke('whoami');
      assert.equal(who.username, 'alice');
      assertTokenObject(who, authToken);
    });

    it('a second login replaces the token', async () => {
      const { socket } = await connect();
      await socket.invoke('login', { username: 'first' });
      await socket.invoke('login', { username: 'second' });
      assert.equal((await socket.invoke('whoami')).username, 'second');
    });

    it('Unicode usernames round-trip through the token', async () => {
      const { socket } = await connect();
      const authenticated = nextEvent(socket, 'authenticate');
      await socket.invoke('login', { username: 'Zoë 🦀 名前' });
      assert.equal((await authenticated).authToken.username, 'Zoë 🦀 名前');
      assert.equal((await socket.invoke('whoami')).username, 'Zoë 🦀 名前');
    });

    it('deauthenticate() (#removeAuthToken) makes whoami null and private/ forbidden again', async () => {
      const { socket } = await connect();
      await socket.invoke('login', { username: 'leaving' });
      await subscribe(socket, uniqueChannel('private/a'));
      await socket.deauthenticate();
      assert.equal(socket.authState, socket.UNAUTHENTICATED);
      assert.equal(await socket.invoke('whoami'), null);
      await assert.rejects(subscribe(socket, uniqueChannel('private/b')), { name: 'ForbiddenError' });
    });
  });

  describe('valid tokens', () => {
    it('a stored token authenticates the handshake of a new connection', async () => {
      const { socket, status } = await connectWithToken(validToken);
      assert.equal(status.isAuthenticated, true);
      assert.equal(status.authError, undefined);
      assert.equal(socket.authState, socket.AUTHENTICATED);
      assert.equal((await socket.invoke('whoami')).username, 'token-owner');
    });

    it('raw #handshake with the token: isAuthenticated true and no authError', async () => {
      const [raw, reply] = await RawClient.connect(server, { authToken: validToken });
      assert.equal(reply.data.isAuthenticated, true);
      assert.equal('authError' in reply.data, false);
      const who = await raw.invoke('whoami', undefined, 2);
      assertTokenObject(who.data, jwtPayload(validToken));
      raw.close();
    });

    it('authenticate(token) on an open connection', async () => {
      const { socket } = await connect();
      const result = await socket.authenticate(validToken);
      assert.equal(result.isAuthenticated, true);
      assert.equal(result.authError, null);
      assert.equal((await socket.invoke('whoami')).username, 'token-owner');
    });

    it('a token signed elsewhere with the same auth key (HS256) is accepted', async () => {
      const now = Math.floor(Date.now() / 1000);
      const token = signToken({ username: 'from-peer', iat: now, exp: now + 3600 }, server.authKey);
      const { socket, status } = await connectWithToken(token);
      assert.equal(status.isAuthenticated, true);
      assert.equal((await socket.invoke('whoami')).username, 'from-peer');
      await subscribe(socket, uniqueChannel('private/peer'));
    });
  });

  describe('rejected tokens at the handshake', () => {
    it('covers every variant', async (t) => {
      for (const [name, token] of badTokens(validToken)) {
        await t.test(`${name}: isAuthenticated false, AuthTokenInvalidError, #removeAuthToken, whoami null (raw)`, async () => {
          const raw = await RawClient.open(server);
          raw.sendJson({ event: '#handshake', data: { authToken: token }, cid: 1 });
          const reply = await raw.next();
          assert.equal(reply.rid, 1);
          assert.equal(reply.data.isAuthenticated, false);
          assert.equal(typeof reply.data.id, 'string');
          assert.equal(reply.data.authError.name, 'AuthTokenInvalidError');
          assert.equal(typeof reply.data.authError.message, 'string');
          raw.autoPong = true;
          await raw.nextMatching((p) => p.event === '#removeAuthToken');
          const who = await raw.invoke('whoami', undefined, 2);
          assert.deepEqual(who, { rid: 2, data: null });
          raw.close();
        });

        await t.test(`${name}: the client ends unauthenticated and drops its token`, async () => {
          const socket = createClient(server);
          sockets.push(socket);
          await socket.auth.saveToken(socket.authTokenName, token, {});
          const removed = nextEvent(socket, 'removeAuthToken');
          const connected = nextEvent(socket, 'connect');
          socket.connect();
          const status = await connected;
          assert.equal(status.isAuthenticated, false);
          assert.equal(status.authError.name, 'AuthTokenInvalidError');
          await removed;
          assert.equal(socket.authState, socket.UNAUTHENTICATED);
          assert.equal(await socket.auth.loadToken(socket.authTokenName), null);
          assert.equal(await socket.invoke('whoami'), null);
          await assert.rejects(subscribe(socket, uniqueChannel('private/x')), { name: 'ForbiddenError' });
        });
      }
    });

    it('an expired token: isAuthenticated false, AuthTokenExpiredError', async () => {
      const now = Math.floor(Date.now() / 1000);
      const token = signToken({ username: 'old', iat: now - 7200, exp: now - 3600 }, server.authKey);
      const [raw, reply] = await RawClient.connect(server, { authToken: token });
      assert.equal(reply.data.isAuthenticated, false);
      assert.equal(reply.data.authError.name, 'AuthTokenExpiredError');
      assert.equal((await raw.invoke('whoami', undefined, 2)).data, null);
      raw.close();
    });
  });

  describe('token expiry while connected', () => {
    it('an expired token is dropped on the next inbound message: #removeAuthToken, whoami null, private/ forbidden', async () => {
      const exp = Math.floor(Date.now() / 1000) + 2;
      const token = signToken({ username: 'short-lived', iat: exp - 2, exp }, server.authKey);
      const [raw, reply] = await RawClient.connect(server, { authToken: token });
      assert.equal(reply.data.isAuthenticated, true);
      await raw.nextMatching((p) => p.event === 'greet');
      // The behaviour under test is the passage of time: wait until the token's exp has passed.
      await new Promise((resolve) => setTimeout(resolve, exp * 1000 + 250 - Date.now()));
      raw.sendJson({ event: 'whoami', cid: 2 });
      raw.sendJson({ event: '#subscribe', data: { channel: uniqueChannel('private/late') }, cid: 3 });
      const frames = [await raw.next(), await raw.next(), await raw.next()];
      assert.deepEqual(frames[0], { event: '#removeAuthToken' });
      assert.deepEqual(frames[1], { rid: 2, data: null });
      assert.equal(frames[2].rid, 3);
      assert.equal(frames[2].error.name, 'ForbiddenError');
      raw.close();
    });
  });

  describe('rejected tokens in authenticate()', () => {
    it('a tampered token is refused and the client stays unauthenticated', async () => {
      const { socket } = await connect();
      const [, tampered] = badTokens(validToken)[1];
      await assert.rejects(socket.authenticate(tampered), { name: 'AuthTokenInvalidError' });
      assert.equal(socket.authState, socket.UNAUTHENTICATED);
      assert.equal(await socket.invoke('whoami'), null);
    });

    it('a bad token after login deauthenticates the socket', async () => {
      const { socket } = await connect();
      await socket.invoke('login', { username: 'was-here' });
      await assert.rejects(socket.authenticate('not-a-jwt'), { name: 'AuthTokenInvalidError' });
      assert.equal(await socket.invoke('whoami'), null);
    });
  });
});
