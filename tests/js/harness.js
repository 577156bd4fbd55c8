// Test harness: starts the server under test, connects clients, and awaits events with timeouts.
//
// Server under test:
//   SC_SERVER=reference  -> `node reference-server.js --host 127.0.0.1 --port P --auth-key K`
//   otherwise SC_BIN     -> `$SC_BIN serve --host 127.0.0.1 --port P --auth-key K`
// The server is ready once it prints a line matching LISTENING_RE (stdout or stderr) and its port
// accepts TCP connections.
//
// Topology (SC_TOPOLOGY, our binary only):
//   unset / single -> startServer() starts one `serve` process (above)
//   balancer       -> startServer() starts a ClusterProcess: one `store`, two `serve` workers sharing
//                     it, and `balance` in front of them; clients connect to the balancer
//   balancer-tls   -> the same, the balancer terminating TLS (https/wss) with a test CA made here
//                     with the `openssl` CLI (testTls()); every client made here trusts that CA
'use strict';

const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const socketClusterClient = require('socketcluster-client');
const WebSocket = require('ws');

const HOST = '127.0.0.1';
const LISTENING_RE = /listening on/i;
const START_TIMEOUT_MS = 15000;
const DEFAULT_TIMEOUT_MS = 5000;

/** Every server process started by this test process, killed on exit whatever happens. */
const liveProcesses = new Set();
/** Every socketcluster-client socket made by createClient, disconnected when a server stops. */
const liveClients = new Set();

function killAllServers() {
  for (const child of liveProcesses) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAllServers);
// The test runner stops a file that overruns its timeout with a signal: take the servers along.
for (const [signal, number] of [['SIGTERM', 15], ['SIGINT', 2], ['SIGHUP', 1]]) {
  process.once(signal, () => {
    killAllServers();
    process.exit(128 + number);
  });
}

/** Rejects with a descriptive error when `promise` does not settle within `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A port that was free a moment ago: bind 127.0.0.1:0, read the port, close. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once a TCP connection to host:port succeeds (one attempt). */
function tryConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** The path of our binary (SC_BIN); throws a helpful error when it is not set. */
function scBin() {
  const bin = process.env.SC_BIN;
  if (!bin) {
    throw new Error(
      'no server under test: set SC_SERVER=reference, or SC_BIN=/path/to/socketcluster (runs `$SC_BIN serve ...`)'
    );
  }
  return bin;
}

/**
 * The command line of one process: `serve` (the server under test: our binary, or the reference
 * server with SC_SERVER=reference) or another subcommand of our binary (`store`, `balance`), which
 * gets `--host` and `--port` but no `--auth-key`.
 */
function serverCommand(port, authKey, extraArgs = [], subcommand = 'serve') {
  if (subcommand !== 'serve') {
    return { cmd: scBin(), args: [subcommand, '--host', HOST, '--port', String(port), ...extraArgs] };
  }
  const args = ['--host', HOST, '--port', String(port), '--auth-key', authKey];
  if (process.env.SC_SERVER === 'reference') {
    return { cmd: process.execPath, args: [path.join(__dirname, 'reference-server.js'), ...args] };
  }
  const bin = process.env.SC_BIN;
  if (!bin) {
    throw new Error(
      'no server under test: set SC_SERVER=reference, or SC_BIN=/path/to/socketcluster (runs `$SC_BIN serve ...`)'
    );
  }
  return { cmd: bin, args: ['serve', ...args, ...extraArgs] };
}

// eslint-disable-next-line no-control-regex
const ANSI_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Debian's Chromium, and the flags it needs headless on these machines (browser tests). */
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * What a server under test (one process, or a cluster of them) does with its own `kill` and
 * `start`: restart and stop.
 */
class ServerUnderTest {
  /** kill -9 of everything, then start it again on the same ports with the same auth key. */
  async restart() {
    await this.kill();
    await this.start();
  }

  /** Kills the server(s) and disconnects every client made by createClient. Call it in `after`. */
  async stop() {
    closeClients([...liveClients]);
    liveClients.clear();
    await this.kill();
    armExitSafetyNet();
  }
}

