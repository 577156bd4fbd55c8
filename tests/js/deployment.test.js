// A deployment of several hosts on one Redis (issue 18, its first acceptance test; docs/deploy.md):
// three `socketcluster run` masters, "hosts" A, B and C on the loopback addresses 127.0.0.2,
// 127.0.0.3 and 127.0.0.4 (balancer, workers and management port of each bound to its own address:
// --host, --worker-host, --management-host), sharing the Redis at SC_REDIS_URL
// (redis://127.0.0.1:6379; scripts/test starts one) under one deployment name unique to this run
// (`--deployment js-deploy-PID-TIME-MODE`: concurrent or stale runs never mix), without --auth-key
// (the masters share the first one's key through Redis), all three started at once. Before the
// tests: every host's /health lists the other hosts' workers in `remote_workers`, and every
// balancer logged that it routes to them. The whole suite runs three times: plain; with every
// host's balancer terminating TLS (--tls-cert/--tls-key; a self-signed certificate for the three
// addresses made here with the openssl CLI; clients use wss and https, trusting it); and plain on
// a Redis Cluster of three masters instead of SC_REDIS_URL (redis-server processes on free ports
// joined by `redis-cli --cluster create`, started in that suite's `before`, killed in its
// `after`), every host given only the first master's address as --store (it finds the others,
// routes keys by hash slot and channels through sharded pub/sub: that suite's check a also shows
// in the masters' INFO commandstats that its messages went by SPUBLISH and none by PUBLISH).
//
// 0. Each host listens only on its own address (/health, and the listening sockets of its
//    processes in /proc; with TLS its balancer presents the certificate); the registry on Redis
//    lists every worker; prints how long the hosts took to see each other.
// a. A socketcluster-client through A's balancer publishes 500 messages; subscribers through B's
//    and C's receive all of them, in order, exactly once.
// b. A session with two tabs (one session cookie, presented by both clients as a browser would):
//    tab 1 through A, tab 2 through B; sessionEmit from either tab reaches the other, once;
//    sessionSet through one host reads back with sessionGet through the other.
// c. An engine.io long-polling session (the real engine.io-client and its Node polling transport,
//    no upgrade) whose open request goes to A's balancer and every later request to B's: the
//    SocketCluster handshake, an invoke and a publish (from a client through C) received all
//    travel through B; the session lives on a worker of A, so B's balancer reaches it only through
//    the deployment.
// d. A token issued through A (the demo app's `login`) authenticates a new connection through C;
//    a token signed with another key does not.
// e. SIGTERM of C: C's workers are off the registry on Redis when its master has exited, and A
//    and B stop listing them.
//
// Balancers route to every host's workers, so a client through B's balancer may be served by a
// worker on A. So that each check crosses hosts, a client is "pinned": connected through the
// host's balancer again (the misplaced connections kept open, so the balancer's least-loaded pick
// moves on) until a worker of that host serves it, which each worker's own `GET /stats` tells.
// Every wait is bounded (polls of /health and /stats, awaited events with timeouts). Every
// process started here (the Redis Cluster's too) is killed in `after`, and at exit if the file is
// stopped; the deployment's keys (and the sessions' data) are deleted from Redis then (on the
// Redis Cluster from every master in `after`; the cluster, without persistence, and its
// directory go at its end either way). The file reads and deletes keys with a RESP client of its
// own that follows a Redis Cluster's `-MOVED` replies to the master serving a key.
//
// Ours only: with SC_SERVER=reference the file is skipped.
'use strict';

const { spawn, spawnSync, execFile, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const nodeTls = require('node:tls');
const os = require('node:os');
const path = require('node:path');
const { isDeepStrictEqual, promisify } = require('node:util');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { NodeXHR, Socket: EioSocket } = require('engine.io-client');
const {
  RunProcess,
  createClient,
  closeClients,
  nextEvent,
  subscribe,
  withTimeout,
  httpRequest,
  isAlive,
  signToken,
  uniqueChannel,
} = require('./harness');

const REFERENCE = process.env.SC_SERVER === 'reference';
const REDIS_URL = process.env.SC_REDIS_URL || 'redis://127.0.0.1:6379';
/** Unique per run: pid and time (letters, digits, '-' only, as `--deployment` requires). */
const RUN_ID = `js-deploy-${process.pid}-${Date.now()}`;
const HOSTS = [
  { name: 'A', ip: '127.0.0.2', workers: 2 },
  { name: 'B', ip: '127.0.0.3', workers: 1 },
  { name: 'C', ip: '127.0.0.4', workers: 2 },
];
const MESSAGES = 500;
const CONVERGE_TIMEOUT_MS = 20000;
const WAIT_MS = 10000;
const POLL_PAUSE_MS = 25;
const DRAIN_TIMEOUT_MS = 2000;
const CLOSE_PREFIX = '#close:';

const now = () => performance.now();
const pause = (ms) => new Promise((r) => setTimeout(r, ms));
const ms = (x) => `${Math.round(x)} ms`;

// --- Redis, spoken as raw RESP over a socket (no client library). Self-contained functions: the
// exit handler runs them again in a child `node -e` (synchronously, when the file is stopped).

function respEncode(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
  return out;
}

/** One RESP2 reply at `i` of `buf`: `{ value, end }`, or null when incomplete. */
function respParse(buf, i) {
  const nl = buf.indexOf('\r\n', i);
  if (nl < 0) return null;
  const type = String.fromCharCode(buf[i]);
  const line = buf.toString('utf8', i + 1, nl);
  if (type === '+') return { value: line, end: nl + 2 };
  if (type === '-') return { value: new Error(line), end: nl + 2 };
  if (type === ':') return { value: Number(line), end: nl + 2 };
  if (type === '$') {
    const n = Number(line);
    if (n < 0) return { value: null, end: nl + 2 };
    if (buf.length < nl + 2 + n + 2) return null;
    return { value: buf.toString('utf8', nl + 2, nl + 2 + n), end: nl + 2 + n + 2 };
  }
  if (type === '*') {
    const n = Number(line);
    if (n < 0) return { value: null, end: nl + 2 };
    const arr = [];
    let end = nl + 2;
    for (let k = 0; k < n; k++) {
      const r = respParse(buf, end);
      if (!r) return null;
      arr.push(r.value);
      end = r.end;
    }
    return { value: arr, end };
  }
  throw new Error(`unexpected RESP reply: ${JSON.stringify(buf.toString('utf8', i, i + 40))}`);
}

/** A Redis connection: `cmd(...args)` resolves with the reply (an error reply rejects). */
class Resp {
  constructor(url) {
    const u = new URL(url);
    this.password = u.password ? decodeURIComponent(u.password) : null;
    this.user = u.username ? decodeURIComponent(u.username) : null;
    this.buf = Buffer.alloc(0);
    this.queue = [];
    this.sock = require('node:net').connect({ host: u.hostname, port: Number(u.port || 6379) });
    this.sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.queue.length) {
        const r = respParse(this.buf, 0);
        if (!r) break;
        this.buf = this.buf.subarray(r.end);
        const q = this.queue.shift();
        if (r.value instanceof Error) q.reject(r.value);
        else q.resolve(r.value);
      }
    });
    /** Why the connection is unusable (commands sent after it fails reject with it). */
    this.failed = null;
    const fail = (err) => {
      this.failed = this.failed || err;
      for (const q of this.queue) q.reject(err);
      this.queue = [];
    };
    this.sock.on('error', fail);
    this.sock.on('close', () => fail(new Error('the Redis connection closed')));
  }

  static async open(url) {
    const r = new Resp(url);
    if (r.password) await (r.user ? r.cmd('AUTH', r.user, r.password) : r.cmd('AUTH', r.password));
    return r;
  }

  cmd(...args) {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.queue.push({ resolve, reject });
      this.sock.write(respEncode(args));
    });
  }

  close() {
    this.sock.end();
  }
}

