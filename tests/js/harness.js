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
//   run            -> startServer() starts `socketcluster run` (a master with a store, two workers
//                     and a balancer: startRunAsServer()); clients connect to its balancer
'use strict';

const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
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

/**
 * Process groups of `socketcluster run` masters (spawned detached, so the group id is the master's
 * pid and `kill(-pgid)` reaches every child it started), and a last resort per run: the pids its
 * `child ready` lines named, killed only while /proc says they still run our binary.
 */
const liveGroups = new Map();

function killAllServers() {
  for (const child of liveProcesses) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const [pgid, run] of liveGroups) {
    killGroupSync(pgid, run);
  }
}

/** SIGKILL to a run's whole process group and to any child it named that still runs our binary. */
function killGroupSync(pgid, run) {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // the group is gone
  }
  for (const pid of run.knownPids) {
    if (isOurBinary(pid, run.bin)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  }
}

/** Whether `pid` is alive (not a zombie) and runs `bin` (its /proc cmdline starts with it). */
function isOurBinary(pid, bin) {
  if (!isAlive(pid)) return false;
  try {
    const argv0 = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0];
    return argv0 === bin || path.resolve(argv0) === path.resolve(bin);
  } catch {
    return false;
  }
}

/** Whether a process `pid` exists and has not exited (a zombie has exited: state Z or X). */
function isAlive(pid) {
  let stat;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  return state !== 'Z' && state !== 'X';
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

// --- `socketcluster run`: the cluster master and the processes it supervises ---

/** `socketcluster cluster listening on http://HOST:PORT/ (management http://HOST:MPORT/)` */
const RUN_LISTENING_RE =
  /^socketcluster cluster listening on http:\/\/([^\s/]+):(\d+)\/ \(management http:\/\/([^\s/]+):(\d+)\/\)$/;
/** `child ready role=ROLE id=N pid=PID addr=HOST:PORT` */
const CHILD_READY_RE = /^child ready role=(store|worker|balancer) id=(\d+) pid=(\d+) addr=(\S+)$/;
/** `child exited role=ROLE id=N pid=PID status=STATUS` */
const CHILD_EXITED_RE = /^child exited role=(store|worker|balancer) id=(\d+) pid=(\d+) status=(.+)$/;
/** The master starts every child (a debug build each) before its listening line. */
const RUN_START_TIMEOUT_MS = 30000;

/** `{ role, id, pid, addr }` of a `child ready` line (or of its match), else null. */
function parseChildReady(lineOrMatch) {
  const m = typeof lineOrMatch === 'string' ? CHILD_READY_RE.exec(lineOrMatch) : lineOrMatch;
  return m ? { role: m[1], id: Number(m[2]), pid: Number(m[3]), addr: m[4] } : null;
}

/** `{ role, id, pid, status }` of a `child exited` line (or of its match), else null. */
function parseChildExited(lineOrMatch) {
  const m = typeof lineOrMatch === 'string' ? CHILD_EXITED_RE.exec(lineOrMatch) : lineOrMatch;
  return m ? { role: m[1], id: Number(m[2]), pid: Number(m[3]), status: m[4] } : null;
}

/**
 * One HTTP/1.1 request with node:http (no connection reuse unless an `agent` is given), optionally from a given local
 * address; resolves `{ status, headers, body }` (body as text), rejects after `timeoutMs`.
 */
function httpRequest(url, { method = 'GET', headers = {}, localAddress, timeoutMs = DEFAULT_TIMEOUT_MS, body, agent = false } = {}) {
  const requests = [];
  const done = new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress, agent }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (data += chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
    requests.push(req);
  });
  return withTimeout(done, timeoutMs, `${method} ${url}`).catch((err) => {
    for (const req of requests) req.destroy();
    throw err;
  });
}

