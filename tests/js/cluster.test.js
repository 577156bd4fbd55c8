// `socketcluster run`, the cluster master (harness.js RunProcess): its store, worker and balancer
// processes, supervised and respawned; clients are the real socketcluster-client through the
// balancer port. Run it with `npm run test:cluster` (`npm test` leaves it out: it takes minutes).
//
// a. /health and /metrics: every child listed with its pid, state and restarts; /metrics parses
//    (strictly, as the Prometheus text format or OpenMetrics its content-type names: any
//    malformed line fails) and has every series of the spec;
//    the worker counters move while clients echo; a kill -9 of a worker counts in
//    sc_restarts_total and in /health.
// b. SIGTERM: the master drains, prints `cluster stopped`, exits 0 and leaves no child behind; a
//    connected client sees a close code it reconnects on (not 1000, below 4500) and no invoke
//    in flight hangs.
// c'. --store redis://: no store process; channels span both workers and session data outlives a
//    worker killed with -9 (it lives in Redis).
// c. kill -9 of the store under the chaos load (CHAOS_CLIENTS clients echoing): every subscriber
//    receives `#gap` for its channel, the store is respawned, a publish on each channel reaches
//    every subscriber again, no socket closes and every invoke settles.
// d. Rolling restart (SIGUSR2) under load (echo loops, sessions, subscriptions): the workers
//    restart one at a time, their clients are closed with 4000 (or the client's own 1005, see
//    assertReconnectCodes) and reconnect, no session is lost,
//    every invoke is answered or fails, none hangs; the echo latency during the restart is printed.
// e. Chaos: CHAOS_CLIENTS clients (1000) echoing, subscribed and with session data; kill -9 of a
//    random worker every CHAOS_INTERVAL_MS (5 s) for CHAOS_SECONDS (60 s). Each kill's clients are
//    closed with 4000 and reconnect: the time from the kill to each reconnect is printed per kill
//    and overall (`cluster chaos:` lines), p95 <= 1 s. Afterwards every client is open, its
//    subscription and session intact, and no invoke took longer than its ack timeout + 1 s.
//
// Clients use socketcluster-client's real reconnect defaults (10-20 s after an ordinary drop; at
// once after 4000), so a wrong close code shows up as a slow reconnect. An echo loop waits for
// its client's own reconnect before invoking again (an invoke on a closed socketcluster-client
// socket makes it connect at once, which would hide the close code's effect). Clients connect
// from 250 addresses of 127.0.0.0/8 (`localAddress`), as real clients come from many addresses:
// all from 127.0.0.1 they would exhaust the per-address connect rate (100/s after a burst of
// 2000) of the balancer and the workers within a few kills. A Node client has no cookie jar: a
// client that keeps a session gets its cookie from one HTTP request through the balancer and
// presents it on every (re)connect, as a browser does.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { isDeepStrictEqual } = require('node:util');
const { setTimeout: delay } = require('node:timers/promises');
const {
  HOST,
  startRun,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  withTimeout,
  isAlive,
  percentile,
  parseChildReady,
  parseChildExited,
} = require('./harness');

const {
  Fleet,
  FleetGroup,
  envInt,
  tally,
  now,
  ACK_TIMEOUT_MS,
  INVOKE_SLACK_MS,
  CLIENT_ADDRESSES,
} = require('./fleet');

const REFERENCE = process.env.SC_SERVER === 'reference';

const CHAOS_CLIENTS = envInt('CHAOS_CLIENTS', 1000);
const CHAOS_SECONDS = envInt('CHAOS_SECONDS', 60);
const CHAOS_INTERVAL_MS = envInt('CHAOS_INTERVAL_MS', 5000);
// The store kill runs under the chaos load (every client echoing), without session data: the
// store process holds it, and an in-memory store killed with -9 loses it by design.
const STORE_KILL_CLIENTS = CHAOS_CLIENTS;
const WORKERS = 2;
/** The Redis of the `--store redis://` test (scripts/test starts one where none is listening). */
const REDIS_URL = process.env.SC_REDIS_URL || 'redis://127.0.0.1:6379';
const REDIS_CLIENTS = 100;
const DRAIN_TIMEOUT_MS = 5000;
const CHAOS_TEST_TIMEOUT_MS = (CHAOS_SECONDS + 420) * 1000;

const ms = (x) => (x == null || Number.isNaN(x) ? '-' : `${Math.round(x)} ms`);

/**
 * The close codes clients saw: 4000 (the server's: a drained or lost worker) or 1005, which
 * socketcluster-client makes up itself when it sends on a socket whose close frame has arrived
 * but whose TCP connection has not ended yet (its transport's `send` on a socket not OPEN). The
 * client reconnects at once on both (PROTOCOL.md, the reconnect rule); any other code would
 * make it wait 10 to 20 s or stop.
 */
function assertReconnectCodes(codes, message) {
  const other = codes.filter((c) => c !== 4000 && c !== 1005);
  assert.deepEqual(tally(other), {}, `${message} (or the client's own 1005): ${JSON.stringify(tally(codes))}`);
  assert.ok(codes.includes(4000), `${message}: ${JSON.stringify(tally(codes))}`);
}