/**
 * Redis at `url`: one server, or a Redis Cluster (`url` any one of its masters). `cmd(...args)`
 * sends a command to that node and follows `-MOVED <slot> <host:port>` replies to the master
 * serving the key (one connection per address, opened on first use and kept), counting them in
 * `moved`; `cmdAt(addr, ...args)` starts at `addr`. `masters()`: every master's `host:port`
 * (CLUSTER SLOTS), or the node itself when it has no cluster support.
 */
class Redis {
  constructor(url) {
    this.base = new URL(url);
    this.seed = `${this.base.hostname}:${this.base.port || 6379}`;
    /** `host:port` -> Promise<Resp>. */
    this.conns = new Map();
    this.moved = 0;
  }

  static async open(url) {
    const r = new Redis(url);
    await r.conn(r.seed);
    return r;
  }

  /** The connection to `addr` (`host:port`), with the credentials of the URL given. */
  conn(addr) {
    if (!this.conns.has(addr)) {
      const u = new URL(this.base.href);
      const colon = addr.lastIndexOf(':');
      const host = addr.slice(0, colon);
      u.hostname = host.includes(':') ? `[${host}]` : host;
      u.port = addr.slice(colon + 1);
      const opened = Resp.open(u.href);
      opened.catch(() => {});
      this.conns.set(addr, opened);
    }
    return this.conns.get(addr);
  }

  cmd(...args) {
    return this.cmdAt(this.seed, ...args);
  }

  async cmdAt(addr, ...args) {
    for (let hops = 0; ; hops++) {
      try {
        return await (await this.conn(addr)).cmd(...args);
      } catch (err) {
        const m = /^MOVED \d+ (\S+)$/.exec(err.message);
        if (!m || hops >= 5) throw new Error(`${args[0]} at ${addr}: ${err.message}`);
        this.moved++;
        addr = m[1];
      }
    }
  }

  async masters() {
    let slots;
    try {
      slots = await (await this.conn(this.seed)).cmd('CLUSTER', 'SLOTS');
    } catch (err) {
      if (/cluster support disabled|unknown command/i.test(err.message)) return [this.seed];
      throw err;
    }
    // Each range: start, end, then the master as [ip, port, id, ...] (an empty ip: the seed's).
    const addrs = slots.map(([, , [ip, port]]) => `${ip || this.base.hostname}:${port}`);
    return [...new Set(addrs)].sort();
  }

  close() {
    for (const opened of this.conns.values()) opened.then((c) => c.close(), () => {});
  }
}

/**
 * Deletes every key matching one of `patterns` (SCAN on every master, then DEL of each key found:
 * on a Redis Cluster a key lives on one master, and keys of different slots cannot go in one
 * DEL); resolves with their names.
 */
async function redisDeleteMatching(url, patterns) {
  const r = await Redis.open(url);
  const deleted = [];
  try {
    for (const addr of await r.masters()) {
      for (const pattern of patterns) {
        let cursor = '0';
        do {
          const [next, keys] = await r.cmdAt(addr, 'SCAN', cursor, 'MATCH', pattern, 'COUNT', '1000');
          cursor = next;
          for (const key of keys) {
            await r.cmdAt(addr, 'DEL', key);
            deleted.push(key);
          }
        } while (cursor !== '0');
      }
    }
  } finally {
    r.close();
  }
  return deleted;
}

/**
 * The keys of every deployment started here on the Redis at REDIS_URL (deleted at the end, or at
 * exit; a Redis Cluster started here is killed instead, its keys with it).
 */
const redisPatterns = [];
let redisCleaned = true;

// --- the hosts

/** The lines a balancer logs when its master tells it to route to a worker (on stderr). */
const ROUTING_RE = /^\[balancer (\d+)\] .*routing to worker worker=(\S+)$/;
/** `socketcluster cluster listening on http://HOST:PORT/ (management http://HOST:MPORT/)` */
const LISTENING_RE =
  /^socketcluster cluster listening on (https?):\/\/([^\s/]+):(\d+)\/ \(management http:\/\/([^\s/]+):(\d+)\/\)$/;

/** Whether `pid` is alive and runs `bin` (its /proc cmdline starts with it). */
function runsBinary(pid, bin) {
  if (!isAlive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] === bin;
  } catch {
    return false;
  }
}

/** One HTTP(S) request (no connection reuse); `ca` trusted for https. Resolves `{ status, headers, body }`. */
function request(url, { ca, timeoutMs = WAIT_MS } = {}) {
  const lib = url.startsWith('https:') ? https : http;
  const reqs = [];
  const done = new Promise((resolve, reject) => {
    const req = lib.request(url, { agent: false, ...(ca ? { ca } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
    reqs.push(req);
  });
  return withTimeout(done, timeoutMs, `GET ${url}`).catch((err) => {
    for (const r of reqs) r.destroy();
    throw err;
  });
}

/**
 * A certificate for the three hosts' addresses (subjectAltName IP:127.0.0.2-4), self-signed, made
 * with the openssl CLI in a temporary directory: `{ dir, certPath, keyPath, cert }`.
 */
function makeTls() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-deploy-tls-'));
  const san = HOSTS.map((h) => `IP:${h.ip}`).join(',');
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-sha256',
      '-subj', '/CN=socketcluster deployment test',
      '-addext', `subjectAltName=${san}`,
      '-keyout', 'key.pem', '-out', 'cert.pem',
    ], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`openssl req failed: ${err.stderr || err.message}`);
  }
  return {
    dir,
    certPath: path.join(dir, 'cert.pem'),
    keyPath: path.join(dir, 'key.pem'),
    cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
  };
}

/** A TLS connection to a host's balancer, trusting its `ca`: `{ authorized, authorizationError, subjectaltname }`. */
function tlsPeer(host) {
  const done = new Promise((resolve, reject) => {
    const sock = nodeTls.connect({ host: host.ip, port: host.port, ca: host.ca }, () => {
      const cert = sock.getPeerCertificate();
      resolve({ authorized: sock.authorized, authorizationError: sock.authorizationError, subjectaltname: cert.subjectaltname });
      sock.end();
    });
    sock.once('error', reject);
  });
  return withTimeout(done, WAIT_MS, `a TLS connection to ${host.name}`);
}

/** Whether host:port accepts a TCP connection (one attempt). */
function tcpOpen(host, port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

// --- a Redis Cluster of three masters, started here for the cluster suite (as tests/src/redis.rs)

const CLUSTER_WAIT_MS = 15000;

/** `n` distinct ports of 127.0.0.1 free a moment ago (listeners held together, then closed). */
async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const srv = net.createServer();
      await new Promise((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', resolve);
      });
      servers.push(srv);
    }
    return servers.map((srv) => srv.address().port);
  } finally {
    await Promise.all(servers.map((srv) => new Promise((r) => srv.close(r))));
  }
}

