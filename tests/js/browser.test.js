// Headless Chromium (Debian `chromium`, driven by playwright-core) loads a page that runs the real
// socketcluster-client over engine.io long-polling only, through the browser module that the
// worker serves at /socketcluster-engineio.js: echo (100 KB included), fail, and a publish round
// trip, with no WebSocket opened.
//
// The page comes from a small front server of the test: it serves the page (browser/index.html),
// engine.io-client's and socketcluster-client's browser builds straight from node_modules, and
// proxies /engine.io/ and /socketcluster-engineio.js to the worker, so the page and the endpoint
// share one origin as in a deployment behind a reverse proxy.
//
// Only our server has the endpoint: with SC_SERVER=reference the file is skipped.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');
const { HOST, CHROMIUM, CHROMIUM_ARGS, startServer, withTimeout } = require('./harness');

const REFERENCE = process.env.SC_SERVER === 'reference';

const STATIC = {
  '/': [path.join(__dirname, 'browser', 'index.html'), 'text/html; charset=utf-8'],
  '/engine.io.js': [require.resolve('engine.io-client/dist/engine.io.js'), 'text/javascript; charset=utf-8'],
  '/socketcluster-client.min.js': [
    path.join(path.dirname(require.resolve('socketcluster-client/package.json')), 'socketcluster-client.min.js'),
    'text/javascript; charset=utf-8',
  ],
};

/** The front server: static files, and a proxy to the worker; records the proxied requests. */
function startFront(workerPort) {
  const proxied = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://front');
    const file = STATIC[url.pathname];
    if (file) {
      res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' });
      res.end(fs.readFileSync(file[0]));
      return;
    }
    if (url.pathname.startsWith('/engine.io/') || url.pathname === '/socketcluster-engineio.js') {
      proxied.push({ method: req.method, path: url.pathname, transport: url.searchParams.get('transport') });
      const up = http.request(
        { host: HOST, port: workerPort, method: req.method, path: req.url, headers: { ...req.headers, host: `${HOST}:${workerPort}` } },
        (upRes) => {
          res.writeHead(upRes.statusCode, upRes.headers);
          upRes.pipe(res);
        }
      );
      up.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      req.pipe(up);
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => {
    server.listen(0, HOST, () => resolve({ server, port: server.address().port, proxied }));
  });
}

describe('browser: socketcluster-client over engine.io long-polling', { skip: REFERENCE && 'the reference server has no engine.io endpoint' }, () => {
  let worker;
  let front;
  let context;
  let userDataDir;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
    worker = await startServer();
    front = await startFront(worker.port);
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-chromium-'));
    context = await withTimeout(
      chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
      }),
      30000,
      'Chromium to start'
    );
  });
  after(async () => {
    if (context) await context.close();
    if (front) front.server.close();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    await worker.stop();
  });

  it('the worker serves the browser module', async () => {
    const res = await fetch(`http://${HOST}:${worker.port}/socketcluster-engineio.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /javascript/);
    assert.match(await res.text(), /EngineIoWebSocket/);
  });

  it('echo, fail and a publish round trip over long-polling only', async () => {
    const page = await context.newPage();
    const websockets = [];
    page.on('websocket', (ws) => websockets.push(ws.url()));
    const pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    await page.goto(`http://${HOST}:${front.port}/`);
    await page.waitForFunction(() => window.scReady === true, null, { timeout: 10000 });
    const result = await withTimeout(page.evaluate(() => window.scTest()), 30000, 'the page test');
    await page.close();

    assert.deepEqual(pageErrors, []);
    assert.equal(result.shimInstalled, true);
    assert.equal(result.transport, 'polling');
    assert.deepEqual(result.echoed, { unicode: 'héllo ✓ 𝄞', list: [1, 2, 3] });
    assert.equal(result.bigOk, true);
    assert.deepEqual(result.published, { from: 'browser' });
    assert.deepEqual(result.failed, { name: 'BadRequest', message: 'fail requested' });
    assert.equal(result.state, 'open');
    assert.equal(result.closeCode, 4321);
    assert.equal(result.closeReason, 'bye');
    // Long-polling only: no WebSocket from the page, every engine.io request a polling one.
    assert.deepEqual(websockets, []);
    const eio = front.proxied.filter((r) => r.path.startsWith('/engine.io/'));
    assert.ok(eio.some((r) => r.method === 'POST'), 'the page posted messages');
    assert.ok(eio.every((r) => r.transport === 'polling'), JSON.stringify(eio));
    assert.ok(front.proxied.some((r) => r.path === '/socketcluster-engineio.js'), 'the module came from the worker');
  });
});