/**
 * Starts a cluster before the tests of the enclosing describe and cleans up after them: `run` is
 * its RunProcess; a test that makes a Fleet stores it in `fleet`, closed first.
 */
function clusterFixture(opts) {
  const fx = { run: null, fleet: null };
  before(async () => {
    fx.run = await startRun(opts);
  });
  after(async () => {
    if (fx.fleet) await fx.fleet.close();
    if (fx.run) await fx.run.cleanup();
  });
  return fx;
}


/**
 * Calls `fetch()` (one HTTP request, awaited) again and again until `pred(result)` holds, for at
 * most `timeoutMs` and `maxAttempts` requests. The children report their counters every second,
 * so a counter may lag by about that much.
 */
async function pollUntil(fetch, pred, timeoutMs, what, maxAttempts = 20000) {
  const deadline = now() + timeoutMs;
  let last;
  let attempts = 0;
  while (attempts < maxAttempts && now() < deadline) {
    attempts++;
    last = await fetch();
    if (pred(last)) return last;
  }
  const shown = last && last.text !== undefined ? last.text : JSON.stringify(last);
  throw new Error(`${what} not seen within ${timeoutMs} ms (${attempts} requests); last answer:\n${shown}`);
}


/** Asserts the shape of /health and that it names the expected children; returns them by `role/id`. */
function assertHealth(health, run, { status = 'ok' } = {}) {
  assert.equal(health.httpStatus, status === 'ok' ? 200 : 503, `GET /health status code: ${JSON.stringify(health)}`);
  assert.equal(health.status, status, `GET /health status: ${JSON.stringify(health)}`);
  assert.ok(Array.isArray(health.children), 'children is an array');
  const expected = { store: run.storeCount, worker: run.workerCount, balancer: run.balancerCount };
  const byKey = new Map();
  for (const c of health.children) {
    assert.ok(['store', 'worker', 'balancer'].includes(c.role), `role of ${JSON.stringify(c)}`);
    assert.ok(Number.isInteger(c.id) && c.id >= 0 && c.id < expected[c.role], `id of ${JSON.stringify(c)}`);
    assert.ok(Number.isInteger(c.pid) && c.pid > 0, `pid of ${JSON.stringify(c)}`);
    assert.ok(['running', 'starting', 'stopping', 'backoff'].includes(c.state), `state of ${JSON.stringify(c)}`);
    assert.ok(Number.isInteger(c.restarts) && c.restarts >= 0, `restarts of ${JSON.stringify(c)}`);
    assert.match(String(c.addr), /^127\.0\.0\.1:\d+$/, `addr of ${JSON.stringify(c)}`);
    const key = `${c.role}/${c.id}`;
    assert.ok(!byKey.has(key), `${key} listed once`);
    byKey.set(key, c);
  }
  for (const [role, n] of Object.entries(expected)) {
    for (let id = 0; id < n; id++) assert.ok(byKey.has(`${role}/${id}`), `${role} ${id} in /health: ${JSON.stringify(health)}`);
  }
  assert.equal(byKey.size, run.storeCount + run.workerCount + run.balancerCount, 'no other children');
  if (status === 'ok') {
    for (const c of byKey.values()) {
      assert.equal(c.state, 'running', `${c.role} ${c.id} running`);
      assert.equal(c.pid, run.currentPid.get(`${c.role}/${c.id}`), `${c.role} ${c.id}: the pid of its last child ready line`);
    }
  }
  return byKey;
}

/** The series the spec requires, with their types. */
const WORKER_COUNTERS = [
  'sc_messages_in_total',
  'sc_messages_out_total',
  'sc_publishes_total',
  'sc_deliveries_total',
  'sc_store_operations_total',
  'sc_queue_drops_total',
];

/** What is wrong with the required series of `m`: each must be there once, typed, with a finite value >= 0. */
function requiredSeriesProblems(m, run) {
  const problems = [];
  const one = (name, labels, type) => {
    const series = `${name}${JSON.stringify(labels)}`;
    if (m.typeOf(name) !== type) problems.push(`${name} is not declared a ${type} (${m.format} TYPE: ${m.typeOf(name)})`);
    const found = m.find(name, labels);
    if (found.length !== 1) return problems.push(`${series}: ${found.length} samples, expected 1`);
    const v = found[0].value;
    if (!(Number.isFinite(v) && v >= 0)) problems.push(`${series} = ${v}`);
  };
  for (let id = 0; id < run.workerCount; id++) {
    one('sc_connections', { role: 'worker', id }, 'gauge');
    for (const name of WORKER_COUNTERS) one(name, { role: 'worker', id }, 'counter');
  }
  for (let id = 0; id < run.storeCount; id++) one('sc_store_commands_total', { role: 'store', id }, 'counter');
  for (let id = 0; id < run.balancerCount; id++) one('sc_balancer_upgrades_total', { role: 'balancer', id }, 'counter');
  for (const [role, n] of [['store', run.storeCount], ['worker', run.workerCount], ['balancer', run.balancerCount]]) {
    for (let id = 0; id < n; id++) one('sc_restarts_total', { role, id }, 'counter');
  }
  return [...new Set(problems)];
}

