// Server timers with socketcluster-server v20 defaults (../../docs/demo-app.md section 1): the
// handshake timeout (4005 after 10 s), the '' ping every 8 s, and 4001 after 30 s without a pong.
// The tests run concurrently (about 30 s in all).
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, RawClient } = require('./harness');

describe('server timers', { concurrency: true }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  it('a socket that sends no #handshake is closed with 4005 after about 10 s', async () => {
    const started = Date.now();
    const raw = await RawClient.open(server);
    const { code } = await raw.waitClose(14000);
    const elapsed = Date.now() - started;
    assert.equal(code, 4005);
    assert.ok(elapsed >= 9000 && elapsed <= 13000, `closed after ${elapsed} ms`);
  });

  it('a socket that never answers the ping (and sends nothing) is closed with 4001 after about 30 s', async () => {
    const [raw] = await RawClient.connect(server);
    raw.autoPong = false;
    const started = Date.now();
    const { code } = await raw.waitClose(36000);
    const elapsed = Date.now() - started;
    assert.equal(code, 4001);
    assert.ok(elapsed >= 28000 && elapsed <= 34000, `closed after ${elapsed} ms`);
  });

  it("the server pings '' about every 8 s; a socket that answers stays open", async () => {
    const [raw] = await RawClient.connect(server);
    raw.autoPong = false;
    const started = Date.now();
    await raw.nextRaw((f) => f === '', 11000, { pings: true, what: "the server's '' ping" });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 6000 && elapsed <= 10500, `first ping after ${elapsed} ms`);
    raw.send('');
    assert.deepEqual(await raw.invoke('echo', 'alive', 2), { rid: 2, data: 'alive' });
    raw.close();
  });
});