// Metrics text, parsed strictly in either format a Prometheus server scrapes: the Prometheus text
// format 0.0.4 (`text/plain; version=0.0.4`) and OpenMetrics 1.0.0
// (`application/openmetrics-text; version=1.0.0`). A line the format does not allow is an error,
// so "it parses" is part of what a caller asserts.
const PROM_METRIC_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const PROM_LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const PROM_VALUE_RE = /^(?:[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|Inf)|NaN)$/;
const PROM_TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
const OM_TYPES = new Set(['counter', 'gauge', 'histogram', 'gaugehistogram', 'stateset', 'info', 'summary', 'unknown']);
/** The sample names of a family of each type, as suffixes of the family's name. */
const PROM_SUFFIXES = { histogram: ['_bucket', '_sum', '_count'], summary: ['', '_sum', '_count'] };
const OM_SUFFIXES = {
  counter: ['_total', '_created'],
  gauge: [''],
  histogram: ['_bucket', '_count', '_sum', '_created'],
  gaugehistogram: ['_bucket', '_gcount', '_gsum'],
  stateset: [''],
  info: ['_info'],
  summary: ['', '_count', '_sum', '_created'],
  unknown: [''],
};

/**
 * Samples `{ name, labels, value, timestamp }` of a parsed exposition, with `types` and `help` by
 * family name and `format` (`prometheus` or `openmetrics`).
 */
class PromMetrics {
  constructor(samples, types, help, text, format) {
    this.samples = samples;
    this.types = types;
    this.help = help;
    this.text = text;
    this.format = format;
  }

  /** The TYPE of the family sample `name` belongs to (undefined when none was declared). */
  typeOf(name) {
    return promFamilyOf(this.types, name, this.format === 'openmetrics').type;
  }

  /** Samples named `name` whose labels include every pair of `labels`. */
  find(name, labels = {}) {
    return this.samples.filter(
      (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === String(v))
    );
  }

  /** The value of the one sample named `name` with `labels`; throws unless exactly one matches. */
  value(name, labels = {}) {
    const found = this.find(name, labels);
    if (found.length !== 1) {
      throw new Error(`${found.length} samples of ${name}${JSON.stringify(labels)} (expected 1):\n${this.text}`);
    }
    return found[0].value;
  }

  /** The sum of the samples named `name` whose labels include `labels` (0 when none). */
  sum(name, labels = {}) {
    return this.find(name, labels).reduce((a, s) => a + s.value, 0);
  }
}

/** The family (declared by a TYPE line) a sample named `name` belongs to: `{ family, type }`. */
function promFamilyOf(types, name, openMetrics) {
  const table = openMetrics ? OM_SUFFIXES : PROM_SUFFIXES;
  if (!openMetrics && types.has(name)) return { family: name, type: types.get(name) };
  for (const [type, suffixes] of Object.entries(table)) {
    for (const suffix of suffixes) {
      if (!name.endsWith(suffix)) continue;
      const base = name.slice(0, name.length - suffix.length);
      if (types.get(base) === type) return { family: base, type };
    }
  }
  return { family: name, type: undefined };
}

/** Reads `"..."` at `pos` of `line`: `{ value, end }` (end after the closing quote), or an error string. */
function promQuoted(line, pos) {
  if (line[pos] !== '"') return 'expected " to open a label value';
  let value = '';
  for (let i = pos + 1; i < line.length; i++) {
    const c = line[i];
    if (c === '"') return { value, end: i + 1 };
    if (c === '\\') {
      const e = line[++i];
      if (e === '\\') value += '\\';
      else if (e === '"') value += '"';
      else if (e === 'n') value += '\n';
      else return `invalid escape \\${e === undefined ? '' : e} in a label value`;
    } else {
      value += c;
    }
  }
  return 'unterminated label value';
}

/**
 * Parses metrics text. Both formats: `# HELP name text` and `# TYPE name type` at most once per
 * family, TYPE before the family's samples; samples `name{label="value",...} value [timestamp]`;
 * no duplicate label, no duplicate series, no negative or NaN counter. Prometheus 0.0.4
 * (default): other `#` lines are comments, blank lines allowed, the last line ends with a newline.
 * OpenMetrics (`openMetrics: true`): the text ends with `# EOF` and a newline, no blank lines, no
 * other comments (`# UNIT` allowed), a family's samples together, a counter's samples named
 * `<family>_total` (or `_created`). Throws listing the offending lines; returns a PromMetrics.
 */