/** The server under test as a child process, restartable on the same port with the same key. */
class ServerProcess extends ServerUnderTest {
  /**
   * `subcommand` (default `serve`), `port` (default: a free one at the first start), `env` (added
   * to the child's environment) are for the processes of a ClusterProcess.
   */
  constructor({ authKey, args, subcommand, port, env } = {}) {
    super();
    this.authKey = authKey || `test-key-${crypto.randomBytes(12).toString('hex')}`;
    // Extra `serve` flags (our server only).
    this.extraArgs = args || [];
    this.subcommand = subcommand || 'serve';
    this.env = env || {};
    this.port = port == null ? null : port;
    this.child = null;
    this.output = [];
    this.exited = null;
    // Waiters for a line the process prints (see waitForLine).
    this.lineWaiters = new Set();
  }

  /**
   * Resolves with the next line (printed from now on) that matches `re`; rejects after `ms`.
   * Call it before the action that makes the process print the line.
   */
  waitForLine(re, ms = DEFAULT_TIMEOUT_MS) {
    let waiter;
    const seen = new Promise((resolve) => {
      waiter = { re, resolve };
      this.lineWaiters.add(waiter);
    });
    return withTimeout(seen, ms, `a line matching ${re}\n${this.tail()}`).finally(() => this.lineWaiters.delete(waiter));
  }

  get url() {
    return `ws://${HOST}:${this.port}/socketcluster/`;
  }

  /** Whether clients must use TLS (https/wss): never for a single server. */
  get secure() {
    return false;
  }

  /** The base URL for HTTP requests (engine.io, /stats). */
  get httpUrl() {
    return `http://${HOST}:${this.port}`;
  }

  /** Last lines the server printed, for failure messages. */
  tail(n = 30) {
    return this.output.slice(-n).join('\n');
  }

  /**
   * Starts the server (on a fresh free port the first time, on the same port afterwards). A first
   * start that fails is retried on another free port, in case another process took the port
   * between the probe and the server's bind.
   */
  async start() {
    if (this.port != null) return this._startOnce();
    for (let attempt = 1; ; attempt++) {
      this.port = await freePort();
      try {
        return await this._startOnce();
      } catch (err) {
        if (attempt >= 3 || !err.exitedDuringStartup) throw err;
      }
    }
  }