/**
 * Three `redis-server` masters without replicas on free ports of 127.0.0.1, without persistence,
 * `cluster-require-full-coverage no`, their nodes-PORT.conf in a temporary directory, each with
 * its cluster bus on a free port of its own (the default, port + 10000, is past 65535 for the
 * higher ephemeral ports); joined and given the slots by `redis-cli --cluster create`, then
 * waited for (bounded) until every master says `cluster_state:ok`. `url`: the first master's,
 * the seed the hosts are given. Every cluster made is in `allRedisClusters` (killed at exit).
 */
class RedisCluster {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-deploy-redis-cluster-'));
    /** `{ port, child, exitStatus, closed, error, output }` per master. */
    this.nodes = [];
    this.startMs = null;
  }

  get ports() {
    return this.nodes.map((n) => n.port);
  }

  get addrs() {
    return this.ports.map((p) => `127.0.0.1:${p}`);
  }

  get url() {
    return `redis://${this.addrs[0]}`;
  }

  static async start() {
    const c = new RedisCluster();
    allRedisClusters.push(c);
    const t0 = now();
    try {
      await c.boot();
    } catch (err) {
      err.message += `\n--- the Redis Cluster (${c.addrs.join(' ')}):\n${c.tail()}`;
      await c.stop();
      throw err;
    }
    c.startMs = now() - t0;
    return c;
  }

  async boot() {
    const ports = await freePorts(6);
    for (let i = 0; i < 3; i++) this.spawnNode(ports[i], ports[3 + i]);
    await Promise.all(this.nodes.map((n) => this.waitListening(n)));
    try {
      await promisify(execFile)(
        'redis-cli',
        ['--cluster', 'create', ...this.addrs, '--cluster-replicas', '0', '--cluster-yes'],
        { timeout: CLUSTER_WAIT_MS, env: { ...process.env, NO_COLOR: '1' } }
      );
    } catch (err) {
      throw new Error(`redis-cli --cluster create ${this.addrs.join(' ')} failed (${err.code === 'ENOENT' ? 'redis-cli not installed' : err.signal || `exit ${err.code}`}): ${err.stdout || ''}${err.stderr || ''}`);
    }
    const redis = new Redis(this.url);
    try {
      for (const addr of this.addrs) {
        const deadline = now() + CLUSTER_WAIT_MS;
        let info = '';
        for (;;) {
          info = await withTimeout(redis.cmdAt(addr, 'CLUSTER', 'INFO'), WAIT_MS, `CLUSTER INFO of ${addr}`);
          if (/^cluster_state:ok\r?$/m.test(info)) break;
          if (now() > deadline) throw new Error(`the Redis Cluster master ${addr} did not say cluster_state:ok within ${CLUSTER_WAIT_MS} ms: ${info}`);
          await pause(50);
        }
      }
    } finally {
      redis.close();
    }
  }

  spawnNode(port, busPort) {
    const node = { port, child: null, exitStatus: null, error: null, output: [] };
    this.nodes.push(node);
    const child = spawn('redis-server', [
      '--bind', '127.0.0.1', '--port', String(port), '--cluster-port', String(busPort),
      '--save', '', '--appendonly', 'no',
      '--cluster-enabled', 'yes', '--cluster-config-file', path.join(this.dir, `nodes-${port}.conf`),
      '--cluster-require-full-coverage', 'no', '--dir', this.dir,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    node.child = child;
    child.once('error', (err) => {
      node.error = err.code === 'ENOENT' ? new Error('redis-server is not installed (apt-get install redis-server)') : err;
    });
    child.once('exit', (code, signal) => {
      node.exitStatus = { code, signal };
    });
    node.closed = new Promise((resolve) => child.once('close', resolve));
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (d) => {
        node.output.push(...d.split('\n').filter((l) => l.trim()));
        node.output.splice(0, Math.max(0, node.output.length - 20));
      });
    }
  }

  /** Resolves once the node accepts connections (bounded); rejects when it exited or cannot start. */
  async waitListening(node) {
    const deadline = now() + CLUSTER_WAIT_MS;
    for (;;) {
      if (node.error) throw node.error;
      if (node.exitStatus) throw new Error(`redis-server on port ${node.port} exited (${JSON.stringify(node.exitStatus)})`);
      if (await tcpOpen('127.0.0.1', node.port)) return;
      if (now() > deadline) throw new Error(`redis-server on port ${node.port} did not accept connections within ${CLUSTER_WAIT_MS} ms`);
      await pause(POLL_PAUSE_MS);
    }
  }

  /** The last lines each master printed, for failure messages. */
  tail() {
    return this.nodes.map((n) => `[redis-server :${n.port}]\n${n.output.join('\n')}`).join('\n');
  }

  /** SIGKILL to every master still running, synchronously (the exit handler too); the directory removed. */
  killNow() {
    for (const n of this.nodes) {
      if (n.child && n.child.pid && n.exitStatus === null) {
        try {
          process.kill(n.child.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** killNow(), then waits (bounded) until every master is reaped. Never throws. */
  async stop() {
    this.killNow();
    const running = this.nodes.filter((n) => n.child && n.child.pid);
    await Promise.all(running.map((n) => withTimeout(n.closed, 10000, `redis-server on port ${n.port} to exit`).catch(() => {})));
  }
}

/** Every Redis Cluster started here (killed at exit, whatever stops the file). */
const allRedisClusters = [];

/**
 * One host: `socketcluster run` on its own loopback address, in the deployment, with Redis as its
 * store (`store`: REDIS_URL, or a Redis Cluster's seed) and no auth key. A RunProcess (its line
 * waiters, /health, stop() and cleanup() apply), with its own command line and start:
 * RunProcess's assume 127.0.0.1.
 */
class HostProcess extends RunProcess {
  /** `tls`: `{ certPath, keyPath, cert }`, the balancers terminating TLS with them. */
  constructor({ name, ip, workers, deployment, store, tls = null }) {
    super({ workers, store, balancers: 1, drainTimeoutMs: DRAIN_TIMEOUT_MS });
    this.name = name;
    this.ip = ip;
    this.deployment = deployment;
    this.tls = tls;
    /** Every stderr line (the log lines of the master and its children). */
    this.errLines = [];
    this.startedAt = null;
    this.listeningAt = null;
  }

  /** Read by harness.js createClient: wss, trusting `ca`. */
  get secure() {
    return !!this.tls;
  }

  get ca() {
    return this.tls ? this.tls.cert : undefined;
  }

  get url() {
    return `${this.tls ? 'wss' : 'ws'}://${this.ip}:${this.port}/socketcluster/`;
  }

  get httpUrl() {
    return `${this.tls ? 'https' : 'http'}://${this.ip}:${this.port}`;
  }

  get managementUrl() {
    return `http://${this.ip}:${this.managementPort}`;
  }

  args() {
    return [
      'run',
      '--host', this.ip,
      '--port', '0',
      '--worker-host', this.ip,
      '--management-host', this.ip,
      '--management-port', '0',
      '--workers', String(this.workerCount),
      '--balancers', String(this.balancerCount),
      '--store', this.store,
      '--deployment', this.deployment,
      '--drain-timeout-ms', String(this.drainTimeoutMs),
      ...(this.tls ? ['--tls-cert', this.tls.certPath, '--tls-key', this.tls.keyPath] : []),
    ];
  }

  /**
   * A new session cookie, as a browser gets it: from the response to `GET /stats` through this
   * host's balancer (over TLS when it terminates TLS).
   */
  async newSessionCookie() {
    const res = await request(`${this.httpUrl}/stats`, { ca: this.ca });
    const pair = (res.headers['set-cookie'] || []).map((c) => c.split(';')[0].trim()).find((p) => /^n\/[^/=]+\/ssid=./.test(p));
    assert.ok(pair, `a session cookie in the response to GET /stats through ${this.name}: ${res.status} ${JSON.stringify(res.headers)}`);
    return pair;
  }

  async start() {
    const env = { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' };
    // No auth key from the environment either: the masters must share one through Redis.
    delete env.SC_AUTH_KEY;
    delete env.SC_CLUSTER_ROLE;
    delete env.SC_TLS_KEY_PASSPHRASE;
    this.startedAt = now();
    const child = spawn(this.bin, this.args(), { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
    this.child = child;
    child.once('exit', (code, signal) => {
      this.exitStatus = { code, signal };
    });
    this.closed = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
    const spawnError = new Promise((_, reject) => {
      child.once('error', (err) => reject(new Error(`cannot start ${this.bin}: ${err.message}`)));
    });
    spawnError.catch(() => {});
    const read = (stream, onLine) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let idx;
        while ((idx = buf.indexOf('\n')) !== -1) {
          const line = buf.slice(0, idx).replace(/\r$/, '');
          buf = buf.slice(idx + 1);
          this.output.push(line);
          if (this.output.length > 500) this.output.shift();
          onLine(line);
        }
      });
    };
    read(child.stdout, (line) => this._onStdoutLine(line));
    read(child.stderr, (line) => this.errLines.push(line));
    try {
      const m = await Promise.race([this.waitForLine(LISTENING_RE, 30000, 0), spawnError]);
      this.listeningAt = m.at;
      const [, scheme, host, port, mhost, mport] = m;
      if (host !== this.ip || mhost !== this.ip) throw new Error(`listening line names ${host} / ${mhost}, expected ${this.ip}: ${m.input}`);
      if (scheme !== (this.tls ? 'https' : 'http')) throw new Error(`listening line names ${scheme}: ${m.input}`);
      this.port = Number(port);
      this.managementPort = Number(mport);
      for (const p of [this.port, this.managementPort]) {
        if (!(await tcpOpen(this.ip, p))) throw new Error(`the listening line was printed but ${this.ip}:${p} refuses connections`);
      }
    } catch (err) {
      const tail = this.tail();
      await this.cleanup();
      err.message += `\n--- host ${this.name}: socketcluster ${this.args().join(' ')}\n${tail}`;
      throw err;
    }
    return this;
  }

  /** The remote workers this host's balancers logged they route to. */
  balancerRoutes() {
    const routes = new Set();
    for (const line of this.errLines) {
      const m = ROUTING_RE.exec(line);
      if (m) routes.add(m[2]);
    }
    return routes;
  }

  /**
   * SIGKILL, synchronously (the exit handler), to the master's group while the master runs, and
   * to every child it named that /proc shows still running our binary (not a reused pid).
   */
  killNow() {
    if (!this.child) return;
    const targets = [...this.knownPids].filter((pid) => runsBinary(pid, this.bin));
    if (this.exitStatus === null) targets.unshift(-this.child.pid);
    for (const pid of targets) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

/**
 * The hosts of the suite that runs (the two suites, plain and TLS, run one after the other), made
 * in its `before` (SC_BIN is needed only when a suite runs); `allHosts` every host ever made.
 */
let hosts = [];
let A;
let B;
let C;
/** The deployment of the suite that runs: its name and its keys on Redis. */
let deployment = null;
const allHosts = [];

// Whatever ends this process (a failure, the runner's timeout signal): no host left running, no
// key left on Redis. `after` does the same in order; this is the last resort.
process.on('exit', () => {
  for (const h of allHosts) h.killNow();
  for (const c of allRedisClusters) c.killNow();
  if (!redisCleaned) {
    const code = [
      respEncode, respParse, Resp, Redis, redisDeleteMatching,
    ].map(String).join('\n') +
      `\nredisDeleteMatching(${JSON.stringify(REDIS_URL)}, ${JSON.stringify(redisPatterns)}).catch(() => {}).finally(() => process.exit(0));`;
    spawnSync(process.execPath, ['-e', code], { stdio: 'ignore', timeout: 5000 });
  }
});

// --- what the hosts say about themselves

/** /health of every host (the host's children, its remote_workers). */
function healthAll() {
  return Promise.all(hosts.filter((h) => h.isRunning()).map(async (h) => ({ host: h, health: await h.health() })));
}

/** Every worker of the deployment: `{ host, addr, id, pid }`, from the hosts' /health. */
let workers = [];

async function readWorkers() {
  const all = [];
  for (const { host, health } of await healthAll()) {
    for (const c of health.children) {
      if (c.role === 'worker') all.push({ host, addr: c.addr, id: c.id, pid: c.pid });
    }
  }
  return all;
}

const workersOf = (host) => workers.filter((w) => w.host === host).map((w) => w.addr);
const otherWorkers = (host, among = hosts) => among.filter((h) => h !== host).flatMap(workersOf);

/** `GET /stats` of every worker, on its own address: addr -> { clients, pending, engineio_sessions }. */
async function workerStats() {
  const entries = await Promise.all(
    workers.map(async (w) => {
      const res = await httpRequest(`http://${w.addr}/stats`, { timeoutMs: WAIT_MS });
      assert.equal(res.status, 200, `GET /stats of worker ${w.addr}: ${res.status} ${res.body}`);
      return [w.addr, JSON.parse(res.body)];
    })
  );
  return new Map(entries);
}

/** Polls `probe()` until `pred(result)` holds, for at most `timeoutMs`; a short pause between polls. */
async function pollUntil(probe, pred, timeoutMs, what) {
  const deadline = now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (pred(last)) return last;
    if (now() > deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms; last seen: ${JSON.stringify(last, (k, v) => (v instanceof Map ? Object.fromEntries(v) : v instanceof HostProcess ? v.name : v))}`);
    }
    await pause(POLL_PAUSE_MS);
  }
}

/** Waits until no worker holds a socket or an engine.io session (the previous test's are gone). */
function quiesce() {
  return pollUntil(
    workerStats,
    (stats) => [...stats.values()].every((s) => s.clients === 0 && s.pending === 0 && s.engineio_sessions === 0),
    15000,
    'every worker without clients and engine.io sessions'
  );
}

/** The worker whose `field` in /stats grew by one since `before` (polled until one did). */
async function grownWorker(before, field) {
  const stats = await pollUntil(
    workerStats,
    (s) => [...s].some(([addr, v]) => v[field] > before.get(addr)[field]),
    WAIT_MS,
    `a worker's ${field} to grow`
  );
  const grown = [...stats].filter(([addr, v]) => v[field] !== before.get(addr)[field]);
  assert.equal(grown.length, 1, `one new ${field} on one worker, nothing else changed: before ${JSON.stringify(Object.fromEntries(before))}, now ${JSON.stringify(Object.fromEntries(stats))}`);
  const [addr, v] = grown[0];
  assert.equal(v[field], before.get(addr)[field] + 1, `worker ${addr}: one more ${field}`);
  return workers.find((w) => w.addr === addr);
}

/**
 * A socketcluster-client connected through `via`'s balancer and served by a worker of `host`
 * (`via` by default). `prepare(socket)` runs before each connect (say, to store a token). The
 * connections that landed elsewhere stay open (`extras`; closed with the test's clients) so that
 * the balancer's least-loaded pick moves on to another worker.
 */
async function connectPinned(via, { host = via, prepare, options = {}, extras = [] } = {}) {
  const tries = workers.length * 2;
  const seen = [];
  for (let attempt = 0; attempt < tries; attempt++) {
    const before = await workerStats();
    const socket = createClient(via, { hostname: via.ip, ...options });
    if (prepare) await prepare(socket);
    const connected = nextEvent(socket, 'connect', WAIT_MS);
    socket.connect();
    const status = await connected;
    const worker = await grownWorker(before, 'clients');
    if (worker.host === host) return { socket, status, worker, attempts: attempt + 1 };
    seen.push(`${worker.host.name}/${worker.addr}`);
    extras.push(socket);
  }
  throw new Error(`no connection through ${via.name}'s balancer reached a worker of ${host.name} in ${tries} tries: ${seen.join(', ')}`);
}

// --- engine.io long-polling whose requests after the open go to another host

/**
 * engine.io-client's long-polling transport in Node (XMLHttpRequest, the one it picks for
 * `polling`) with every request after the open (the ones with a `sid`) sent to the base
 * `opts.thenTo` instead of the one the socket was made with; `opts.log` gets `{ method, url }`
 * of every request.
 */
class SwitchingXHR extends NodeXHR {
  uri() {
    const uri = super.uri();
    if (!this.query.sid || !this.opts.thenTo) return uri;
    const u = new URL(uri);
    const to = new URL(this.opts.thenTo);
    u.hostname = to.hostname;
    u.port = to.port;
    return u.toString();
  }

  request(opts = {}) {
    this.opts.log.push({ method: opts.method || 'GET', url: this.uri() });
    return super.request(opts);
  }
}

/** SocketCluster over one engine.io-client socket (frames as engine.io messages, see engineio.test.js). */
class EioSession {
  constructor(openVia, thenVia) {
    this.cid = 0;
    this.pending = new Map();
    this.frames = [];
    this.waiters = [];
    this.problems = [];
    this.requests = [];
    this.closing = false;
    this.socket = new EioSocket(openVia.httpUrl, {
      path: '/engine.io/',
      transports: [SwitchingXHR],
      upgrade: false,
      thenTo: thenVia.httpUrl,
      log: this.requests,
      ...(openVia.ca ? { ca: openVia.ca } : {}),
    });
    this.opened = new Promise((resolve, reject) => {
      this.socket.once('open', resolve);
      this.socket.once('close', (reason) => reject(new Error(`closed before open: ${reason}`)));
    });
    this.opened.catch(() => {});
    this.socket.on('error', (err) => this.problems.push(`error: ${err && err.message} ${err && err.description}`));
    this.socket.on('close', (reason, description) => {
      if (!this.closing) this.problems.push(`close: ${reason} ${description && (description.message || description.description || '')}`);
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
        return;
      }
      this.frames.push(frame);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    });
  }

  invoke(event, data, timeoutMs = WAIT_MS) {
    const cid = ++this.cid;
    const reply = new Promise((resolve, reject) => this.pending.set(cid, { resolve, reject }));
    this.socket.send(JSON.stringify(data === undefined ? { event, cid } : { event, data, cid }));
    return withTimeout(reply, timeoutMs, `the reply to ${event} (cid ${cid}, sid ${this.socket.id})`);
  }

  /** The next received frame (not a reply) matching `pred`. */
  next(pred, what, timeoutMs = WAIT_MS) {
    const find = async () => {
      for (;;) {
        const i = this.frames.findIndex(pred);
        if (i !== -1) return this.frames.splice(i, 1)[0];
        await new Promise((r) => this.waiters.push(r));
      }
    };
    return withTimeout(find(), timeoutMs, what);
  }

  close() {
    this.closing = true;
    this.socket.close();
  }
}

// --- socketcluster-client helpers

/** Collects a channel's messages until `sentinel` arrives (bounded); the consumer starts now. */
function collectUntil(channel, sentinel, timeoutMs, what) {
  const consumer = channel.createConsumer();
  const out = [];
  const run = (async () => {
    for (;;) {
      const { value, done } = await consumer.next();
      if (done) throw new Error(`${what}: the channel ended after ${out.length} messages`);
      if (isDeepStrictEqual(value, sentinel)) return out;
      out.push(value);
    }
  })();
  return withTimeout(run, timeoutMs, { toString: () => `${what} (got ${out.length})` }).finally(() => consumer.return());
}

/** The same for a receiver (transmits of `event`). */
function receiveUntil(socket, event, sentinel, timeoutMs, what) {
  return collectUntil(socket.receiver(event), sentinel, timeoutMs, what);
}


/** Pids of a host's processes (master and children) and the addresses they listen on (/proc). */
function listeningAddresses(pids) {
  const inodes = new Set();
  for (const pid of pids) {
    let fds = [];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // closed meanwhile
      }
    }
  }
  const out = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9])) continue; // 0A: LISTEN
      const [hexIp, hexPort] = f[1].split(':');
      const ip =
        hexIp.length === 8
          ? [3, 2, 1, 0].map((k) => parseInt(hexIp.slice(k * 2, k * 2 + 2), 16)).join('.')
          : `ipv6:${hexIp}`;
      out.push(`${ip}:${parseInt(hexPort, 16)}`);
    }
  }
  return out.sort();
}