function parsePrometheusText(text, { openMetrics = false } = {}) {
  const errors = [];
  const samples = [];
  const types = new Map();
  const help = new Map();
  const units = new Map();
  const seriesSeen = new Set();
  const familiesSampled = new Set();
  const allowedTypes = openMetrics ? OM_TYPES : PROM_TYPES;
  let currentFamily = null;
  if (text.length > 0 && !text.endsWith('\n')) errors.push('the last line does not end with a newline');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (openMetrics) {
    if (lines[lines.length - 1] !== '# EOF') errors.push('the last line is not `# EOF`');
    else lines.pop();
  }
  lines.forEach((line, index) => {
    const fail = (why) => errors.push(`line ${index + 1} ${JSON.stringify(line)}: ${why}`);
    if (/^[ \t]*$/.test(line)) {
      if (openMetrics) fail('blank line');
      return;
    }
    if (line.startsWith('#')) {
      const keyword = /^# (HELP|TYPE|UNIT)(?: |$)/.exec(line) || (!openMetrics && /^#[ \t]+(HELP|TYPE)(?:[ \t]|$)/.exec(line));
      if (!keyword) {
        if (openMetrics) fail(line === '# EOF' ? '`# EOF` before the end' : 'not HELP, TYPE, UNIT or EOF');
        return; // a plain comment (Prometheus 0.0.4)
      }
      const m = openMetrics
        ? /^# (HELP|TYPE|UNIT) ([^ ]+)(?: (.*))?$/.exec(line)
        : /^#[ \t]+(HELP|TYPE)[ \t]+([^ \t]+)(?:[ \t]+(.*))?$/.exec(line);
      if (!m) return fail(`${keyword[1]} without a metric name`);
      const [, kind, name, rest = ''] = m;
      const nameOk = PROM_METRIC_RE.exec(name);
      if (!nameOk || nameOk[0] !== name) return fail(`invalid metric name ${JSON.stringify(name)}`);
      if (kind === 'HELP') {
        if (help.has(name)) return fail(`second HELP for ${name}`);
        const escapes = openMetrics ? /^(?:[^\\]|\\[\\n"])*$/ : /^(?:[^\\]|\\[\\n])*$/;
        if (!escapes.test(rest)) return fail('invalid escape in HELP text');
        help.set(name, rest);
        return;
      }
      if (kind === 'UNIT') {
        if (units.has(name)) return fail(`second UNIT for ${name}`);
        units.set(name, rest);
        return;
      }
      const type = openMetrics ? rest : rest.trim();
      if (!allowedTypes.has(type)) return fail(`unknown TYPE ${JSON.stringify(type)}`);
      if (types.has(name)) return fail(`second TYPE for ${name}`);
      if (familiesSampled.has(name)) return fail(`TYPE for ${name} after its samples`);
      if (openMetrics && type === 'counter' && name.endsWith('_total')) return fail('an OpenMetrics counter family is named without _total');
      types.set(name, type);
      return;
    }
    const nm = PROM_METRIC_RE.exec(line);
    if (!nm) return fail('not a metric name, comment or blank line');
    const name = nm[0];
    let pos = name.length;
    const labels = {};
    if (line[pos] === '{') {
      pos++;
      for (;;) {
        while (!openMetrics && (line[pos] === ' ' || line[pos] === '\t')) pos++;
        if (line[pos] === '}') {
          pos++;
          break;
        }
        const lm = PROM_LABEL_RE.exec(line.slice(pos));
        if (!lm) return fail(`invalid label name at column ${pos + 1}`);
        const label = lm[0];
        pos += label.length;
        while (!openMetrics && (line[pos] === ' ' || line[pos] === '\t')) pos++;
        if (line[pos] !== '=') return fail(`expected = after label ${label}`);
        pos++;
        while (!openMetrics && (line[pos] === ' ' || line[pos] === '\t')) pos++;
        const q = promQuoted(line, pos);
        if (typeof q === 'string') return fail(q);
        if (Object.prototype.hasOwnProperty.call(labels, label)) return fail(`label ${label} twice`);
        labels[label] = q.value;
        pos = q.end;
        while (!openMetrics && (line[pos] === ' ' || line[pos] === '\t')) pos++;
        if (line[pos] === ',') {
          pos++;
        } else if (line[pos] !== '}') {
          return fail(`expected , or } at column ${pos + 1}`);
        }
      }
    }
    const rest = line.slice(pos);
    if (openMetrics ? !rest.startsWith(' ') : !/^[ \t]/.test(rest)) return fail('expected a space and a value after the name and labels');
    if (openMetrics && / # /.test(rest)) return fail('an exemplar (none expected here)');
    const parts = openMetrics ? rest.slice(1).split(' ') : rest.trim().split(/[ \t]+/);
    if (parts.length > 2) return fail('more than a value and a timestamp');
    const [raw, timestamp] = parts;
    if (!PROM_VALUE_RE.test(raw)) return fail(`invalid value ${JSON.stringify(raw)}`);
    const timestampRe = openMetrics ? /^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$/ : /^-?\d+$/;
    if (timestamp !== undefined && !timestampRe.test(timestamp)) return fail(`invalid timestamp ${JSON.stringify(timestamp)}`);
    const value = raw === 'NaN' ? NaN : /Inf$/.test(raw) ? (raw.startsWith('-') ? -Infinity : Infinity) : Number(raw);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))}`;
    if (seriesSeen.has(key)) return fail('the same series twice');
    seriesSeen.add(key);
    const { family, type } = promFamilyOf(types, name, openMetrics);
    if (openMetrics) {
      if (type === undefined && types.has(name)) return fail(`a ${types.get(name)} sample must not be named ${name}`);
      if (family !== currentFamily && familiesSampled.has(family)) return fail(`the samples of ${family} are not together`);
      currentFamily = family;
    }
    familiesSampled.add(family);
    if (type === 'counter' && !(value >= 0)) return fail(`counter ${name} is ${raw}`);
    samples.push({ name, labels, value, timestamp: timestamp === undefined ? null : Number(timestamp) });
  });
  if (errors.length) {
    const format = openMetrics ? 'OpenMetrics' : 'Prometheus';
    throw new Error(`malformed ${format} text (${errors.length} errors):\n  ${errors.slice(0, 20).join('\n  ')}`);
  }
  return new PromMetrics(samples, types, help, text, openMetrics ? 'openmetrics' : 'prometheus');
}

/**
 * `socketcluster run`, the cluster master: `$SC_BIN run --host 127.0.0.1 --port 0
 * --management-port 0 --workers W --stores S --balancers B --auth-key K [--drain-timeout-ms N]
 * ...args`, spawned detached (its own process group, so `kill(-pid)` reaches every child). Ready
 * once it prints its listening line; `port` is the balancers' port, `managementPort` the
 * management port's. Every stdout line is kept in order (`lines`; `mark()` is the index of the
 * next one), `child ready` and `child exited` lines are followed to know each child's pid.
 * `cleanup()` (each describe's `after`) leaves no process behind, and neither does the test
 * process's exit.
 */
class RunProcess {
  constructor({ workers = 2, stores = 1, store = null, balancers = 1, authKey, drainTimeoutMs = null, args = [], env = {} } = {}) {
    if (process.env.SC_SERVER === 'reference') throw new Error('`socketcluster run` needs our binary (SC_BIN)');
    this.bin = scBin();
    this.workerCount = workers;
    /** `--store` (e.g. `redis://127.0.0.1:6379`, which replaces the store processes), or null. */
    this.store = store;
    this.storeCount = store && store.startsWith('redis://') ? 0 : stores;
    this.balancerCount = balancers;
    this.authKey = authKey || `test-key-${crypto.randomBytes(12).toString('hex')}`;
    this.drainTimeoutMs = drainTimeoutMs;
    this.extraArgs = args;
    this.env = env;
    this.child = null;
    this.exitStatus = null;
    this.closed = null;
    this.port = null;
    this.managementPort = null;
    /** Every line of the master's stdout, in order (ANSI colours stripped). */
    this.lines = [];
    /** performance.now() when each line of `lines` arrived. */
    this.lineTimes = [];
    /** The last lines of stdout and stderr together, for failure messages. */
    this.output = [];
    this.lineWaiters = new Set();
    /** Every pid a `child ready` line named. */
    this.knownPids = new Set();
    /** `role/id` -> the pid of its latest start. */
    this.currentPid = new Map();
    /** Keep-alive connections to the management port (a test may poll it back to back). */
    this.managementAgent = new http.Agent({ keepAlive: true, maxSockets: 2 });
  }

  get secure() {
    return false;
  }

  /** Whether the master runs (it exits when it cannot keep its children running). */
  isRunning() {
    return !!this.child && this.exitStatus === null;
  }

  /** The master's pid (and process group id). */
  get pid() {
    return this.child ? this.child.pid : null;
  }

  /** socketcluster-client's URL through the balancers. */
  get url() {
    return `ws://${HOST}:${this.port}/socketcluster/`;
  }

  get httpUrl() {
    return `http://${HOST}:${this.port}`;
  }

  get managementUrl() {
    return `http://${HOST}:${this.managementPort}`;
  }

  /**
   * `wsOptions` for socketcluster-client (handed to `ws`): the session cookie to present on every
   * (re)connect, as a browser would, and the local address to connect from (any 127.0.0.0/8
   * address: clients spread over several addresses the way real ones are, so the per-address
   * limits of the balancers and workers see a realistic load).
   */
  wsOptions({ cookie, localAddress } = {}) {
    const options = {};
    if (cookie) options.headers = { Cookie: cookie };
    if (localAddress) options.localAddress = localAddress;
    return options;
  }

  /**
   * A new session cookie (`n/<app>/ssid=<value>`, the pair a browser would send back): the
   * response to any request through the balancer sets one, here `GET /stats`. A Node client has
   * no cookie jar, so a client that must keep its session across reconnects gets one this way.
   */
  async newSessionCookie({ localAddress } = {}) {
    const res = await httpRequest(`${this.httpUrl}/stats`, { localAddress });
    const setCookie = res.headers['set-cookie'] || [];
    const pair = setCookie.map((c) => c.split(';')[0].trim()).find((p) => /^n\/[^/=]+\/ssid=./.test(p));
    if (!pair) {
      throw new Error(
        `no session cookie n/<app>/ssid in the response to GET /stats through the balancer ` +
          `(status ${res.status}, set-cookie ${JSON.stringify(setCookie)})`
      );
    }
    return pair;
  }

  tail(n = 40) {
    return this.output.slice(-n).join('\n');
  }

  /** The index the next stdout line will have: pass it to waitForLine to include lines from here. */
  mark() {
    return this.lines.length;
  }

  /** The stdout lines printed since `from` (a mark()). */
  linesSince(from) {
    return this.lines.slice(from);
  }

  /**
   * Resolves with the `RegExp` matches (each with `lineIndex` and `at`, performance.now() when the
   * line arrived) of the first `count` stdout lines at index >= `from`
   * (default: lines printed from now on) matching `re`, lines already printed since `from`
   * included; rejects after `ms`, or as soon as the master's output ended without them.
   */
  waitForLines(re, count, ms = DEFAULT_TIMEOUT_MS, from = this.mark()) {
    const waiter = { re, count, from, found: [], resolve: null };
    const seen = new Promise((resolve) => {
      waiter.resolve = resolve;
    });
    for (let i = from; i < this.lines.length && waiter.found.length < count; i++) {
      const m = this._match(re, i);
      if (m) waiter.found.push(m);
    }
    if (waiter.found.length >= count) return Promise.resolve(waiter.found);
    this.lineWaiters.add(waiter);
    const ended = this.closed.then(() => {
      throw new Error(`the master exited (${JSON.stringify(this.exitStatus)}) before printing ${count} lines matching ${re} (saw ${waiter.found.length})\n${this.tail()}`);
    });
    const what = () => `${count} lines matching ${re} (saw ${waiter.found.length})\n${this.tail()}`;
    return withTimeout(Promise.race([seen, ended]), ms, { toString: what })
      .finally(() => this.lineWaiters.delete(waiter));
  }

  /** The match of the first stdout line at index >= `from` matching `re` (see waitForLines). */
  async waitForLine(re, ms = DEFAULT_TIMEOUT_MS, from = this.mark()) {
    const [m] = await this.waitForLines(re, 1, ms, from);
    return m;
  }

  /** A match of line `index`, with `lineIndex` and `at` (when the line arrived) added. */
  _match(re, index) {
    const m = re.exec(this.lines[index]);
    if (m) {
      m.lineIndex = index;
      m.at = this.lineTimes[index];
    }
    return m;
  }

  _onStdoutLine(line) {
    this.lines.push(line);
    this.lineTimes.push(performance.now());
    const index = this.lines.length - 1;
    const ready = parseChildReady(line);
    if (ready) {
      this.knownPids.add(ready.pid);
      this.currentPid.set(`${ready.role}/${ready.id}`, ready.pid);
    }
    for (const w of this.lineWaiters) {
      const m = this._match(w.re, index);
      if (m) {
        w.found.push(m);
        if (w.found.length >= w.count) w.resolve(w.found);
      }
    }
  }

  args() {
    const args = [
      'run',
      '--host', HOST,
      '--port', '0',
      '--management-port', '0',
      '--workers', String(this.workerCount),
      '--stores', String(Math.max(1, this.storeCount)),
      '--balancers', String(this.balancerCount),
      '--auth-key', this.authKey,
    ];
    if (this.store) args.push('--store', this.store);
    if (this.drainTimeoutMs != null) args.push('--drain-timeout-ms', String(this.drainTimeoutMs));
    return [...args, ...this.extraArgs];
  }

  /**
   * Spawns the master and waits (RUN_START_TIMEOUT_MS) for its listening line, which it prints
   * once every child is ready; then the balancers' port must accept a TCP connection. A master
   * that exits first, or no line in time, fails with its output (and nothing is left running).
   */
  async start() {
    if (this.child) throw new Error('already started');
    const env = { ...process.env, NO_COLOR: '1', ...this.env };
    delete env.SC_CLUSTER_ROLE;
    const child = spawn(this.bin, this.args(), { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
    this.child = child;
    liveProcesses.add(child);
    if (child.pid) liveGroups.set(child.pid, this);
    child.once('exit', (code, signal) => {
      this.exitStatus = { code, signal };
      liveProcesses.delete(child);
    });
    // 'close' comes after both output streams ended: every line is in `lines` by then.
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
          const line = buf.slice(0, idx).replace(ANSI_RE, '').replace(/\r$/, '');
          buf = buf.slice(idx + 1);
          this.output.push(line);
          if (this.output.length > 500) this.output.shift();
          if (onLine) onLine(line);
        }
      });
    };
    read(child.stdout, (line) => this._onStdoutLine(line));
    read(child.stderr, null);

    try {
      const m = await Promise.race([this.waitForLine(RUN_LISTENING_RE, RUN_START_TIMEOUT_MS, 0), spawnError]);
      const [, host, port, mhost, mport] = m;
      if (host !== HOST || mhost !== HOST) throw new Error(`listening line names ${host} / ${mhost}, expected ${HOST}: ${m.input}`);
      this.port = Number(port);
      this.managementPort = Number(mport);
      if (!(this.port > 0 && this.managementPort > 0)) throw new Error(`no port in the listening line: ${m.input}`);
      for (const p of [this.port, this.managementPort]) {
        if (!(await tryConnect(p))) throw new Error(`the listening line was printed but port ${p} refuses connections`);
      }
    } catch (err) {
      const tail = this.tail();
      await this.cleanup();
      err.message += `\n--- socketcluster ${this.args().join(' ')}\n${tail}`;
      throw err;
    }
    return this;
  }

  /** `GET /health`: `{ httpStatus, status, children: [{ role, id, pid, state, restarts, addr }] }`. */
  async health({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const res = await httpRequest(`${this.managementUrl}/health`, { timeoutMs, agent: this.managementAgent });
    let body;
    try {
      body = JSON.parse(res.body);
    } catch {
      throw new Error(`GET /health (${res.status}) is not JSON: ${res.body.slice(0, 300)}`);
    }
    return { httpStatus: res.status, ...body };
  }

  /**
   * `GET /metrics`, answered 200 with the Prometheus text format (`text/plain`) or OpenMetrics
   * (`application/openmetrics-text`), parsed strictly in the format its content-type names
   * (parsePrometheusText).
   */
  async metrics({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const res = await httpRequest(`${this.managementUrl}/metrics`, { timeoutMs, agent: this.managementAgent });
    if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}: ${res.body.slice(0, 300)}`);
    const type = String(res.headers['content-type'] || '');
    if (/^application\/openmetrics-text\b/.test(type)) return parsePrometheusText(res.body, { openMetrics: true });
    if (/^text\/plain\b/.test(type)) return parsePrometheusText(res.body);
    throw new Error(`GET /metrics content-type ${JSON.stringify(type)}: neither text/plain (Prometheus) nor application/openmetrics-text`);
  }

  /**
   * Sends `signal` (default SIGKILL) to the child `role` `id`, the pid taken from /health (which
   * must say it runs, with the pid of its latest `child ready` line). Resolves `{ role, id, pid,
   * addr, at }` (`at`: performance.now() just before the signal).
   */
  async kill(role, id, signal = 'SIGKILL') {
    const health = await this.health();
    const child = (health.children || []).find((c) => c.role === role && c.id === id);
    if (!child) throw new Error(`no ${role} ${id} in /health: ${JSON.stringify(health)}`);
    if (child.state !== 'running') throw new Error(`${role} ${id} is ${child.state}, not running: ${JSON.stringify(child)}`);
    const latest = this.currentPid.get(`${role}/${id}`);
    if (!Number.isInteger(child.pid) || child.pid !== latest) {
      throw new Error(`/health gives ${role} ${id} pid ${child.pid}, its last child ready line ${latest}`);
    }
    const at = performance.now();
    process.kill(child.pid, signal);
    return { role, id, pid: child.pid, addr: child.addr, at };
  }

  /** Sends `sig` to the master. */
  signal(sig) {
    if (!this.child || this.exitStatus) throw new Error('the master is not running');
    process.kill(this.child.pid, sig);
  }

  /**
   * SIGTERM to the master, then waits (the drain timeout + 20 s) until it exited and its output
   * ended. Throws unless it exited with code 0; resolves `{ code, signal, stoppedLine, leftovers,
   * lines }`: whether `cluster stopped` was printed, the children (latest pid of each) still
   * running after the master was gone (killed then), the lines printed since the signal.
   * Clients are left alone (cleanup() closes them), so a test can read their close codes.
   */
  async stop() {
    if (!this.child) throw new Error('not started');
    const from = this.mark();
    if (!this.exitStatus) this.child.kill('SIGTERM');
    const bound = (this.drainTimeoutMs == null ? 10000 : this.drainTimeoutMs) + 20000;
    const status = await withTimeout(this.closed, bound, {
      toString: () => `the master to exit after SIGTERM\n${this.tail()}`,
    });
    const lines = this.linesSince(from);
    const leftovers = [...this.currentPid.entries()]
      .filter(([, pid]) => isOurBinary(pid, this.bin))
      .map(([child, pid]) => ({ child, pid }));
    killGroupSync(this.child.pid, this);
    liveGroups.delete(this.child.pid);
    this.managementAgent.destroy();
    if (status.code !== 0) {
      throw new Error(`the master exited with ${JSON.stringify(status)} after SIGTERM, expected code 0\n${this.tail()}`);
    }
    return { ...status, stoppedLine: lines.includes('cluster stopped'), leftovers, lines };
  }

  /**
   * Disconnects every client made by createClient, SIGKILLs the master's process group (and any
   * child it named that still runs our binary), and waits for the master to be gone. Never throws.
   */
  async cleanup() {
    closeClients([...liveClients]);
    liveClients.clear();
    this.managementAgent.destroy();
    const child = this.child;
    if (child) {
      killGroupSync(child.pid, this);
      if (!this.exitStatus) {
        try {
          child.kill('SIGKILL');
        } catch {
          // gone
        }
      }
      await withTimeout(this.closed, 10000, 'the master to exit after SIGKILL').catch(() => {});
      liveGroups.delete(child.pid);
    }
    armExitSafetyNet();
  }
}

/** Starts a RunProcess; call `await run.cleanup()` in `after`. */
async function startRun(opts) {
  const run = new RunProcess(opts);
  await run.start();
  return run;
}

/** Percentile `q` (0-1) of numbers sorted ascending (nearest rank). */
function percentile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** SC_TOPOLOGY: `single` (default), `balancer`, `balancer-tls` or `run`. */
const TOPOLOGY = process.env.SC_TOPOLOGY || 'single';
if (!['single', 'balancer', 'balancer-tls', 'run'].includes(TOPOLOGY)) {
  throw new Error(`SC_TOPOLOGY=${TOPOLOGY}: expected single, balancer, balancer-tls or run`);
}

/**
 * A `socketcluster run` cluster (two workers) standing in for one server process: its `stop()`
 * drains it (SIGTERM, exit 0 asserted) and then closes the clients and leaves nothing running,
 * as ServerProcess.stop() does. The demo page's browser builds come from this suite's npm install.
 */
async function startRunAsServer(opts = {}) {
  const run = new RunProcess({
    workers: 2,
    ...opts,
    args: ['--demo-assets', path.join(__dirname, 'node_modules'), ...(opts.args || [])],
  });
  const drain = run.stop.bind(run);
  run.stop = async () => {
    try {
      return await drain();
    } finally {
      await run.cleanup();
    }
  };
  await run.start();
  return run;
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
  if (TOPOLOGY === 'run') return startRunAsServer(opts);
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

/** Subscribes a client to `channel` and waits (up to `ms`) until the server confirmed the subscription. */
async function subscribe(socket, channel, options, ms = DEFAULT_TIMEOUT_MS) {
  const ch = socket.subscribe(channel, options);
  const ok = ch.listener('subscribe').once();
  const failed = ch
    .listener('subscribeFail')
    .once()
    .then(({ error }) => {
      throw error;
    });
  await withTimeout(Promise.race([ok, failed]), ms, `subscription to ${channel}`);
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

/**
 * Follows the raw frames `socket` receives for channel `channelName`, as the recovery tests read
 * them: each `#publish` (`{ kind: 'publish', offset, epoch, data, hasData, n, at }`; `n` is the
 * data's sequence number when it has one), `#gap` notice (`{ kind: 'gap', offset, epoch, at }`)
 * and reply that names the channel (`{ kind: 'reply', offset, epoch, at }`: a `#subscribe`
 * reply with its position) is pushed to `frames`; `changed()` is called after each message.
 */
function tapChannelFrames(socket, channelName, frames, changed) {
  const onPacket = (p) => {
    if (!p || typeof p !== 'object' || !p.data || typeof p.data !== 'object') return;
    const d = p.data;
    if (d.channel !== channelName) return;
    const at = performance.now();
    if (p.event === '#publish') {
      const n = d.data && d.data.n;
      frames.push({ kind: 'publish', offset: d.offset, epoch: d.epoch, data: d.data, hasData: 'data' in d, n, at });
    } else if (p.event === '#gap') {
      frames.push({ kind: 'gap', offset: d.offset, epoch: d.epoch, at });
    } else if (typeof p.rid === 'number' && p.event === undefined) {
      frames.push({ kind: 'reply', offset: d.offset, epoch: d.epoch, at });
    }
  };
  (async () => {
    for await (const { message } of socket.listener('message')) {
      if (typeof message !== 'string' || message === '' || message === '#1') continue;
      let packet;
      try {
        packet = JSON.parse(message);
      } catch {
        continue;
      }
      if (Array.isArray(packet)) packet.forEach(onPacket);
      else onPacket(packet);
      changed();
    }
  })();
}

module.exports = {
  tapChannelFrames,
  HOST,
  tryConnect,
  CHROMIUM,
  CHROMIUM_ARGS,
  LISTENING_RE,
  DEFAULT_TIMEOUT_MS,
  ServerProcess,
  ClusterProcess,
  RunProcess,
  startRun,
  startRunAsServer,
  parsePrometheusText,
  parseChildReady,
  parseChildExited,
  CHILD_READY_RE,
  CHILD_EXITED_RE,
  httpRequest,
  isAlive,
  percentile,
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
