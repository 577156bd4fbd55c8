// `socketcluster balance` in front of two `serve` workers sharing a `socketcluster store`
// (harness.js ClusterProcess); this file always starts its own clusters, whatever SC_TOPOLOGY says.
//
// a. 500 engine.io long-polling sessions without cookies, opened at once through two balancer
//    processes on one port (SO_REUSEPORT; engine.io-client in Node opens a new TCP connection for
//    every request, so the requests of one session land on both processes): each does SocketCluster
//    round trips over engine.io; none may see an error, a 400 or "Session ID unknown" (the routing
//    by the tag in the sid is stateless).
// b. Polling upgraded to WebSocket through the balancer (the upgrade request reaches the worker
//    holding the session).
// c. kill -9 of a worker under 500 socketcluster-client sockets with the client's real reconnect
//    defaults (10-20 s after a 1006): the balancer closes the killed worker's sockets with 4000,
//    which makes the client reconnect at once, to the other worker; subscriptions come back. The
//    time from the kill to each reconnect is printed (`balancer kill -9:` lines).
// d. TLS termination with a passphrase-protected PKCS#8 key; wrong passphrase, missing passphrase
//    and a key of another certificate stop `balance` at start-up naming the cause.
//
// Only our binary has the balancer: with SC_SERVER=reference the file is skipped.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const nodeTls = require('node:tls');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Socket } = require('engine.io-client');
const {
  HOST,
  ServerProcess,
  startCluster,
  testTls,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  collect,
  withTimeout,
  freePort,
  RawClient,
  uniqueChannel,
} = require('./harness');
const { ClientThread } = require('./client-thread');

const REFERENCE = process.env.SC_SERVER === 'reference';
const TIMEOUT_MS = 10000;
const CLOSE_PREFIX = '#close:';
// The passphrase reaches `balance` only where a test gives it.
delete process.env.SC_TLS_KEY_PASSPHRASE;

/** GET /stats of a worker, straight from its own port. */
async function workerStats(port) {
  const res = await fetch(`http://${HOST}:${port}/stats`);
  assert.equal(res.status, 200);
  return res.json();
}