/** Asserts requiredSeriesProblems finds nothing (all problems in one message). */
function assertRequiredSeries(m, run, problems = requiredSeriesProblems(m, run)) {
  assert.ok(problems.length === 0, `/metrics lacks required series:\n  ${problems.join('\n  ')}\n--- /metrics:\n${m.text}`);
}

/**
 * Snapshot of the sums the metrics test watches (worker series over the workers, store and
 * balancer series over theirs); a series with no sample is left out (its absence is reported by
 * requiredSeriesProblems), so the other counters can still be checked.
 */
function counters(m) {
  const out = {};
  for (const [key, name, role] of [
    ['connections', 'sc_connections', 'worker'],
    ['messagesIn', 'sc_messages_in_total', 'worker'],
    ['messagesOut', 'sc_messages_out_total', 'worker'],
    ['publishes', 'sc_publishes_total', 'worker'],
    ['deliveries', 'sc_deliveries_total', 'worker'],
    ['storeOps', 'sc_store_operations_total', 'worker'],
    ['storeCommands', 'sc_store_commands_total', 'store'],
    ['upgrades', 'sc_balancer_upgrades_total', 'balancer'],
  ]) {
    if (m.find(name, { role }).length) out[key] = m.sum(name, { role });
  }
  return out;
}

/** Whether counter `key` of `now` reached `before[key] + min` (true when the series is absent: reported elsewhere). */
function reached(nowCounters, before, key, min) {
  if (before[key] === undefined || nowCounters[key] === undefined) return true;
  return nowCounters[key] >= before[key] + min;
}

/** kill -9 of `role` `id` through the harness; resolves once the master printed its exit and its new start. */
async function killAndAwaitRespawn(run, role, id, boundMs = 20000) {
  const from = run.mark();
  const killed = await run.kill(role, id, 'SIGKILL');
  const exitedRe = new RegExp(`^child exited role=${role} id=${id} pid=${killed.pid} status=(.+)$`);
  const readyRe = new RegExp(`^child ready role=${role} id=${id} pid=(\\d+) addr=(\\S+)$`);
  const [exited, ready] = await Promise.all([
    run.waitForLine(exitedRe, boundMs, from),
    run.waitForLine(readyRe, boundMs, from),
  ]);
  return {
    ...killed,
    exitStatus: exited[1],
    exitedAt: exited.at,
    newPid: Number(ready[1]),
    newAddr: ready[2],
    readyAt: ready.at,
    respawnMs: ready.at - killed.at,
  };
}