const MODES = [
  { key: 'plain', title: '', tls: false, cluster: false, tag: 'deployment' },
  { key: 'tls', title: ', TLS at the balancers (--tls-cert/--tls-key)', tls: true, cluster: false, tag: 'deployment tls' },
  { key: 'cluster', title: ' on a Redis Cluster (3 masters)', tls: false, cluster: true, tag: 'deployment cluster' },
];

for (const mode of MODES) describe(`a deployment of three hosts on one Redis (--deployment)${mode.title}`, { skip: REFERENCE && 'ours only', timeout: 180000 }, () => {
  const P = mode.tag;
  const figures = { converge: null };
  let tls = null;
  /** Sockets of the test that runs; closed at its end. */
  let sockets = [];
  let eioSessions = [];
  const sessionIds = new Set();
  /** The Redis Cluster of the cluster suite (started in `before`), or null. */
  let cluster = null;
  /** The hosts' --store: REDIS_URL, or the Redis Cluster's first master. */
  let storeUrl = REDIS_URL;
  /** This file's client of that Redis (a Redis). */
  let redis = null;

  const track = (...ss) => {
    sockets.push(...ss);
    return ss[0];
  };
  /** Per master of the Redis Cluster: the calls of SPUBLISH and PUBLISH so far (INFO commandstats). */
  const publishCalls = async () => {
    const out = new Map();
    for (const addr of await redis.masters()) {
      const info = await redis.cmdAt(addr, 'INFO', 'commandstats');
      const calls = (name) => {
        const m = new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(info);
        return m ? Number(m[1]) : 0;
      };
      out.set(addr, { spublish: calls('spublish'), publish: calls('publish') });
    }
    return out;
  };
  const endTest = () => {
    closeClients(sockets);
    sockets = [];
    for (const s of eioSessions) s.close();
    eioSessions = [];
  };

  before(async () => {
    // Nothing of the previous suite's is this one's to clean up if this `before` fails early.
    deployment = null;
    hosts = [];
    if (mode.cluster) cluster = await RedisCluster.start();
    storeUrl = cluster ? cluster.url : REDIS_URL;
    redis = await Redis.open(storeUrl);
    assert.equal(await redis.cmd('PING'), 'PONG', `Redis at ${storeUrl}`);
    if (cluster) assert.deepEqual(await redis.masters(), [...cluster.addrs].sort(), 'CLUSTER SLOTS names the three masters');
    const name = `${RUN_ID}-${mode.key}`;
    deployment = {
      name,
      pattern: `sc:cluster:{${name}}:*`,
      registryKey: `sc:cluster:{${name}}:workers`,
      authKeyKey: `sc:cluster:{${name}}:auth-key`,
    };
    if (!cluster) {
      redisPatterns.push(deployment.pattern);
      redisCleaned = false;
    }
    if (mode.tls) tls = makeTls();
    hosts = HOSTS.map((h) => new HostProcess({ ...h, deployment: name, store: storeUrl, tls }));
    allHosts.push(...hosts);
    [A, B, C] = hosts;
    // All three at once: the masters race for the first auth key on Redis.
    await Promise.all(hosts.map((h) => h.start()));
    const allStarted = Math.max(...hosts.map((h) => h.listeningAt));
    workers = await readWorkers();
    // Every host lists every other host's workers, and its balancer said it routes to them.
    const perHost = new Map();
    await pollUntil(
      healthAll,
      (all) => {
        let done = all.length === hosts.length; // every master still running
        for (const { host, health } of all) {
          const want = otherWorkers(host).sort();
          const got = [...(health.remote_workers || [])].sort();
          const routed = host.balancerRoutes();
          if (isDeepStrictEqual(got, want) && want.every((w) => routed.has(w))) {
            if (!perHost.has(host)) perHost.set(host, now());
          } else {
            done = false;
          }
        }
        return done;
      },
      CONVERGE_TIMEOUT_MS,
      'every host listing the other hosts\' workers in remote_workers, its balancer routing to them'
    );
    figures.converge = {
      spread: allStarted - Math.min(...hosts.map((h) => h.startedAt)),
      perHost: hosts.map((h) => `${h.name} ${ms(perHost.get(h) - allStarted)}`),
      all: Math.max(...perHost.values()) - allStarted,
    };
  });

  after(async () => {
    endTest();
    await Promise.all(hosts.map((h) => h.cleanup()));
    if (tls) fs.rmSync(tls.dir, { recursive: true, force: true });
    try {
      if (deployment) {
        const deleted = await redisDeleteMatching(storeUrl, [deployment.pattern, ...[...sessionIds].map((id) => `sc:session:{${id}}*`)]);
        if (!cluster) {
          redisPatterns.splice(redisPatterns.indexOf(deployment.pattern), 1);
          redisCleaned = redisPatterns.length === 0;
        }
        const moved = cluster ? ` (this file's client followed ${redis.moved} MOVED in the suite)` : '';
        console.log(`${P}: deleted from ${cluster ? 'the Redis Cluster (every master)' : 'Redis'}: ${deleted.join(', ') || '(nothing)'}${moved}`);
      }
    } finally {
      if (redis) redis.close();
      if (cluster) {
        await cluster.stop();
        console.log(`${P}: the Redis Cluster's masters (${cluster.addrs.join(' ')}) killed, ${cluster.dir} removed`);
      }
    }
  });

  it('each host listens on its own address only, and lists the other hosts\' workers', async () => {
    for (const { host, health } of await healthAll()) {
      assert.equal(health.status, 'ok', `${host.name} /health: ${JSON.stringify(health)}`);
      for (const c of health.children) {
        assert.equal(c.addr.split(':')[0], host.ip, `${host.name}'s ${c.role} ${c.id} on ${host.ip}: ${JSON.stringify(c)}`);
      }
      assert.deepEqual([...health.remote_workers].sort(), otherWorkers(host).sort(), `${host.name} remote_workers`);
      if (mode.tls) {
        // The balancer's port speaks TLS with the given certificate (verified against it).
        const peer = await tlsPeer(host);
        assert.equal(peer.authorized, true, `${host.name}: ${peer.authorizationError}`);
        assert.match(peer.subjectaltname, new RegExp(`IP Address:${host.ip.replace(/\./g, '\\.')}(,|$)`), `${host.name}'s certificate`);
      }
      const pids = [host.pid, ...health.children.map((c) => c.pid)];
      const listening = listeningAddresses(pids);
      assert.ok(listening.length >= 1 + host.workerCount + 1, `${host.name} listens: ${listening}`);
      for (const addr of listening) assert.equal(addr.split(':')[0], host.ip, `${host.name} (pids ${pids}) listens on ${addr}: ${listening}`);
      // /metrics: this host's children only (a child's series appear with its first report).
      const m = await pollUntil(
        () => host.metrics(),
        (mm) => mm.find('sc_connections', { role: 'worker' }).length === host.workerCount && mm.find('sc_balancer_upgrades_total', { role: 'balancer' }).length === 1,
        WAIT_MS,
        `${host.name}'s /metrics with a sc_connections series per worker and the balancer's upgrades`
      );
      assert.equal(m.sum('sc_restarts_total', { role: 'worker' }), 0, `${host.name}: no worker restarted`);
      console.log(`${P}: host ${host.name} ${host.ip}: balancer :${host.port}, management :${host.managementPort}, workers ${workersOf(host).join(' ')}; listening ${listening.join(' ')}; remote_workers ${health.remote_workers.join(' ')}`);
    }
    const registry = await redis.cmd('HGETALL', deployment.registryKey);
    const fields = registry.filter((_, i) => i % 2 === 0).sort();
    assert.deepEqual(fields, workers.map((w) => w.addr).sort(), `the registry ${deployment.registryKey} on Redis`);
    const authKeys = await redis.cmd('LLEN', deployment.authKeyKey);
    assert.ok(authKeys >= 1, `${deployment.authKeyKey} holds the shared key`);
    const f = figures.converge;
    console.log(
      `${P}: ${hosts.length} hosts (${hosts.map((h) => `${h.name}:${h.workerCount}w`).join(' ')}) started at once (listening within ${ms(f.spread)}); ` +
        `all saw each other ${ms(f.all)} after the last was listening (${f.perHost.join(', ')}); ` +
        `registry on Redis: ${fields.length} workers; auth keys pushed: ${authKeys}`
    );
    if (cluster) {
      const ranges = new Map();
      for (const [start, end, [ip, port]] of await redis.cmd('CLUSTER', 'SLOTS')) {
        const addr = `${ip}:${port}`;
        ranges.set(addr, [...(ranges.get(addr) || []), `${start}-${end}`]);
      }
      const slot = await redis.cmd('CLUSTER', 'KEYSLOT', deployment.registryKey);
      const owner = [...ranges].find(([, rs]) => rs.some((r) => {
        const [lo, hi] = r.split('-').map(Number);
        return slot >= lo && slot <= hi;
      }));
      console.log(
        `${P}: Redis Cluster of ${cluster.addrs.length} masters started in ${ms(cluster.startMs)} (${[...ranges].map(([a, rs]) => `${a} slots ${rs.join(',')}`).join('; ')}); ` +
          `every host's --store ${storeUrl}; the deployment's keys in slot ${slot} on ${owner ? owner[0] : '?'} (this file's client followed ${redis.moved} MOVED so far)`
      );
    }
  });

  it(`a. ${MESSAGES} messages published through A reach subscribers through B and C, in order, exactly once`, async () => {
    await quiesce();
    const extras = [];
    try {
      const channel = uniqueChannel('deploy-a');
      const pub = await connectPinned(A, { extras });
      const subB = await connectPinned(B, { extras });
      const subC = await connectPinned(C, { extras });
      track(pub.socket, subB.socket, subC.socket);
      const chB = await subscribe(subB.socket, channel);
      const chC = await subscribe(subC.socket, channel);
      const expected = Array.from({ length: MESSAGES }, (_, i) => ({ i }));
      const END = { end: true };
      const callsBefore = cluster ? await publishCalls() : null;
      const t0 = now();
      const done = {};
      const gotB = collectUntil(chB, END, 30000, 'the messages on B').then((m) => ((done.B = now()), m));
      const gotC = collectUntil(chC, END, 30000, 'the messages on C').then((m) => ((done.C = now()), m));
      await withTimeout(Promise.all(expected.map((m) => pub.socket.invokePublish(channel, m))), 30000, `${MESSAGES} publishes acknowledged`);
      const published = now();
      await pub.socket.invokePublish(channel, END);
      const [b, c] = await Promise.all([gotB, gotC]);
      assert.equal(b.length, MESSAGES, `B received ${b.length} before the end marker`);
      assert.deepEqual(b, expected, 'B: every message once, in order');
      assert.equal(c.length, MESSAGES, `C received ${c.length} before the end marker`);
      assert.deepEqual(c, expected, 'C: every message once, in order');
      console.log(
        `${P} a: publisher on ${pub.worker.host.name}/${pub.worker.addr}, subscribers on ${subB.worker.host.name}/${subB.worker.addr} and ${subC.worker.host.name}/${subC.worker.addr} ` +
          `(connections to pin them: ${pub.attempts}, ${subB.attempts}, ${subC.attempts}); ${MESSAGES} publishes acknowledged in ${ms(published - t0)}; ` +
          `received ${b.length} on B (all within ${ms(done.B - t0)}) and ${c.length} on C (${ms(done.C - t0)}), in order, none twice`
      );
      if (cluster) {
        // The channel's traffic went through sharded pub/sub: SPUBLISH on the masters, no PUBLISH.
        const callsAfter = await publishCalls();
        const per = [...callsAfter].map(([addr, v]) => ({ addr, spublish: v.spublish - callsBefore.get(addr).spublish, publish: v.publish }));
        const spublished = per.reduce((sum, v) => sum + v.spublish, 0);
        assert.ok(spublished > 0, `SPUBLISH calls on the masters during check a: ${JSON.stringify(per)}`);
        for (const v of per) assert.equal(v.publish, 0, `PUBLISH calls on ${v.addr} (since it started)`);
        const slot = await redis.cmd('CLUSTER', 'KEYSLOT', channel);
        console.log(
          `${P} a: sharded pub/sub: ${spublished} SPUBLISH calls on the masters during the ${MESSAGES + 1} publishes (${per.map((v) => `${v.addr} ${v.spublish}`).join(', ')}; ` +
            `the channel's slot ${slot}); PUBLISH calls since the masters started: ${per.map((v) => v.publish).join(', ')} (INFO commandstats)`
        );
      }
    } finally {
      closeClients(extras);
      endTest();
    }
  });

  it('b. a session with tab 1 through A and tab 2 through B: sessionEmit and sessionSet/sessionGet cross hosts', async () => {
    await quiesce();
    const extras = [];
    try {
      // The cookie as a browser gets it: from a response through A's balancer; both tabs present it.
      const cookie = await A.newSessionCookie();
      const options = { wsOptions: { headers: { Cookie: cookie } } };
      const tab1 = await connectPinned(A, { options, extras });
      const tab2 = await connectPinned(B, { options, extras });
      track(tab1.socket, tab2.socket);
      const [id1, id2] = await Promise.all([tab1.socket.invoke('sessionId'), tab2.socket.invoke('sessionId')]);
      sessionIds.add(id1);
      sessionIds.add(id2);
      assert.equal(typeof id1, 'string');
      assert.equal(id2, id1, "tab 2 (host B) is in tab 1's session (host A): the cookie is accepted on both");

      // sessionEmit from tab 1 reaches tab 2 (and tab 1), once: an end marker emitted after it.
      const note = { from: 'tab1', n: crypto.randomBytes(4).toString('hex') };
      const END = { end: 'tab1' };
      const t0 = now();
      let at2 = null;
      const on2 = receiveUntil(tab2.socket, 'note', END, WAIT_MS, "tab 2's notes").then((n) => ((at2 = now()), n));
      const on1 = receiveUntil(tab1.socket, 'note', END, WAIT_MS, "tab 1's notes");
      await tab1.socket.invoke('sessionEmit', { event: 'note', data: note });
      await tab1.socket.invoke('sessionEmit', { event: 'note', data: END });
      assert.deepEqual(await on2, [note], 'tab 2 got the note once');
      assert.deepEqual(await on1, [note], 'tab 1 got its own note once');
      const emitMs = at2 - t0;

      // And back: from tab 2 to tab 1.
      const back = { from: 'tab2' };
      const END2 = { end: 'tab2' };
      const backOn1 = receiveUntil(tab1.socket, 'note', END2, WAIT_MS, "tab 1's notes from tab 2");
      await tab2.socket.invoke('sessionEmit', { event: 'note', data: back });
      await tab2.socket.invoke('sessionEmit', { event: 'note', data: END2 });
      assert.deepEqual(await backOn1, [back], 'tab 1 got the note of tab 2 once');

      // Session data: set through A, read through B; and the other way.
      const cart = { items: [1, 2, 3], who: 'tab1 on A' };
      await tab1.socket.invoke('sessionSet', { key: 'cart', value: cart });
      assert.deepEqual(await tab2.socket.invoke('sessionGet', { key: 'cart' }), cart, 'sessionGet on B reads what sessionSet on A stored');
      await tab2.socket.invoke('sessionSet', { key: 'color', value: 'blue' });
      assert.equal(await tab1.socket.invoke('sessionGet', { key: 'color' }), 'blue', 'sessionGet on A reads what sessionSet on B stored');
      console.log(
        `${P} b: session ${id1.slice(0, 8)}… tab 1 on ${tab1.worker.host.name}/${tab1.worker.addr}, tab 2 on ${tab2.worker.host.name}/${tab2.worker.addr}; ` +
          `sessionEmit A→B delivered in ${ms(emitMs)}, B→A too; sessionSet/sessionGet across A and B both ways`
      );
    } finally {
      closeClients(extras);
      endTest();
    }
  });

  it("c. an engine.io long-polling session opened through A's balancer goes on through B's", async () => {
    await quiesce();
    try {
      const publisher = track((await connectPinned(C)).socket);
      // Pin the session to a worker of A (opens that landed elsewhere stay open until the end):
      // B's balancer then reaches it only through the deployment.
      let session = null;
      let worker = null;
      let attempts = 0;
      for (; attempts < workers.length * 2 && !session; attempts++) {
        const before = await workerStats();
        const s = new EioSession(A, B);
        eioSessions.push(s);
        await withTimeout(s.opened, WAIT_MS, 'engine.io open through A');
        const w = await grownWorker(before, 'engineio_sessions');
        if (w.host === A) {
          session = s;
          worker = w;
        }
      }
      assert.ok(session, `no engine.io session opened through A landed on a worker of A in ${attempts} tries`);
      const sid = session.socket.id;
      assert.match(sid, /\.[0-9a-f]+$/, `the sid carries its worker's tag: ${sid}`);

      const hs = await session.invoke('#handshake', { authToken: null });
      assert.equal(hs.error, undefined, JSON.stringify(hs));
      assert.equal(typeof hs.data.id, 'string');
      const greet = await session.next((f) => f.event === 'greet', 'the greet event');
      assert.equal(greet.data, 'hello world');
      const payload = { over: 'B', text: 'é🦀', list: [1, 2, 3] };
      const echo = await session.invoke('echo', payload);
      assert.deepEqual(echo.data, payload, 'echo through B');
      const channel = uniqueChannel('deploy-c');
      const sub = await session.invoke('#subscribe', { channel });
      assert.equal(sub.error, undefined, JSON.stringify(sub));
      const message = { from: 'C', n: 42 };
      const received = session.next((f) => f.event === '#publish' && f.data && f.data.channel === channel, 'the publish');
      await publisher.invokePublish(channel, message);
      assert.deepEqual((await received).data.data, message, 'the publish (from a client through C) received by the session through B');
      assert.deepEqual(session.problems, [], 'no engine.io error or close');

      const log = session.requests;
      assert.ok(log.length >= 4, `requests: ${JSON.stringify(log)}`);
      const [open, ...rest] = log;
      const hostOf = (u) => new URL(u).host;
      assert.equal(open.method, 'GET');
      assert.equal(hostOf(open.url), `${A.ip}:${A.port}`, `the open went to A: ${open.url}`);
      assert.ok(!/[?&]sid=/.test(open.url), 'the open has no sid');
      for (const r of log) assert.equal(new URL(r.url).protocol, mode.tls ? 'https:' : 'http:', `${r.method} ${r.url}`);
      for (const r of rest) {
        assert.equal(hostOf(r.url), `${B.ip}:${B.port}`, `after the open, every request goes to B: ${r.method} ${r.url}`);
        assert.ok(r.url.includes(`sid=${encodeURIComponent(sid)}`) || r.url.includes(`sid=${sid}`), `with the sid: ${r.url}`);
      }
      const posts = rest.filter((r) => r.method === 'POST').length;
      console.log(
        `${P} c: engine.io session ${sid} on ${worker.host.name}/${worker.addr} (opens to pin it: ${attempts}); ` +
          `open GET through A, then ${rest.length} requests through B (${rest.length - posts} GET, ${posts} POST): handshake, echo, subscribe, a publish from C received`
      );
    } finally {
      endTest();
    }
  });

  it('d. a token issued through A authenticates a new connection through C (the auth key is shared)', async () => {
    await quiesce();
    const extras = [];
    try {
      const owner = await connectPinned(A, { extras });
      track(owner.socket);
      const authenticated = nextEvent(owner.socket, 'authenticate', WAIT_MS);
      const username = `deploy-${crypto.randomBytes(3).toString('hex')}`;
      await owner.socket.invoke('login', { username });
      const { signedAuthToken } = await authenticated;
      assert.equal(signedAuthToken.split('.').length, 3);

      const user = await connectPinned(C, {
        extras,
        prepare: (socket) => socket.auth.saveToken(socket.authTokenName, signedAuthToken, {}),
      });
      track(user.socket);
      assert.equal(user.status.isAuthenticated, true, `the handshake through C accepted the token: ${JSON.stringify(user.status)}`);
      assert.ok(!user.status.authError, JSON.stringify(user.status.authError));
      assert.equal(user.socket.authState, user.socket.AUTHENTICATED);
      assert.equal((await user.socket.invoke('whoami')).username, username);
      await subscribe(user.socket, uniqueChannel('private/deploy-d'));

      // The check is real: a token signed with another key is refused through C.
      const forged = signToken({ username, iat: Math.floor(Date.now() / 1000) }, 'not-the-deployment-key');
      const other = await connectPinned(C, {
        extras,
        prepare: (socket) => socket.auth.saveToken(socket.authTokenName, forged, {}),
      });
      track(other.socket);
      assert.equal(other.status.isAuthenticated, false, 'a token of another key is refused');
      assert.equal(other.status.authError && other.status.authError.name, 'AuthTokenInvalidError', JSON.stringify(other.status));
      console.log(
        `${P} d: token issued on ${owner.worker.host.name}/${owner.worker.addr} accepted at the handshake on ${user.worker.host.name}/${user.worker.addr} ` +
          `(whoami ${username}, private/ subscribe allowed); a token of another key refused there (AuthTokenInvalidError)`
      );
    } finally {
      closeClients(extras);
      endTest();
    }
  });

  it("e. SIGTERM of C: C's workers leave the registry and A and B stop listing them", async () => {
    await quiesce();
    const gone = workersOf(C);
    const t0 = now();
    const stopped = await C.stop();
    const exitedAt = now();
    assert.ok(stopped.stoppedLine, `C printed 'cluster stopped': ${stopped.lines.join('\n')}`);
    assert.deepEqual(stopped.leftovers, [], 'no child of C left');
    const registry = await redis.cmd('HGETALL', deployment.registryKey);
    const fields = registry.filter((_, i) => i % 2 === 0);
    for (const w of gone) assert.ok(!fields.includes(w), `C's worker ${w} withdrawn from ${deployment.registryKey} when C exited: ${fields}`);
    const remaining = [A, B];
    await pollUntil(
      healthAll,
      (all) => all.every(({ host, health }) => isDeepStrictEqual([...health.remote_workers].sort(), otherWorkers(host, remaining).sort())),
      CONVERGE_TIMEOUT_MS,
      "A and B no longer listing C's workers"
    );
    const droppedAt = now();
    console.log(
      `${P} e: C stopped (SIGTERM, exit 0) in ${ms(exitedAt - t0)}, its workers ${gone.join(' ')} already off Redis; ` +
        `A and B dropped them from remote_workers ${ms(droppedAt - exitedAt)} later`
    );
  });
});
