// Sessions shared by every tab of a browser (ours only: socketcluster-server v20 has none; with
// SC_SERVER=reference the file is skipped).
//
// 1. Headless Chromium (Debian `chromium`, playwright-core) on the demo page at `/`: two tabs of
//    one browser context share a session id, a `sessionEmit` from one reaches both and not a
//    second context (another browser), the `rand` numbers are equal across the two tabs and
//    differ from the other context's; then the same with the page over engine.io long-polling
//    only.
// 2. Two `serve` processes sharing a store cluster (two `socketcluster store` processes), and
//    again sharing Redis: one tab on each (one browser context: cookies are per host, so both
//    tabs present the same session cookie); `sessionEmit` reaches both, `sessionSet` on one is
//    read by `sessionGet` on the other, and after `kill -9` of one worker its tab, reconnected
//    to the other, still reads it.
'use strict';

const path = require('node:path');
const { spawn } = require('node:child_process');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');
const { HOST, CHROMIUM, CHROMIUM_ARGS, ServerProcess, TOPOLOGY, startRunAsServer, freePort, tryConnect, withTimeout } = require('./harness');

const REFERENCE = process.env.SC_SERVER === 'reference';
// The browser builds the page loads, from this suite's own npm install.
const NODE_MODULES = path.join(__dirname, 'node_modules');
const COOKIE = 'n/socketcluster/ssid';
const WAIT_MS = 15000;

/** Polls `fn` (a page function) in `page` until it returns a truthy value. */
function waitIn(page, fn, arg, what) {
  return withTimeout(page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 }), WAIT_MS + 1000, what);
}

async function openTab(context, url) {
  const page = await context.newPage();
  await page.goto(url);
  await waitIn(page, () => window.scReady === true, null, 'the page to connect');
  return page;
}

const sessionIdOf = (page) => page.evaluate(() => document.getElementById('sid').textContent);