/** CPU time (user + system, in clock ticks) a process used so far, from /proc/PID/stat. */
function cpuTicks(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The fields after the command name (in parentheses): state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Percentile `q` (0-1) of sorted numbers. */
function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/**
 * SocketCluster over one engine.io-client socket (frames as engine.io messages, see
 * engineio.test.js): invoke/transmit, the '' ping answered, every error and unexpected close kept
 * in `problems`.
 */
class EioSession {
  constructor(baseUrl, options = {}) {
    this.cid = 0;
    this.pending = new Map();
    this.problems = [];
    this.closing = false;
    this.socket = new Socket(baseUrl, { path: '/engine.io/', ...options });
    this.opened = new Promise((resolve, reject) => {
      this.socket.once('open', resolve);
      this.socket.once('close', (reason) => reject(new Error(`closed before open: ${reason}`)));
    });
    this.opened.catch(() => {});
    this.upgraded = new Promise((resolve) => this.socket.once('upgrade', (t) => resolve(t.name)));
    this.closed = new Promise((resolve) => this.socket.once('close', (reason) => resolve(reason)));
    this.socket.on('error', (err) => this.problems.push(`error: ${describeEioError(err)}`));
    this.socket.on('close', (reason, description) => {
      if (!this.closing) this.problems.push(`close: ${reason} ${describeEioError(description)}`);
      for (const { reject } of this.pending.values()) reject(new Error(`engine.io closed: ${reason}`));
      this.pending.clear();
    });
    this.socket.on('message', (data) => {
      if (data === '' || data === undefined) {
        this.socket.send('');
        return;
      }
      if (typeof data === 'string' && data.startsWith(CLOSE_PREFIX)) {
        this.problems.push(`in-band close ${data}`);
        return;
      }
      const frame = JSON.parse(data);
      const waiter = frame.rid != null && this.pending.get(frame.rid);
      if (waiter) {
        this.pending.delete(frame.rid);
        waiter.resolve(frame);
      }
    });
  }

  get sid() {
    return this.socket.id;
  }

  transmit(event, data) {
    this.socket.send(JSON.stringify({ event, data }));
  }

  /** Sends an invoke; resolves with its reply frame. */
  invoke(event, data, ms = TIMEOUT_MS) {
    const cid = ++this.cid;
    const reply = new Promise((resolve, reject) => this.pending.set(cid, { resolve, reject }));
    this.socket.send(JSON.stringify({ event, data, cid }));
    return withTimeout(reply, ms, `the reply to ${event} (cid ${cid}, sid ${this.sid})`);
  }

  async handshake() {
    await withTimeout(this.opened, TIMEOUT_MS, 'engine.io open');
    const reply = await this.invoke('#handshake', { authToken: null });
    assert.equal(reply.error, undefined, JSON.stringify(reply.error));
    return reply.data;
  }

  close() {
    this.closing = true;
    this.socket.close();
  }
}

/** An engine.io-client error or close description: message, HTTP status and body when there are. */
function describeEioError(err) {
  if (!err) return '';
  const parts = [err.message || String(err)];
  if (err.description != null) parts.push(`status ${err.description}`);
  const body = err.context && err.context.responseText;
  if (body) parts.push(`body ${String(body).slice(0, 200)}`);
  return parts.join(', ');
}

/**
 * Runs `socketcluster balance ARGS` that must refuse to start: resolves with { code, signal,
 * stdout, stderr } once it exited; fails if it is still running (or says it listens) after 10 s.
 */
async function balanceMustFail(args, env = {}) {
  const child = spawn(process.env.SC_BIN, ['balance', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', ...env },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  try {
    return await withTimeout(exited, TIMEOUT_MS, `balance ${args.join(' ')} to exit (it should refuse to start)`);
  } catch (err) {
    child.kill('SIGKILL');
    err.message += `\nstdout: ${stdout}\nstderr: ${stderr}`;
    throw err;
  }
}

describe('balancer', { skip: REFERENCE && 'the reference server has no balancer' }, () => {
  describe('engine.io through two balancer processes on one port', () => {
    let cluster;
    const sessions = [];
    before(async () => {
      cluster = await startCluster({ balancers: 2 });
    });
    after(async () => {
      for (const s of sessions) s.close();
      await cluster.stop();
    });

    it('500 polling-only sessions without cookies, opened at once, never lose their worker', async () => {
      const count = 500;
      const [b1, b2] = cluster.balancers.map((b) => b.child.pid);
      const cpuBefore = [cpuTicks(b1), cpuTicks(b2)];
      const started = Date.now();
      // All created at once; engine.io-client in Node sends no cookies (no jar without
      // withCredentials) and uses no keep-alive agent: one TCP connection per request.
      const batch = Array.from(
        { length: count },
        () => new EioSession(cluster.httpUrl, { transports: ['polling'], upgrade: false, withCredentials: false })
      );
      sessions.push(...batch);
      const run = async (s, i) => {
        const status = await s.handshake();
        s.transmit('ping');
        s.transmit('ping');
        for (let k = 0; k < 3; k++) {
          const reply = await s.invoke('echo', { i, k });
          assert.deepEqual(reply.data, { i, k });
        }
        // The pings were counted by the socket that answers here: same worker, same socket.
        assert.equal((await s.invoke('count')).data, 2);
        return status.id;
      };
      const results = await withTimeout(
        Promise.allSettled(batch.map(run)),
        60000,
        `${count} sessions to finish their round trips`
      );
      const elapsed = Date.now() - started;
      const failed = results.map((r, i) => [r, i]).filter(([r]) => r.status === 'rejected');
      const problems = batch.flatMap((s, i) => s.problems.map((p) => `session ${i} (sid ${s.sid}): ${p}`));

      // Who served them, while they are all open.
      const stats = await Promise.all(cluster.workerPorts.map(workerStats));
      const tags = {};
      for (const s of batch) {
        const tag = /\.([0-9a-f]{8})$/.exec(s.sid || '');
        tags[tag ? tag[1] : `untagged sid ${s.sid}`] = (tags[tag ? tag[1] : `untagged sid ${s.sid}`] || 0) + 1;
      }
      const cpu = [cpuTicks(b1) - cpuBefore[0], cpuTicks(b2) - cpuBefore[1]];
      console.log(
        `balancer polling: ${count} sessions done in ${elapsed} ms; engine.io sessions per worker ` +
          `${stats.map((s) => s.engineio_sessions).join(' / ')}, sid tags ${JSON.stringify(tags)}; ` +
          `CPU ticks of the two balancer processes ${cpu.join(' / ')}`
      );

      assert.deepEqual(problems, [], `${problems.length} errors or closes:\n${problems.slice(0, 20).join('\n')}`);
      assert.deepEqual(
        failed.map(([r, i]) => `session ${i}: ${r.reason && r.reason.message}`).slice(0, 20),
        [],
        `${failed.length} sessions failed`
      );
      assert.equal(
        stats.reduce((n, s) => n + s.engineio_sessions, 0),
        count,
        `engine.io sessions on the workers: ${JSON.stringify(stats)}`
      );
      assert.equal(Object.keys(tags).length, 2, `one sid tag per worker: ${JSON.stringify(tags)}`);
      for (const s of stats) assert.ok(s.engineio_sessions > 0, `both workers serve sessions: ${JSON.stringify(stats)}`);
      // SO_REUSEPORT spreads the connections (one per request) over both balancer processes:
      // each did a fair part of the work.
      for (const c of cpu) assert.ok(c > (cpu[0] + cpu[1]) / 10, `both balancer processes took requests (CPU ticks ${cpu})`);

      for (const s of batch) s.close();
      await withTimeout(Promise.all(batch.map((s) => s.closed)), TIMEOUT_MS, 'the sessions to close');
    });

    it('polling upgrades to WebSocket through the balancer, on the same socket', async () => {
      const batch = Array.from({ length: 20 }, () => new EioSession(cluster.httpUrl));
      sessions.push(...batch);
      await withTimeout(
        Promise.all(
          batch.map(async (s, i) => {
            await s.handshake();
            s.transmit('ping');
            assert.equal(await withTimeout(s.upgraded, TIMEOUT_MS, 'the upgrade'), 'websocket');
            assert.equal(s.socket.transport.name, 'websocket');
            assert.deepEqual((await s.invoke('echo', { i, after: 'upgrade' })).data, { i, after: 'upgrade' });
            // The ping sent over polling was counted by the socket the WebSocket reaches.
            assert.equal((await s.invoke('count')).data, 1);
          })
        ),
        30000,
        '20 sessions to upgrade'
      );
      const problems = batch.flatMap((s, i) => s.problems.map((p) => `session ${i} (sid ${s.sid}): ${p}`));
      assert.deepEqual(problems, []);
      for (const s of batch) s.close();
    });
  });

  describe('kill -9 of a worker under 500 socketcluster-client sockets', () => {
    let cluster;
    const sockets = [];
    const threads = [];
    before(async () => {
      cluster = await startCluster({ balancerArgs: ['--health-interval-ms', '200'] });
    });
    after(async () => {
      closeClients(sockets);
      await Promise.all(threads.map((t) => t.close()));
      await cluster.stop();
    });

    it("its clients reconnect at once (the client's real reconnect defaults) and get their publishes", async () => {
      const count = 500;
      const channel = uniqueChannel('kill');
      // autoReconnectOptions {}: the client fills in its own defaults (10 s + up to 10 s random).
      // Half the clients run on a worker thread: all 500 reconnecting on one Node thread would
      // queue behind each other (about 1 ms of CPU each) and the test would measure itself.
      const threadCount = Math.floor(count / 2);
      const clients = Array.from({ length: count - threadCount }, () => createClient(cluster, { autoReconnectOptions: {} }));
      sockets.push(...clients);
      const thread = new ClientThread({ port: cluster.port, secure: false }, threadCount, { autoReconnectOptions: {} });
      threads.push(thread);
      assert.deepEqual(
        { ...clients[0].options.autoReconnectOptions },
        { initialDelay: 10000, randomness: 10000, multiplier: 1.5, maxDelay: 60000 }
      );
      // All 500 on worker 0: worker 1 is out of routing while they connect (all at once), and
      // back before the kill.
      const balancer = cluster.balancers[0];
      const takenOut = balancer.waitForLine(/taken out of routing/);
      await cluster.killWorker(1);
      await takenOut;
      await withTimeout(
        Promise.all([
          ...clients.map((c) => {
            const connected = nextEvent(c, 'connect', 30000);
            c.connect();
            return connected;
          }),
          thread.connect(30000),
        ]),
        60000,
        `${count} clients to connect`
      );
      const back = balancer.waitForLine(/routed to again/);
      await cluster.startWorker(1);
      await back;
      const chans = await Promise.all(clients.map((c) => subscribe(c, channel)));
      await thread.subscribe(channel);
      const before = await Promise.all(cluster.workerPorts.map(workerStats));
      const onKilled = before[0].clients;
      assert.deepEqual([before[0].clients, before[1].clients], [count, 0], 'all clients on the worker to be killed');

      // Per client: its close after the kill (code, time) and its next connect.
      const records = clients.map(() => ({ closedAt: null, code: null, reason: null, connectedAt: null }));
      let closedCount = 0;
      let reconnectedCount = 0;
      let allClosed;
      const allClosedP = new Promise((resolve) => (allClosed = resolve));
      let allReconnected;
      const allReconnectedP = new Promise((resolve) => (allReconnected = resolve));
      clients.forEach((c, i) => {
        c.listener('close')
          .once()
          .then(({ code, reason }) => {
            Object.assign(records[i], { closedAt: performance.now(), code, reason });
            if (++closedCount === clients.length) allClosed();
            return c.listener('connect').once();
          })
          .then(() => {
            records[i].connectedAt = performance.now();
            if (++reconnectedCount === clients.length) allReconnected();
          });
      });
      const resubscribed = chans.map((ch) => ch.listener('subscribe').once());
      await thread.arm();

      // CPU used during the reconnect storm (for the report): the balancer, the live worker, this process.
      const pids = [cluster.balancers[0].child.pid, cluster.workers[1].child.pid];
      const ticksBefore = pids.map(cpuTicks);
      const ownBefore = process.cpuUsage();
      const killedAt = performance.now();
      await cluster.killWorker(0);
      const exitSeenAt = performance.now();
      // Bounded waits; the figures below are printed whatever happened.
      await Promise.all([
        withTimeout(allClosedP, TIMEOUT_MS, `${clients.length} closes`).catch(() => {}),
        thread.closed(threadCount, TIMEOUT_MS),
      ]);
      const [, threadRecords] = await Promise.all([
        withTimeout(allReconnectedP, 25000, `${clients.length} reconnects`).catch(() => {}),
        thread.reconnected(25000),
      ]);
      const allRecords = [...records, ...threadRecords];

      const ticks = pids.map((pid, i) => cpuTicks(pid) - ticksBefore[i]);
      const own = process.cpuUsage(ownBefore);
      const closed = allRecords.filter((r) => r.closedAt !== null);
      const times = closed
        .filter((r) => r.connectedAt !== null)
        .map((r) => Math.round(r.connectedAt - killedAt))
        .sort((a, b) => a - b);
      const codes = {};
      for (const r of closed) codes[`${r.code} ${r.reason || ''}`.trim()] = (codes[`${r.code} ${r.reason || ''}`.trim()] || 0) + 1;
      const after = await workerStats(cluster.workerPorts[1]);
      console.log(
        `balancer kill -9: ${onKilled} of ${count} clients on the killed worker (the other had ${before[1].clients}); ` +
          `${closed.length} closed (${JSON.stringify(codes)}), ${times.length} reconnected; the live worker now has ${after.clients}`
      );
      if (times.length) {
        const closes = closed.map((r) => Math.round(r.closedAt - killedAt)).sort((a, b) => a - b);
        console.log(
          `balancer kill -9: reconnect after the kill p50 ${percentile(times, 0.5)} ms, p95 ${percentile(times, 0.95)} ms, ` +
            `p99 ${percentile(times, 0.99)} ms, max ${times[times.length - 1]} ms ` +
            `(the worker's exit seen after ${Math.round(exitSeenAt - killedAt)} ms, the close reached the clients after ` +
            `p50 ${percentile(closes, 0.5)} ms, max ${closes[closes.length - 1]} ms; CPU until now: balancer ${ticks[0] * 10} ms, ` +
            `live worker ${ticks[1] * 10} ms, this test process ${Math.round((own.user + own.system) / 1000)} ms)`
        );
      }

      assert.equal(closed.length, onKilled, 'exactly the clients of the killed worker were closed');
      assert.ok(
        closed.every((r) => r.code === 4000),
        `every close is 4000 (the client reconnects at once only after 4000, 4001 or 1005): ${JSON.stringify(codes)}`
      );
      assert.equal(times.length, onKilled, `every client reconnected (${times.length} of ${onKilled} within 25 s)`);
      assert.ok(percentile(times, 0.95) <= 1000, `p95 ${percentile(times, 0.95)} ms <= 1000 ms`);
      assert.ok(times[times.length - 1] <= 5000, `max ${times[times.length - 1]} ms <= 5000 ms`);
      assert.equal(after.clients, count, `every client is on the live worker: ${JSON.stringify(after)}`);

      // Subscriptions restored: every killed worker's client subscribed again; a publish from
      // another client reaches all 500.
      await withTimeout(
        Promise.all([...resubscribed.filter((_, i) => records[i].closedAt !== null), thread.resubscribed(TIMEOUT_MS)]),
        TIMEOUT_MS,
        're-subscriptions'
      );
      const received = chans.map((ch) => collect(ch, 1, TIMEOUT_MS, 'the publish after the kill'));
      await thread.expectOne(TIMEOUT_MS);
      const { socket: publisher } = await connectClient(cluster);
      sockets.push(publisher);
      await publisher.invokePublish(channel, 'after-kill');
      for (const got of [...(await Promise.all(received)), ...(await thread.received())]) assert.deepEqual(got, ['after-kill']);
      closeClients(clients);
      await thread.close();
    });
  });

  describe('TLS termination', () => {
    let cluster;
    let tls;
    const sockets = [];
    const sessions = [];
    // `--worker` flags for the cluster's workers, and the same with a host and a free port.
    let workerArgs;
    let balancerArgs;
    before(async () => {
      tls = testTls();
      // The passphrase from SC_TLS_KEY_PASSPHRASE (harness).
      cluster = await startCluster({ tls });
      workerArgs = cluster.workerPorts.flatMap((port) => ['--worker', `${HOST}:${port}`]);
      balancerArgs = ['--host', HOST, '--port', String(await freePort()), ...workerArgs];
    });
    after(async () => {
      for (const s of sessions) s.close();
      closeClients(sockets);
      await cluster.stop();
    });

    it('a wss client connects with the encrypted key (passphrase from SC_TLS_KEY_PASSPHRASE) and round-trips', async () => {
      assert.match(cluster.tail(), /listening on https:\/\//);
      const { socket } = await connectClient(cluster);
      sockets.push(socket);
      const tlsSocket = socket.transport.socket._socket;
      assert.equal(tlsSocket.encrypted, true);
      assert.equal(tlsSocket.authorized, true);
      assert.equal(tlsSocket.getPeerCertificate().subjectaltname, 'IP Address:127.0.0.1');
      assert.deepEqual(await socket.invoke('echo', { over: 'wss' }), { over: 'wss' });
      const ch = await subscribe(socket, 'tls-channel');
      const got = collect(ch, 1);
      await socket.invokePublish('tls-channel', 'secure');
      assert.deepEqual(await got, ['secure']);
    });

    it('a client that does not trust the test CA is refused', async () => {
      await assert.rejects(RawClient.open(cluster, { ca: undefined }), /certificate/);
    });

    it('engine.io over https: polling only, and polling upgraded to wss', async () => {
      const polling = new EioSession(cluster.httpUrl, { transports: ['polling'], upgrade: false, ca: tls.ca });
      const upgrading = new EioSession(cluster.httpUrl, { ca: tls.ca });
      sessions.push(polling, upgrading);
      await polling.handshake();
      assert.deepEqual((await polling.invoke('echo', 'https polling')).data, 'https polling');
      await upgrading.handshake();
      upgrading.transmit('ping');
      assert.equal(await withTimeout(upgrading.upgraded, TIMEOUT_MS, 'the upgrade'), 'websocket');
      assert.equal((await upgrading.invoke('count')).data, 1);
      assert.deepEqual([...polling.problems, ...upgrading.problems], []);
    });

    it('the passphrase given with --tls-key-passphrase works too', async () => {
      const port = await freePort();
      const args = [...workerArgs, '--tls-cert', tls.certPath, '--tls-key', tls.encKeyPath, '--tls-key-passphrase', tls.passphrase];
      const balancer = new ServerProcess({ subcommand: 'balance', port, args });
      await balancer.start();
      try {
        const [raw, reply] = await RawClient.connect({ port, secure: true, ca: tls.ca });
        assert.equal(typeof reply.data.id, 'string');
        assert.deepEqual(await raw.invoke('echo', 'flag', 2), { rid: 2, data: 'flag' });
        raw.close();
      } finally {
        await balancer.kill();
      }
    });

    it('a wrong passphrase stops balance at start-up, naming the passphrase', async () => {
      const run = await balanceMustFail([
        ...balancerArgs,
        '--tls-cert', tls.certPath, '--tls-key', tls.encKeyPath, '--tls-key-passphrase', 'not the passphrase',
      ]);
      console.log(`balancer tls: wrong passphrase -> exit ${run.code}: ${run.stderr.trim()}`);
      assert.notEqual(run.code, 0);
      assert.equal(run.signal, null);
      assert.match(run.stderr, /passphrase/i);
      assert.doesNotMatch(run.stdout, /listening on/i);
    });

    it('an encrypted key without a passphrase stops balance at start-up, naming the passphrase', async () => {
      const run = await balanceMustFail([...balancerArgs, '--tls-cert', tls.certPath, '--tls-key', tls.encKeyPath]);
      console.log(`balancer tls: no passphrase -> exit ${run.code}: ${run.stderr.trim()}`);
      assert.notEqual(run.code, 0);
      assert.equal(run.signal, null);
      assert.match(run.stderr, /passphrase/i);
    });

    it("another certificate's key stops balance at start-up, naming the mismatch", async () => {
      const run = await balanceMustFail(
        [...balancerArgs, '--tls-cert', tls.certPath, '--tls-key', tls.otherEncKeyPath],
        { SC_TLS_KEY_PASSPHRASE: tls.passphrase }
      );
      console.log(`balancer tls: key of another certificate -> exit ${run.code}: ${run.stderr.trim()}`);
      assert.notEqual(run.code, 0);
      assert.equal(run.signal, null);
      assert.match(run.stderr, /match/i);
    });

    it('SIGHUP reloads the certificate: new connections get the new one, open ones stay open', async () => {
      // The balancer serves copies of the files, which the test then overwrites.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-tls-reload-'));
      const live = { ...tls, certPath: path.join(dir, 'live.pem'), encKeyPath: path.join(dir, 'live.key') };
      fs.copyFileSync(tls.certPath, live.certPath);
      fs.copyFileSync(tls.encKeyPath, live.encKeyPath);
      const reloading = await startCluster({ tls: live });
      try {
        const { socket } = await connectClient(reloading);
        sockets.push(socket);
        let closed = false;
        (async () => {
          for await (const _ of socket.listener('close')) closed = true;
        })();
        const pem = (file) => new crypto.X509Certificate(fs.readFileSync(file)).fingerprint256;
        assert.equal(await peerFingerprint(reloading.port, tls.ca), pem(tls.certPath));

        fs.copyFileSync(tls.cert2Path, live.certPath);
        fs.copyFileSync(tls.encKey2Path, live.encKeyPath);
        const balancer = reloading.balancers[0];
        const reloaded = balancer.waitForLine(/reloaded/);
        balancer.child.kill('SIGHUP');
        console.log(`balancer tls: ${await reloaded}`);

        assert.equal(await peerFingerprint(reloading.port, tls.ca), pem(tls.cert2Path));
        assert.equal(await socket.invoke('echo', 'still here'), 'still here');
        assert.equal(closed, false, 'the open connection was not dropped');
        assert.equal(socket.state, socket.OPEN);
      } finally {
        await reloading.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

/** The SHA-256 fingerprint of the certificate a TLS server on 127.0.0.1:`port` presents. */
function peerFingerprint(port, ca) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const sock = nodeTls.connect({ host: HOST, port, ca, ALPNProtocols: ['http/1.1'] }, () => {
        const fp = sock.getPeerCertificate().fingerprint256;
        sock.end();
        resolve(fp);
      });
      sock.once('error', reject);
    }),
    TIMEOUT_MS,
    'a TLS handshake'
  );
}