describe('socketcluster run', { skip: REFERENCE && 'the reference server has no cluster master' }, () => {
  describe('/health and /metrics', { timeout: 240000 }, () => {
    const fx = clusterFixture({ workers: WORKERS, drainTimeoutMs: DRAIN_TIMEOUT_MS });

    it('list every child, parse as Prometheus text, move while clients echo, count a kill as a restart', { timeout: 180000 }, async () => {
      const { run } = fx;
      const health = await run.health();
      const children = assertHealth(health, run);
      for (const c of children.values()) assert.equal(c.restarts, 0, `${c.role} ${c.id} never restarted`);
      for (let id = 0; id < run.balancerCount; id++) {
        assert.equal(children.get(`balancer/${id}`).addr, `${HOST}:${run.port}`, 'a balancer listens on the public port');
      }
      // Every child printed its ready line with the pid and address /health gives.
      const readies = run.lines.map((l) => parseChildReady(l)).filter(Boolean);
      for (const c of children.values()) {
        assert.ok(
          readies.some((r) => r.role === c.role && r.id === c.id && r.pid === c.pid && r.addr === c.addr),
          `a child ready line for ${JSON.stringify(c)}`
        );
      }

      // A child's series may first appear with its first report (every second): wait, bounded,
      // for all of them. Missing ones are asserted at the end, so that the rest is checked too.
      let m0 = await run.metrics();
      const firstMissing = requiredSeriesProblems(m0, run);
      if (firstMissing.length) {
        m0 = await pollUntil(() => run.metrics(), (m) => requiredSeriesProblems(m, run).length === 0, 5000, 'every required series').catch(
          () => run.metrics()
        );
        console.log(`cluster metrics: missing at the first scrape after start: ${firstMissing.join('; ')}`);
      }
      const missing = requiredSeriesProblems(m0, run);
      for (const s of m0.find('sc_restarts_total')) assert.equal(s.value, 0, `${JSON.stringify(s.labels)} restarts`);
      const before0 = counters(m0);

      // Load: 50 clients (sessions: store operations), each echoing; a publish on each channel.
      const fleet = (fx.fleet = new Fleet(run, { count: 50, channelCount: 5, tag: 'metrics' }));
      await fleet.connect();
      await fleet.getPublisher();
      fleet.startEcho();
      await fleet.probe('metrics-probe', 10000);
      const clientsOpen = fleet.count + 1; // the publisher too
      const m1 = await pollUntil(
        () => run.metrics(),
        (m) => {
          const c = counters(m);
          return (
            (c.connections === undefined || c.connections === clientsOpen) &&
            reached(c, before0, 'messagesIn', fleet.count * 3) &&
            reached(c, before0, 'messagesOut', fleet.count * 3) &&
            reached(c, before0, 'publishes', fleet.channels.length) &&
            reached(c, before0, 'deliveries', fleet.count) &&
            reached(c, before0, 'storeOps', 1) &&
            reached(c, before0, 'storeCommands', 1) &&
            reached(c, before0, 'upgrades', clientsOpen)
          );
        },
        15000,
        `sc_connections = ${clientsOpen} and the worker, store and balancer counters moving (before: ${JSON.stringify(before0)})`
      );
      // And they keep moving while the clients echo.
      const c1 = counters(m1);
      const m2 = await pollUntil(
        () => run.metrics(),
        (m) => {
          const c = counters(m);
          return reached(c, c1, 'messagesIn', fleet.count) && reached(c, c1, 'messagesOut', fleet.count);
        },
        10000,
        `sc_messages_in_total and sc_messages_out_total moving again (from ${JSON.stringify(c1)})`
      );
      console.log(`cluster metrics: before ${JSON.stringify(before0)}, under load ${JSON.stringify(c1)}, then ${JSON.stringify(counters(m2))}`);

      // A kill -9 of worker 0 counts as a restart, in /metrics and /health.
      const k = await killAndAwaitRespawn(run, 'worker', 0);
      assert.match(k.exitStatus, /^signal 9\b/, 'the exit status of a kill -9');
      assert.notEqual(k.newPid, k.pid, 'a new process');
      assert.equal(k.newAddr, k.addr, 'respawned on the same address');
      console.log(`cluster metrics: worker 0 killed, respawned after ${ms(k.respawnMs)}`);
      await pollUntil(
        () => run.metrics(),
        (m) => m.value('sc_restarts_total', { role: 'worker', id: 0 }) === 1,
        10000,
        'sc_restarts_total{role="worker",id="0"} = 1'
      );
      const m3 = await run.metrics();
      for (const s of m3.find('sc_restarts_total')) {
        if (!(s.labels.role === 'worker' && s.labels.id === '0')) assert.equal(s.value, 0, `${JSON.stringify(s.labels)} restarts`);
      }
      const healed = await pollUntil(
        () => run.health(),
        (h) => h.httpStatus === 200 && h.status === 'ok',
        15000,
        '/health back to 200 ok after the respawn'
      );
      const after = assertHealth(healed, run);
      assert.equal(after.get('worker/0').restarts, 1, 'worker 0 restarted once');
      assert.equal(after.get('worker/0').pid, k.newPid, "/health gives the new worker's pid");
      await fleet.waitAllOpen(15000, 'after the kill');
      const pending = await fleet.stopEcho();
      fleet.assertInvokes(pending, 'metrics');
      assertRequiredSeries(m0, run, missing);
    });
  });

  describe('SIGTERM', { timeout: 120000 }, () => {
    let run;
    const sockets = [];
    before(async () => {
      run = await startRun({ workers: WORKERS, drainTimeoutMs: DRAIN_TIMEOUT_MS });
    });
    after(async () => {
      closeClients(sockets);
      if (run) await run.cleanup();
    });

    it('drains, prints `cluster stopped`, exits 0, leaves no child; clients see a code they reconnect on', async () => {
      const count = 20;
      for (let i = 0; i < count; i++) {
        const socket = createClient(run, {
          autoReconnectOptions: {},
          ackTimeout: ACK_TIMEOUT_MS,
          wsOptions: run.wsOptions({ localAddress: `127.0.0.${2 + i}` }),
        });
        sockets.push(socket);
      }
      await withTimeout(
        Promise.all(
          sockets.map((s) => {
            const connected = nextEvent(s, 'connect', 15000);
            s.connect();
            return connected;
          })
        ),
        20000,
        'the clients to connect'
      );
      await Promise.all(sockets.map((s) => subscribe(s, 'sigterm', undefined, 15000)));
      const health = await run.health();
      const children = assertHealth(health, run);
      const closes = sockets.map((s) => s.listener('close').once());
      // One echo in flight per client when the signal comes: each is answered or fails, none hangs.
      const invokes = sockets.map((s, i) =>
        s.invoke('echo', { i }).then(
          (data) => ({ ok: isDeepStrictEqual(data, { i }), data }),
          (err) => ({ error: err.name })
        )
      );
      const t0 = now();
      const stopped = await run.stop(); // throws unless the master exits 0
      const stopMs = now() - t0;
      assert.equal(stopped.code, 0);
      assert.ok(stopped.stoppedLine, `\`cluster stopped\` printed:\n${stopped.lines.join('\n')}`);
      assert.deepEqual(stopped.leftovers, [], 'no child outlives the master');
      for (const c of children.values()) assert.ok(!isAlive(c.pid), `${c.role} ${c.id} (pid ${c.pid}) is gone`);
      // Each child's end was printed, and `cluster stopped` after them.
      const stopIdx = stopped.lines.indexOf('cluster stopped');
      const exits = stopped.lines.map((l, idx) => ({ e: parseChildExited(l), idx })).filter((x) => x.e);
      for (const c of children.values()) {
        const x = exits.find(({ e }) => e.role === c.role && e.id === c.id && e.pid === c.pid);
        assert.ok(x, `a child exited line for ${c.role} ${c.id}:\n${stopped.lines.join('\n')}`);
        assert.ok(x.idx < stopIdx, `${c.role} ${c.id} exited before \`cluster stopped\``);
      }
      const codes = (await withTimeout(Promise.all(closes), 10000, 'every client to see its close')).map((e) => e.code);
      const settled = await withTimeout(Promise.all(invokes), ACK_TIMEOUT_MS + INVOKE_SLACK_MS, 'the invokes in flight at SIGTERM to settle');
      console.log(
        `cluster SIGTERM: stopped in ${ms(stopMs)}; child exits ${JSON.stringify(tally(exits.map(({ e }) => `${e.role} ${e.status}`)))}; ` +
          `client close codes ${JSON.stringify(tally(codes))}; invokes in flight ${JSON.stringify(tally(settled.map((r) => (r.error ? r.error : r.ok ? 'answered' : 'wrong data'))))}`
      );
      for (const code of codes) assert.ok(code !== 1000 && code < 4500, `close code ${code}: the client reconnects on it`);
      assert.ok(settled.every((r) => r.error || r.ok), 'every answered echo has the data sent');
    });
  });

  describe('--store redis://: Redis in place of the store processes', { timeout: 120000 }, () => {
    const fx = clusterFixture({ workers: WORKERS, store: REDIS_URL, drainTimeoutMs: DRAIN_TIMEOUT_MS });

    it('no store process; channels span the workers; session data outlives a worker killed with -9', async () => {
      const { run } = fx;
      const children = assertHealth(await run.health(), run);
      assert.deepEqual([...children.keys()].filter((k) => k.startsWith('store/')), [], 'no store process with --store redis://');
      const fleet = (fx.fleet = new Fleet(run, { count: REDIS_CLIENTS, tag: 'redis' }));
      await fleet.connect();
      // Every channel reaches its subscribers on both workers (the balancer spreads them).
      await fleet.probe('redis-before-kill', 15000);
      const k = await killAndAwaitRespawn(run, 'worker', 0);
      assert.match(k.exitStatus, /^signal 9\b/, 'the exit status of a kill -9');
      await fleet.changed.until(
        () => fleet.clients.some((c) => c.events.some((e) => e.type === 'close' && e.at >= k.at)),
        15000,
        'a client of the killed worker to be closed'
      );
      await fleet.waitAllOpen(30000, 'after the worker kill');
      await fleet.assertSessions('redis, worker kill');
      await fleet.waitSubscribed(30000, 'redis, after the worker kill');
      await fleet.probe('redis-after-kill', 15000);
      console.log(`cluster redis: ${fleet.count} clients, worker 0 respawned after ${ms(k.respawnMs)}; sessions and channels intact`);
    });
  });

  describe('kill -9 of the store', { timeout: 300000 }, () => {
    const fx = clusterFixture({ workers: WORKERS, drainTimeoutMs: DRAIN_TIMEOUT_MS });

    it(`${STORE_KILL_CLIENTS} subscribers each get #gap for their channel, the store is respawned, delivery resumes`, { timeout: 240000 }, async () => {
      const { run } = fx;
      const fleet = (fx.fleet = new Fleet(run, { count: STORE_KILL_CLIENTS, sessions: false, tag: 'storekill' }));
      await fleet.connect();
      await fleet.probe('before-store-kill', 15000);
      fleet.startEcho();
      await fleet.changed.until(() => fleet.clients.every((c) => c.answered >= 1), 60000, 'every client echoing');
      const t0 = now();
      const k = await killAndAwaitRespawn(run, 'store', 0);
      assert.match(k.exitStatus, /^signal 9\b/, 'the exit status of a kill -9');
      assert.notEqual(k.newPid, k.pid, 'a new store process');
      const gapOf = (c) => c.gaps.some((g) => g.at >= t0 && g.data && g.data.channel === c.channel);
      await fleet.changed.until(() => fleet.clients.every(gapOf), 30000, () => {
        const missing = fleet.clients.filter((c) => !gapOf(c));
        return `#gap on every subscriber's channel (${missing.length} of ${fleet.count} without, e.g. client ${missing[0].i} on ${missing[0].channel} got ${JSON.stringify(missing[0].gaps.map((g) => g.data))})`;
      });
      const gapMs = fleet.clients.map((c) => c.gaps.find((g) => g.at >= t0).at - k.at).sort((a, b) => a - b);
      for (const c of fleet.clients) {
        for (const g of c.gaps) {
          assert.deepEqual(g.data, { channel: c.channel }, `client ${c.i}: #gap data is {"channel": name} of its own channel`);
        }
      }
      const rounds = await fleet.probe('after-store-kill', 30000, { retry: true });
      const pending = await fleet.stopEcho();
      fleet.assertInvokes(pending, 'store kill');
      const inv = fleet.invokeReport(t0, now(), { overlap: true });
      console.log(
        `cluster store kill -9: echo invokes meanwhile: ${inv.answered.length} answered (p99 ${ms(percentile(inv.answered, 0.99))}), ` +
          `${inv.errorCount} failed ${JSON.stringify(inv.errors)}, ${pending.length} pending`
      );
      const closes = fleet.closesSince(t0);
      console.log(
        `cluster store kill -9: respawned after ${ms(k.respawnMs)} (${k.addr} -> ${k.newAddr}); #gap reached all ${fleet.count} ` +
          `subscribers after p50 ${ms(percentile(gapMs, 0.5))}, max ${ms(gapMs[gapMs.length - 1])}; delivery back after ${rounds} publish round(s); ` +
          `client closes ${JSON.stringify(tally(closes.map((e) => e.code)))}`
      );
      assert.deepEqual(closes, [], 'no client socket closed: the workers re-subscribe on the new store');
      const health = await pollUntil(() => run.health(), (h) => h.httpStatus === 200, 15000, '/health 200 after the respawn');
      assert.equal(assertHealth(health, run).get('store/0').restarts, 1, 'the store restarted once');
    });
  });

  describe(`rolling restart (SIGUSR2) under ${CHAOS_CLIENTS} clients`, { timeout: 600000 }, () => {
    const fx = clusterFixture({ workers: WORKERS, drainTimeoutMs: DRAIN_TIMEOUT_MS });

    it('restarts the workers one at a time: no session lost, no permanent close, every invoke settled', { timeout: 540000 }, async () => {
      const { run } = fx;
      const fleet = (fx.fleet = new Fleet(run, { count: CHAOS_CLIENTS, tag: 'rolling' }));
      await fleet.connect();
      fleet.startEcho();
      // Load running: every client answered at least one echo.
      await fleet.changed.until(() => fleet.clients.every((c) => c.answered >= 1), 60000, 'every client echoing');
      const before = assertHealth(await run.health(), run);

      const from = run.mark();
      const t0 = now();
      run.signal('SIGUSR2');
      const done = await run.waitForLine(/^rolling restart done \((\d+) workers\)$/, 180000, from);
      const t1 = done.at;
      assert.equal(Number(done[1]), WORKERS, 'the line names every worker');
      const lines = run.linesSince(from);
      const readies = [];
      const exits = [];
      lines.forEach((line, idx) => {
        const r = parseChildReady(line);
        if (r) readies.push({ ...r, idx });
        const e = parseChildExited(line);
        if (e) exits.push({ ...e, idx });
      });
      const doneIdx = done.lineIndex - from;
      assert.deepEqual(
        [...readies, ...exits].filter((x) => x.role !== 'worker'),
        [],
        'only workers restarted'
      );
      const spans = [];
      for (let id = 0; id < WORKERS; id++) {
        const old = before.get(`worker/${id}`);
        const ex = exits.filter((e) => e.id === id && e.idx < doneIdx);
        const rd = readies.filter((r) => r.id === id && r.idx < doneIdx);
        assert.equal(ex.length, 1, `worker ${id} exited once:\n${lines.join('\n')}`);
        assert.equal(rd.length, 1, `worker ${id} started once:\n${lines.join('\n')}`);
        assert.equal(ex[0].pid, old.pid, `worker ${id}: the old process exited`);
        assert.equal(ex[0].status, 'exit 0', `worker ${id} drained and exited 0`);
        assert.notEqual(rd[0].pid, old.pid, `worker ${id}: a new process`);
        assert.equal(rd[0].addr, old.addr, `worker ${id}: on the same address`);
        spans.push([Math.min(ex[0].idx, rd[0].idx), Math.max(ex[0].idx, rd[0].idx), id]);
      }
      spans.sort((a, b) => a[0] - b[0]);
      for (let j = 1; j < spans.length; j++) {
        assert.ok(spans[j][0] > spans[j - 1][1], `one worker at a time: worker ${spans[j][2]} went before worker ${spans[j - 1][2]} was back:\n${lines.join('\n')}`);
      }

      await fleet.waitAllOpen(60000, 'after the rolling restart');
      const pending = await fleet.stopEcho();
      const closes = fleet.closesSince(t0);
      const during = fleet.invokeReport(t0, t1, { overlap: true });
      const reconnects = [];
      for (const c of fleet.clients) {
        for (const e of c.events) {
          if (e.type !== 'close' || e.at < t0) continue;
          const back = c.events.find((x) => x.type === 'connect' && x.at >= e.at);
          reconnects.push(back ? back.at - e.at : Infinity);
        }
      }
      reconnects.sort((a, b) => a - b);
      const a = during.answered;
      console.log(
        `cluster rolling restart: ${WORKERS} workers in ${ms(t1 - t0)} under ${fleet.count} clients; ` +
          `${closes.length} client closes ${JSON.stringify(tally(closes.map((e) => `${e.code} ${e.reason || '(no reason)'}`)))}, reconnected after ` +
          `p50 ${ms(percentile(reconnects, 0.5))}, max ${ms(reconnects[reconnects.length - 1])}`
      );
      console.log(
        `cluster rolling restart: echo invokes running during the restart: ${a.length} answered, p50 ${ms(percentile(a, 0.5))}, ` +
          `p99 ${ms(percentile(a, 0.99))}, max ${ms(a[a.length - 1])}; ${during.errorCount} failed ${JSON.stringify(during.errors)}`
      );
      const permanent = closes.filter((e) => e.code === 1000 || e.code >= 4500);
      assert.deepEqual(permanent, [], 'no client closed for good (1000 or >= 4500)');
      assert.ok(closes.length >= 1, 'the restart moved clients');
      fleet.assertInvokes(pending, 'rolling restart');
      assert.equal(during.errors.TimeoutError || 0, 0, 'no echo invoke timed out during the restart (in-flight invokes are answered before the close)');
      await fleet.assertSessions('rolling restart');
      await fleet.waitSubscribed(30000, 'after the rolling restart');
      await fleet.probe('after-rolling-restart', 15000);
      assertReconnectCodes(closes.map((e) => e.code), 'a drained worker closes its sockets with 4000');
    });
  });

  describe(`chaos: kill -9 of a random worker every ${CHAOS_INTERVAL_MS} ms for ${CHAOS_SECONDS} s under ${CHAOS_CLIENTS} clients`, { timeout: CHAOS_TEST_TIMEOUT_MS + 60000 }, () => {
    const fx = clusterFixture({ workers: WORKERS, drainTimeoutMs: DRAIN_TIMEOUT_MS });

    it('every killed worker is respawned, its clients reconnect (p95 <= 1 s), nothing is lost', { timeout: CHAOS_TEST_TIMEOUT_MS }, async () => {
      const { run } = fx;
      // The clients are split over two Node threads (PROTOCOL.md's reconnect rule makes all the
      // clients of a killed worker reconnect at once: on one thread they would queue behind each
      // other, about 1 ms each, and the test would measure itself).
      const fleet = (fx.fleet = new FleetGroup(run, { count: CHAOS_CLIENTS, threads: 2, tag: 'chaos' }));
      await fleet.connect();
      await fleet.startEcho();
      await fleet.waitEchoing(60000);
      console.log(
        `cluster chaos: ${fleet.count} clients (on ${fleet.parts.length} threads) from ${Math.min(CLIENT_ADDRESSES, fleet.count)} addresses connected, subscribed to ` +
          `${fleet.channelCount} channels and with session data in ${ms(fleet.setupMs)}; killing a worker every ${CHAOS_INTERVAL_MS} ms for ${CHAOS_SECONDS} s`
      );

      const killCount = Math.max(1, Math.floor((CHAOS_SECONDS * 1000) / CHAOS_INTERVAL_MS));
      const chaosStart = now();
      const kills = [];
      // The report below is printed even when the chaos stops early (a respawn missing, say).
      let chaosError = null;
      try {
        for (let n = 0; n < killCount; n++) {
          // Pacing of the chaos, not synchronisation: the next kill is due at a fixed time.
          const due = chaosStart + (n + 1) * CHAOS_INTERVAL_MS;
          if (due > now()) await delay(due - now());
          const id = Math.floor(Math.random() * WORKERS);
          const k = await killAndAwaitRespawn(run, 'worker', id);
          kills.push(k);
          assert.match(k.exitStatus, /^signal 9\b/, `kill ${n + 1}: the exit status of a kill -9`);
          assert.notEqual(k.newPid, k.pid, `kill ${n + 1}: a new process`);
          assert.equal(k.newAddr, k.addr, `kill ${n + 1}: worker ${id} respawned on the same address`);
        }
        // The last kill gets its interval too before the chaos is over (pacing, as above): its
        // clients may all still look open the instant after it, before the balancer saw it.
        const over = chaosStart + (killCount + 1) * CHAOS_INTERVAL_MS;
        if (over > now()) await delay(over - now());
        await fleet.waitAllOpen(60000, 'after the chaos');
      } catch (err) {
        chaosError = err;
      }
      const endAt = now();

      const clients = await fleet.clientEvents();
      // Attribute each close to the latest kill before it.
      const rows = kills.map((k, n) => {
        const to = n + 1 < kills.length ? kills[n + 1].at : endAt;
        const closed = [];
        for (const c of clients) {
          const closes = c.events.filter((e) => e.type === 'close' && e.at >= k.at && e.at < to);
          if (!closes.length) continue;
          const back = c.events.find((e) => e.type === 'connect' && e.at >= closes[0].at);
          closed.push({ client: c.i, code: closes[0].code, reason: closes[0].reason, extra: closes.length - 1, reconnectMs: back ? back.at - k.at : null });
        }
        const times = closed.filter((r) => r.reconnectMs !== null).map((r) => r.reconnectMs).sort((a, b) => a - b);
        return { n: n + 1, k, closed, times };
      });
      const stray = kills.length ? (await fleet.closesSince(0)).filter((e) => e.at < kills[0].at) : [];
      const all = rows.flatMap((r) => r.times).sort((a, b) => a - b);
      const closedAll = rows.flatMap((r) => r.closed);
      const codes = tally(closedAll.map((r) => r.code));
      const reasons = tally(closedAll.map((r) => `${r.code} ${r.reason || '(no reason)'}`));
      const pad = (v, w) => String(v).padStart(w);
      console.log('cluster chaos: kill worker      pid  respawn closed reconnected      p50      max  codes');
      for (const r of rows) {
        console.log(
          `cluster chaos: ${pad(r.n, 4)} ${pad(r.k.id, 6)} ${pad(r.k.pid, 8)} ${pad(ms(r.k.respawnMs), 8)} ${pad(r.closed.length, 6)} ` +
            `${pad(r.times.length, 11)} ${pad(ms(percentile(r.times, 0.5)), 8)} ${pad(ms(r.times[r.times.length - 1]), 8)}  ${JSON.stringify(tally(r.closed.map((x) => x.code)))}`
        );
      }
      console.log(
        `cluster chaos: reconnect after kill -9 over ${kills.length} kills, ${all.length} reconnects: p50 ${ms(percentile(all, 0.5))}, ` +
          `p95 ${ms(percentile(all, 0.95))}, p99 ${ms(percentile(all, 0.99))}, max ${ms(all[all.length - 1])}; ` +
          `close codes and reasons ${JSON.stringify(reasons)}`
      );
      // The timeline of the slowest clients, so a slow reconnect can be explained.
      const slow = closedAll.filter((r) => r.reconnectMs === null || r.reconnectMs > 5000).slice(0, 5);
      for (const r of slow) {
        const c = clients[r.client];
        const k = rows.find((row) => row.closed.includes(r)).k;
        const timeline = c.events
          .filter((e) => e.at >= k.at - 100)
          .slice(0, 12)
          .map((e) => `${e.type}${e.code !== undefined ? ` ${e.code} ${e.reason || ''}`.trimEnd() : ''}${e.message ? ` (${e.message})` : ''} at +${Math.round(e.at - k.at)} ms`);
        console.log(`cluster chaos: slow reconnect of client ${r.client} (kill ${rows.find((row) => row.closed.includes(r)).n}): ${timeline.join(', ')}`);
      }
      if (chaosError) throw chaosError;

      const pending = await fleet.stopEcho();
      const inv = await fleet.invokeReport();
      const ans = inv.answered;
      console.log(
        `cluster chaos: echo invokes: ${ans.length} answered (p50 ${ms(percentile(ans, 0.5))}, p99 ${ms(percentile(ans, 0.99))}, ` +
          `max ${ms(ans[ans.length - 1])}), ${inv.errorCount} failed ${JSON.stringify(inv.errors)}, ${pending.length} pending, longest ${ms(inv.maxAny)}`
      );

      assert.deepEqual(stray, [], 'no client closed before the first kill');
      assert.ok(closedAll.length > 0, 'the kills closed clients');
      const notBack = closedAll.filter((r) => r.reconnectMs === null);
      assert.deepEqual(notBack, [], 'every closed client reconnected');
      assert.ok(percentile(all, 0.95) <= 1000, `reconnect p95 ${ms(percentile(all, 0.95))} <= 1000 ms`);

      await fleet.waitSubscribed(30000, 'after the chaos');
      await fleet.probe('after-chaos', 15000);
      await fleet.assertInvokes(pending, 'chaos');
      await fleet.assertSessions('chaos');

      // /health and /metrics count every kill.
      const health = await pollUntil(() => run.health(), (h) => h.httpStatus === 200, 15000, '/health 200 after the chaos');
      const children = assertHealth(health, run);
      const m = await pollUntil(
        () => run.metrics(),
        (mm) => {
          for (let id = 0; id < WORKERS; id++) {
            if (mm.value('sc_restarts_total', { role: 'worker', id }) !== kills.filter((k) => k.id === id).length) return false;
          }
          return true;
        },
        10000,
        'sc_restarts_total of each worker = its kills'
      );
      for (let id = 0; id < WORKERS; id++) {
        const n = kills.filter((k) => k.id === id).length;
        assert.equal(children.get(`worker/${id}`).restarts, n, `/health: worker ${id} restarted ${n} times`);
      }
      assertRequiredSeries(m, run);
      // Last, so that a wrong close code does not hide the checks above.
      assertReconnectCodes(closedAll.map((r) => r.code), "the balancer closes a killed worker's clients with 4000");
      const extra = closedAll.filter((r) => r.extra > 0);
      assert.deepEqual(extra, [], 'no client closed twice after one kill');
    });
  });
});