  async _startOnce() {
    if (this.isRunning()) throw new Error('server already running');
    this.child = null;
    const { cmd, args } = serverCommand(this.port, this.authKey, this.extraArgs, this.subcommand);
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', ...this.env },
    });
    this.child = child;
    liveProcesses.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        liveProcesses.delete(child);
        resolve({ code, signal });
      });
    });

    let sawLine = false;
    let onLine;
    const lineSeen = new Promise((resolve) => {
      onLine = resolve;
    });
    const collect = (stream) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let idx;
        while ((idx = buf.indexOf('\n')) !== -1) {
          const line = buf.slice(0, idx).replace(ANSI_RE, '');
          buf = buf.slice(idx + 1);
          this.output.push(line);
          if (this.output.length > 500) this.output.shift();
          for (const w of this.lineWaiters) if (w.re.test(line)) w.resolve(line);
          if (!sawLine && LISTENING_RE.test(line)) {
            sawLine = true;
            onLine();
          }
        }
      });
    };
    collect(child.stdout);
    collect(child.stderr);

    const spawnFailed = new Promise((_, reject) => {
      child.once('error', (err) => reject(new Error(`cannot start ${cmd}: ${err.message}`)));
      // 'close' fires after the output streams ended, so the message includes everything printed.
      child.once('close', (code, signal) => {
        const err = new Error(`server exited during start-up (code ${code}, signal ${signal}):\n${this.tail()}`);
        err.exitedDuringStartup = true;
        reject(err);
      });
    });
    spawnFailed.catch(() => {});

    // Ready = the "listening on" line was printed AND the port accepts connections. The port is
    // polled only after the line (bounded by the start-up timeout).
    const ready = (async () => {
      await lineSeen;
      for (;;) {
        if (await tryConnect(this.port)) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    try {
      await withTimeout(
        Promise.race([ready, spawnFailed]),
        START_TIMEOUT_MS,
        `the server to print ${LISTENING_RE} and accept on port ${this.port}\n${this.tail()}`
      );
    } catch (err) {
      await this.kill();
      throw err;
    }
    return this;
  }

  /** SIGKILL the process and wait until it is gone. */
  async kill() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await this.exited;
  }

  /** Whether the process is still running. */
  isRunning() {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

}

/**
 * Safety net: a leaked handle (say, a client of a failed test still reconnecting) must not keep
 * the test file from ending; 10 s after the last server stopped the process exits anyway.
 */
function armExitSafetyNet() {
  setTimeout(() => {
    if (liveProcesses.size === 0) {
      process.stderr.write('harness: forcing exit, open handles remained after the server stopped\n');
      process.exit();
    }
  }, 10000).unref();
}

// --- TLS material for the balancer (SC_TOPOLOGY=balancer-tls and the balancer's own tests) ---

/** The passphrase of the test keys (PKCS#8, PBES2 with AES-256-CBC). */
const TEST_TLS_PASSPHRASE = 'correct horse battery staple';
const TEST_TLS_FILES = ['ca.pem', 'server.pem', 'server.key', 'server.enc.key', 'other.enc.key', 'server2.pem', 'server2.enc.key'];

function openssl(dir, args) {
  try {
    execFileSync('openssl', args, {
      cwd: dir,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, SC_TEST_TLS_PASSPHRASE: TEST_TLS_PASSPHRASE },
    });
  } catch (err) {
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

/** Writes a test CA, a server certificate for 127.0.0.1 and its keys into `dir`. */
function makeTestTls(dir) {
  // The CA (self-signed, CA:TRUE).
  openssl(dir, [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3650',
    '-subj', '/CN=socketcluster test CA', '-sha256',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  // The server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1), signed by the CA.
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(
    path.join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' +
      'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n'
  );
  openssl(dir, [
    'x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-out', 'server.pem', '-days', '3650',
    '-sha256', '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`, '-extfile', 'server.ext',
  ]);
  // The server key as passphrase-protected PKCS#8, and another key (of no certificate here) the same way.
  openssl(dir, ['pkcs8', '-topk8', '-v2', 'aes-256-cbc', '-in', 'server.key', '-out', 'server.enc.key', '-passout', 'env:SC_TEST_TLS_PASSPHRASE']);
  // A second server certificate for 127.0.0.1 from the same CA (the one a reload swaps in).
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server2.key', '-out', 'server2.csr', '-subj', '/CN=127.0.0.1']);
  openssl(dir, [
    'x509', '-req', '-in', 'server2.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-out', 'server2.pem', '-days', '3650',
    '-sha256', '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`, '-extfile', 'server.ext',
  ]);
  openssl(dir, ['pkcs8', '-topk8', '-v2', 'aes-256-cbc', '-in', 'server2.key', '-out', 'server2.enc.key', '-passout', 'env:SC_TEST_TLS_PASSPHRASE']);
  openssl(dir, ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'other.key']);
  openssl(dir, ['pkcs8', '-topk8', '-v2', 'aes-256-cbc', '-in', 'other.key', '-out', 'other.enc.key', '-passout', 'env:SC_TEST_TLS_PASSPHRASE']);
  fs.writeFileSync(path.join(dir, 'complete'), 'ok\n');
}

let testTlsCache = null;

/**
 * The test TLS material, made once per machine user under a fixed path in os.tmpdir() (made in a
 * temporary directory renamed into place, so concurrent test processes agree on one CA):
 * `{ dir, caPath, ca, certPath, keyPath (plain PKCS#8), encKeyPath (encrypted), otherEncKeyPath
 * (encrypted, not the certificate's key), cert2Path and encKey2Path (a second certificate and its
 * encrypted key), passphrase }`.
 */
function testTls() {
  if (testTlsCache) return testTlsCache;
  const uid = typeof process.getuid === 'function' ? process.getuid() : 'user';
  const dir = path.join(os.tmpdir(), `sc-test-tls-${uid}`);
  const complete = () => TEST_TLS_FILES.concat('complete').every((f) => fs.existsSync(path.join(dir, f)));
  for (let attempt = 1; !complete(); attempt++) {
    if (attempt > 3) throw new Error(`cannot make the test TLS files in ${dir}`);
    if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true }); // an interrupted old run
    const tmp = fs.mkdtempSync(`${dir}.tmp-`);
    try {
      makeTestTls(tmp);
      fs.renameSync(tmp, dir);
    } catch (err) {
      fs.rmSync(tmp, { recursive: true, force: true });
      // Another process renamed its complete directory into place first: use that one.
      if (!['EEXIST', 'ENOTEMPTY'].includes(err.code)) throw err;
    }
  }
  testTlsCache = {
    dir,
    caPath: path.join(dir, 'ca.pem'),
    ca: fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8'),
    certPath: path.join(dir, 'server.pem'),
    keyPath: path.join(dir, 'server.key'),
    encKeyPath: path.join(dir, 'server.enc.key'),
    otherEncKeyPath: path.join(dir, 'other.enc.key'),
    cert2Path: path.join(dir, 'server2.pem'),
    encKey2Path: path.join(dir, 'server2.enc.key'),
    passphrase: TEST_TLS_PASSPHRASE,
  };
  return testTlsCache;
}

// --- The cluster topology: store + workers + balancers ---

/**
 * A store, `workers` `serve` processes sharing it (trusting 127.0.0.1 as their proxy) and
 * `balancers` `balance` processes on one public port (SO_REUSEPORT) in front of them; the same
 * interface as ServerProcess (`port` and `url` are the balancer's). With `tls` (testTls()) the
 * balancers terminate TLS with the encrypted key, the passphrase in SC_TLS_KEY_PASSPHRASE.
 */
class ClusterProcess extends ServerUnderTest {
  constructor({ authKey, args, workers = 2, balancers = 1, balancerArgs, tls = null } = {}) {
    super();
    if (process.env.SC_SERVER === 'reference') throw new Error('the cluster topology needs our binary (SC_BIN)');
    this.authKey = authKey || `test-key-${crypto.randomBytes(12).toString('hex')}`;
    // Extra `serve` flags for every worker.
    this.extraArgs = args || [];
    // Extra `balance` flags for every balancer.
    this.balancerArgs = balancerArgs || [];
    this.tls = tls;
    this.workerCount = workers;
    this.balancerCount = balancers;
    this.store = new ServerProcess({ subcommand: 'store' });
    this.workers = Array.from({ length: workers }, () => new ServerProcess({ authKey: this.authKey }));
    this.balancers = [];
  }

  /** The public port: the balancers'. */
  get port() {
    return this.balancers.length ? this.balancers[0].port : null;
  }

  get secure() {
    return !!this.tls;
  }

  /** The CA clients must trust (PEM), with TLS. */
  get ca() {
    return this.tls ? this.tls.ca : undefined;
  }

  get url() {
    return `${this.secure ? 'wss' : 'ws'}://${HOST}:${this.port}/socketcluster/`;
  }

  get httpUrl() {
    return `${this.secure ? 'https' : 'http'}://${HOST}:${this.port}`;
  }

  /** The workers' own ports (plain HTTP, reachable directly: GET /stats). */
  get workerPorts() {
    return this.workers.map((w) => w.port);
  }

  /** Every process, the balancers first. */
  get processes() {
    return [...this.balancers, ...this.workers, this.store];
  }

  tail(n = 30) {
    const named = [
      ...this.balancers.map((p, i) => [`balancer ${i}`, p]),
      ...this.workers.map((p, i) => [`worker ${i}`, p]),
      ['store', this.store],
    ];
    return named.map(([name, p]) => `--- ${name} (port ${p.port})\n${p.tail(n)}`).join('\n');
  }

  _workerArgs() {
    return ['--store', `sc://${HOST}:${this.store.port}`, '--trusted-proxy', HOST, ...this.extraArgs];
  }

  _balancerArgs() {
    const args = [];
    for (const w of this.workers) args.push('--worker', `${HOST}:${w.port}`);
    if (this.tls) args.push('--tls-cert', this.tls.certPath, '--tls-key', this.tls.encKeyPath);
    return [...args, ...this.balancerArgs];
  }

  _balancerEnv() {
    return this.tls ? { SC_TLS_KEY_PASSPHRASE: this.tls.passphrase } : {};
  }

  /**
   * Starts every process that is not running (on the ports of its first start), in order: the
   * store, the workers, the balancers. On a failure the cluster is killed.
   */
  async start() {
    try {
      if (!this.store.isRunning()) await this.store.start();
      await Promise.all(
        this.workers.map((w, i) => {
          if (w.isRunning()) return null;
          // A changed `authKey` (a rotated key) reaches the workers at their next start.
          w.authKey = this.authKey;
          w.extraArgs = this._workerArgs();
          return this.startWorker(i);
        })
      );
      if (this.balancers.length === 0) {
        const first = new ServerProcess({ subcommand: 'balance', args: this._balancerArgs(), env: this._balancerEnv() });
        this.balancers.push(first);
        await first.start();
        for (let i = 1; i < this.balancerCount; i++) {
          this.balancers.push(
            new ServerProcess({ subcommand: 'balance', port: first.port, args: this._balancerArgs(), env: this._balancerEnv() })
          );
        }
      }
      await Promise.all(
        this.balancers.map((b) => {
          if (b.isRunning()) return null;
          b.extraArgs = this._balancerArgs();
          return b.start();
        })
      );
    } catch (err) {
      const tail = this.tail();
      await this.kill();
      err.message += `\n${tail}`;
      throw err;
    }
    return this;
  }

  /** Starts worker `i` again (after killWorker), on its port. */
  async startWorker(i) {
    await this.workers[i].start();
  }

  /** kill -9 of worker `i`; resolves once it is gone. */
  async killWorker(i) {
    await this.workers[i].kill();
  }

  /** kill -9 of every process (the balancers first); resolves once all are gone. */
  async kill() {
    await Promise.all(this.balancers.map((b) => b.kill()));
    await Promise.all([...this.workers, this.store].map((p) => p.kill()));
  }

  /** Whether every process runs. */
  isRunning() {
    return this.balancers.length > 0 && this.processes.every((p) => p.isRunning());
  }

}

/** Starts a ClusterProcess (whatever SC_TOPOLOGY says); call `await cluster.stop()` in `after`. */
async function startCluster(opts) {
  const cluster = new ClusterProcess(opts);
  await cluster.start();
  return cluster;
}

/** SC_TOPOLOGY: `single` (default), `balancer` or `balancer-tls`. */
const TOPOLOGY = process.env.SC_TOPOLOGY || 'single';
if (!['single', 'balancer', 'balancer-tls'].includes(TOPOLOGY)) {
  throw new Error(`SC_TOPOLOGY=${TOPOLOGY}: expected single, balancer or balancer-tls`);
}

/** Node TLS options that trust the server's CA (empty for a plain server). */
function tlsClientOptions(server) {
  return server.secure ? { ca: server.ca } : {};
}

/**
 * Starts a server under test; call `await server.stop()` in `after`. With SC_TOPOLOGY=balancer
 * (or balancer-tls) it is a ClusterProcess, the same options going to every worker.
 */
async function startServer(opts) {
  const server =
    TOPOLOGY === 'single'
      ? new ServerProcess(opts)
      : new ClusterProcess({ ...opts, tls: TOPOLOGY === 'balancer-tls' ? testTls() : null });
  await server.start();
  return server;
}

/**
 * Creates a socketcluster-client socket (autoConnect off) for `server` and returns it unconnected.
 * Options are passed through; reconnect delays default to small values.
 */
function createClient(server, options = {}) {
  // Over TLS: wss, trusting the test CA (`ca` goes to `ws`).
  const tls = server.secure
    ? { secure: true, wsOptions: { ...tlsClientOptions(server), ...(options.wsOptions || {}) } }
    : {};
  const socket = socketClusterClient.create({
    hostname: HOST,
    port: server.port,
    autoConnect: false,
    autoReconnectOptions: { initialDelay: 100, randomness: 100, multiplier: 1.5, maxDelay: 1000 },
    ackTimeout: 5000,
    ...options,
    ...tls,
  });
  liveClients.add(socket);
  return socket;
}

/** Awaits the next `name` event of a socketcluster-client socket (or any AsyncStreamEmitter). */
function nextEvent(emitter, name, ms = DEFAULT_TIMEOUT_MS) {
  const consumer = emitter.listener(name).createConsumer();
  return withTimeout(
    consumer.next().then(({ value }) => value),
    ms,
    `event '${name}'`
  ).finally(() => consumer.return());
}

/** Creates a client, connects it and resolves with `{ socket, status }` once connected. */
async function connectClient(server, options = {}) {
  const socket = createClient(server, options);
  const connected = nextEvent(socket, 'connect', options.connectWait || DEFAULT_TIMEOUT_MS);
  socket.connect();
  try {
    const status = await connected;
    return { socket, status };
  } catch (err) {
    socket.disconnect();
    throw err;
  }
}

/** Disconnects clients and kills their listeners so the test process can exit. */
function closeClients(...sockets) {
  for (const socket of sockets.flat()) {
    if (!socket) continue;
    try {
      socket.disconnect();
      socket.killAllListeners();
      socket.killAllReceivers();
      socket.killAllProcedures();
      socket.closeAllChannels();
    } catch {
      // best effort
    }
  }
}

/** Subscribes a client to `channel` and waits until the server confirmed the subscription. */
async function subscribe(socket, channel, options) {
  const ch = socket.subscribe(channel, options);
  const ok = ch.listener('subscribe').once();
  const failed = ch
    .listener('subscribeFail')
    .once()
    .then(({ error }) => {
      throw error;
    });
  await withTimeout(Promise.race([ok, failed]), DEFAULT_TIMEOUT_MS, `subscription to ${channel}`);
  return ch;
}

/** Collects `count` messages from a channel (or any async iterable) with a timeout. */
async function collect(iterable, count, ms = DEFAULT_TIMEOUT_MS, what = 'messages') {
  const out = [];
  const iterator = iterable[Symbol.asyncIterator]();
  const run = (async () => {
    while (out.length < count) {
      const { value, done } = await iterator.next();
      if (done) break;
      out.push(value);
    }
    return out;
  })();
  try {
    return await withTimeout(run, ms, `${count} ${what} (got ${out.length})`);
  } finally {
    if (iterator.return) iterator.return();
  }
}

/** A raw WebSocket client for frame-level tests. */
class RawClient {
  constructor(url, wsOptions = {}) {
    this.url = url;
    this.frames = [];
    this.waiters = [];
    this.autoPong = false;
    this.closeInfo = null;
    this.ws = new WebSocket(url, [], { maxPayload: 64 * 1024 * 1024, ...wsOptions });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (req, res) =>
        reject(new Error(`unexpected HTTP response ${res.statusCode}`))
      );
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this._notify();
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data, isBinary) => {
      const text = isBinary ? data : data.toString('utf8');
      if (text === '' && this.autoPong) {
        this.ws.send('');
        return;
      }
      this.frames.push(text);
      this._notify();
    });
  }

  static async open(server, { path: urlPath = '/socketcluster/', ...wsOptions } = {}) {
    const scheme = server.secure ? 'wss' : 'ws';
    const client = new RawClient(`${scheme}://${HOST}:${server.port}${urlPath}`, {
      ...tlsClientOptions(server),
      ...wsOptions,
    });
    await withTimeout(client.opened, DEFAULT_TIMEOUT_MS, 'the WebSocket to open');
    return client;
  }

  /** Opens a WebSocket and completes the SocketCluster handshake; returns [client, reply]. */
  static async connect(server, { authToken = null } = {}) {
    const client = await RawClient.open(server);
    const reply = await client.handshake(authToken);
    return [client, reply];
  }

  _notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  send(data, options) {
    this.ws.send(data, options);
  }

  sendJson(value) {
    this.ws.send(JSON.stringify(value));
  }

  /**
   * Resolves with the next frame (raw text) matching `pred`; frames before it are discarded unless
   * `keep` is set. Pings ('') are skipped unless `pred` accepts them with `pings: true`.
   */
  async nextRaw(pred = () => true, ms = DEFAULT_TIMEOUT_MS, { pings = false, what = 'a frame' } = {}) {
    let cancelled = false;
    const find = async () => {
      for (;;) {
        // A search that timed out must not go on taking frames from later searches.
        if (cancelled) return undefined;
        while (this.frames.length) {
          const frame = this.frames.shift();
          if (frame === '' && !pings) continue;
          if (pred(frame)) return frame;
        }
        if (this.closeInfo) {
          throw new Error(
            `socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${what}`
          );
        }
        await new Promise((r) => this.waiters.push(r));
      }
    };
    try {
      return await withTimeout(find(), ms, what);
    } catch (err) {
      cancelled = true;
      throw err;
    }
  }

  /** The next non-ping frame parsed as JSON. */
  async next(ms = DEFAULT_TIMEOUT_MS, what = 'a JSON frame') {
    const text = await this.nextRaw(() => true, ms, { what });
    return JSON.parse(text);
  }

  /** Next JSON frame for which pred(obj) is true, skipping others. */
  async nextMatching(pred, ms = DEFAULT_TIMEOUT_MS, what = 'a matching frame') {
    const text = await this.nextRaw(
      (t) => {
        try {
          return pred(JSON.parse(t));
        } catch {
          return false;
        }
      },
      ms,
      { what }
    );
    return JSON.parse(text);
  }

  /** Sends `#handshake` with cid 1 and returns the reply; turns auto-pong on afterwards. */
  async handshake(authToken = null) {
    this.sendJson({ event: '#handshake', data: { authToken }, cid: 1 });
    const reply = await this.nextMatching((p) => p && p.rid === 1, DEFAULT_TIMEOUT_MS, 'the handshake reply');
    this.autoPong = true;
    return reply;
  }

  /** Sends an invoke with `cid` and awaits its reply `{rid: cid, ...}`. */
  async invoke(event, data, cid, ms = DEFAULT_TIMEOUT_MS) {
    const packet = { event, cid };
    if (data !== undefined) packet.data = data;
    this.sendJson(packet);
    return this.nextMatching((p) => p && p.rid === cid, ms, `the reply to ${event} (cid ${cid})`);
  }

  async waitClose(ms = DEFAULT_TIMEOUT_MS) {
    return withTimeout(this.closed, ms, 'the socket to close');
  }

  close(code, reason) {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close(code, reason);
    }
  }

  terminate() {
    this.ws.terminate();
  }
}

/** Decodes the payload of a JWT. */
function jwtPayload(token) {
  const part = token.split('.')[1];
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

/** Signs an HS256 JWT with `key` (what any process sharing the auth key would issue). */
function signToken(payload, key, header = { alg: 'HS256', typ: 'JWT' }) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${enc(header)}.${enc(payload)}`;
  if (header.alg === 'none') return `${input}.`;
  const sig = crypto.createHmac('sha256', key).update(input).digest('base64url');
  return `${input}.${sig}`;
}

/** A unique channel name for one test. */
function uniqueChannel(prefix = 'ch') {
  return `${prefix}-${crypto.randomBytes(6).toString('hex')}`;
}

module.exports = {
  HOST,
  tryConnect,
  CHROMIUM,
  CHROMIUM_ARGS,
  LISTENING_RE,
  DEFAULT_TIMEOUT_MS,
  ServerProcess,
  ClusterProcess,
  TOPOLOGY,
  startServer,
  startCluster,
  testTls,
  tlsClientOptions,
  freePort,
  withTimeout,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  collect,
  RawClient,
  jwtPayload,
  signToken,
  uniqueChannel,
};