describe('sessions in the browser (headless Chromium, the demo page)', { skip: REFERENCE && 'ours only' }, () => {
  let server;
  let browser;

  before(async () => {
    if (TOPOLOGY === 'run') {
      // The page as `socketcluster run` serves it (the README's main command).
      server = await startRunAsServer();
    } else {
      server = new ServerProcess({ args: ['--demo-assets', NODE_MODULES] });
      await server.start();
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });
  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  for (const [label, query] of [
    ['WebSocket', ''],
    ['engine.io long-polling only', '?transport=polling'],
  ]) {
    it(`two tabs share a session, its emits and its rand numbers; another browser does not (${label})`, async () => {
      const url = `http://${HOST}:${server.port}/${query}`;
      const alice = await browser.newContext();
      const bob = await browser.newContext();
      try {
        // The second tab opens once the first one has the cookie (else both would make one).
        const tab1 = await openTab(alice, url);
        const tab2 = await openTab(alice, url);
        const other = await openTab(bob, url);
        const [s1, s2, s3] = await Promise.all([tab1, tab2, other].map(sessionIdOf));
        assert.equal(s1, s2, 'the tabs of one browser share the session');
        assert.notEqual(s1, s3, 'another browser has its own session');
        const cookies = await alice.cookies();
        const cookie = cookies.find((c) => c.name === COOKIE);
        assert.ok(cookie, `cookie ${COOKIE} set: ${JSON.stringify(cookies)}`);
        assert.equal(cookie.httpOnly, true);
        assert.equal(cookie.sameSite, 'Lax');
        if (query) {
          for (const tab of [tab1, tab2, other]) {
            const transport = await tab.evaluate(() => window.scSocket.transport.socket._engine.transport.name);
            assert.equal(transport, 'polling');
          }
        }

        // sessionEmit from tab 1 reaches both tabs; the other browser's emit reaches only it.
        await tab1.evaluate(() => window.scSocket.invoke('sessionEmit', { event: 'note', data: 'from-tab1' }));
        await other.evaluate(() => window.scSocket.invoke('sessionEmit', { event: 'note', data: 'from-bob' }));
        for (const tab of [tab1, tab2]) {
          await waitIn(tab, () => window.scSeen.notes.includes('from-tab1'), null, 'the note in both tabs');
        }
        await waitIn(other, () => window.scSeen.notes.includes('from-bob'), null, "bob's own note");
        // Bob's note went out after Alice's: had Alice's reached Bob, it would be there by now.
        assert.deepEqual(await other.evaluate(() => window.scSeen.notes), ['from-bob']);
        assert.deepEqual(await tab2.evaluate(() => window.scSeen.notes), ['from-tab1']);

        // Session data: set in one tab, read in the other; not in bob's.
        await tab1.evaluate(() => window.scSocket.invoke('sessionSet', { key: 'color', value: 'blue' }));
        assert.equal(await tab2.evaluate(() => window.scSocket.invoke('sessionGet', { key: 'color' })), 'blue');
        assert.equal(await other.evaluate(() => window.scSocket.invoke('sessionGet', { key: 'color' })), null);

        // rand: the same number in both tabs for each second, and not bob's.
        for (const tab of [tab1, tab2, other]) {
          await waitIn(tab, () => window.scSeen.rand.length >= 4, null, 'four rand events');
        }
        const rands = await Promise.all(
          [tab1, tab2, other].map((t) => t.evaluate(() => Object.fromEntries(window.scSeen.rand.map((r) => [r.t, r.rand]))))
        );
        const shared = Object.keys(rands[0]).filter((t) => t in rands[1] && t in rands[2]);
        assert.ok(shared.length >= 2, `seconds seen by all three: ${JSON.stringify(rands)}`);
        for (const t of shared) {
          assert.equal(rands[0][t], rands[1][t], `second ${t}`);
          assert.ok(rands[0][t] >= 0 && rands[0][t] < 100);
        }
        assert.ok(
          shared.some((t) => rands[0][t] !== rands[2][t]),
          `bob's numbers differ: ${JSON.stringify(rands)}`
        );
        if (process.env.SC_SCREENSHOT && !query) {
          await tab1.evaluate(() => document.getElementById('get').click());
          await waitIn(tab1, () => document.getElementById('got').textContent !== '', null, 'the get result');
          await tab1.screenshot({ path: process.env.SC_SCREENSHOT });
        }
      } finally {
        await alice.close();
        await bob.close();
      }
    });
  }
});

/** Resolves once something accepts TCP connections on `port`. */
async function listening(port, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await tryConnect(port))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A `socketcluster store` process; kill it with `.kill('SIGKILL')`. */
async function startStore() {
  const port = await freePort();
  const child = spawn(process.env.SC_BIN, ['store', '--host', HOST, '--port', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await listening(port, `store on ${port}`);
  return { port, child };
}

describe('sessions across two worker processes (headless Chromium)', {
  skip: (REFERENCE && 'ours only') || (TOPOLOGY === 'run' && 'it starts its own processes: the other topologies run it'),
}, () => {
  let browser;
  before(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });
  after(async () => {
    if (browser) await browser.close();
  });

  for (const backend of ['store cluster', 'redis']) {
    describe(`sharing a ${backend}`, () => {
      const stores = [];
      const workers = [];

      before(async () => {
        let storeArg;
        if (backend === 'redis') {
          storeArg = 'redis://127.0.0.1:6379';
        } else {
          for (let i = 0; i < 2; i++) stores.push(await startStore());
          storeArg = `sc://${stores.map((s) => `${HOST}:${s.port}`).join(',')}`;
        }
        const authKey = `session-key-${process.pid}`;
        for (let i = 0; i < 2; i++) {
          const w = new ServerProcess({ authKey, args: ['--store', storeArg, '--demo-assets', NODE_MODULES] });
          await w.start();
          workers.push(w);
        }
      });
      after(async () => {
        for (const w of workers) await w.stop();
        for (const s of stores) s.child.kill('SIGKILL');
      });

      it('one tab on each worker: emit reaches both, data is shared and survives kill -9 of a worker', async () => {
        // Cookies are per host, not per port: the second tab, on the other worker, presents
        // the cookie the first worker set.
        const context = await browser.newContext();
        try {
          const tab1 = await openTab(context, `http://${HOST}:${workers[0].port}/`);
          const tab2 = await openTab(context, `http://${HOST}:${workers[1].port}/`);
          const sid = await sessionIdOf(tab1);
          assert.equal(await sessionIdOf(tab2), sid, 'worker 2 accepts the cookie of worker 1');

          await tab1.evaluate(() => window.scSocket.invoke('sessionEmit', { event: 'note', data: 'both' }));
          for (const tab of [tab1, tab2]) {
            await waitIn(tab, () => window.scSeen.notes.includes('both'), null, 'the note in both tabs');
          }
          await tab1.evaluate(() => window.scSocket.invoke('sessionSet', { key: 'cart', value: { items: 3 } }));
          assert.deepEqual(await tab2.evaluate(() => window.scSocket.invoke('sessionGet', { key: 'cart' })), { items: 3 });

          // Tab 2 closes (no process holds a socket of the session any more), then kill -9
          // worker 1: the data lives in the store, not in a worker. Tab 1 reconnects to worker 2
          // (a new socket with the same cookie) and finds it.
          await tab2.close();
          await workers[0].kill();
          await tab1.goto(`http://${HOST}:${workers[1].port}/`);
          await waitIn(tab1, () => window.scReady === true, null, 'tab 1 on worker 2');
          assert.equal(await sessionIdOf(tab1), sid);
          assert.deepEqual(await tab1.evaluate(() => window.scSocket.invoke('sessionGet', { key: 'cart' })), { items: 3 });
        } finally {
          await context.close();
        }
      });
    });
  }
});
