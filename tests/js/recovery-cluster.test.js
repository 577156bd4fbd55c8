// Missed-message recovery (issue 19) across the failures of a cluster: the real
// socketcluster-client with the worker's helper (crates/sc-worker/src/socketcluster-recovery.js)
// through the balancer of `socketcluster run` (harness.js RunProcess: two workers, one store
// process, one balancer; `--config` with a `[[worker.history]]` rule for `rec-*`). A publisher
// connected straight to the other worker (its own port, not the balancer) publishes one message
// a millisecond; the subscriber's worker is the one whose `GET /stats` counts a client.
//
//   a. kill -9 of the worker the subscriber is on: the balancer closes it with 4000, it
//      reconnects by itself (to the other worker) and resubscribes from its position: all
//      TOTAL messages, once, in order, at gap-free offsets of one epoch, no gap reported
//   b. kill -9 of the store process (the master respawns it, its history empty: a new epoch):
//      the subscriber stays connected and gets one explicit `#gap` naming the new epoch, then the
//      new epoch's messages at gap-free offsets; every message published after the notice
//      arrived is received, in order, once
//
// Each test starts its own cluster and prints its figures (`recovery cluster a:`, `b:`). Our
// binary only (SC_BIN), the single topology (`npm test`; the other topologies list their files).
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  TOPOLOGY,
  startRun,
  connectClient,
  closeClients,
  nextEvent,
  withTimeout,
  httpRequest,
  uniqueChannel,
  tapChannelFrames,
} = require('./harness');
const { attachRecovery } = require(path.join(__dirname, '../../crates/sc-worker/src/socketcluster-recovery.js'));

const REFERENCE = process.env.SC_SERVER === 'reference';

/** Messages published in test a, and the one after which the worker is killed. */
const TOTAL = 1000;
const KILL_AT = 300;
/** Test b: messages before the store is killed, and published after the gap notice arrived. */
const BEFORE = 300;
const AFTER = 1000;
/** The publisher's rate (messages per second). */
const RATE = 1000;
/** How long a failure may take to be noticed and repaired. */
const RECOVER_MS = 20000;

// `rec-*` keeps 10,000 messages. A child that dies 100 ms after its start is respawned at once
// (with the default 2 s the tests' kills, soon after the start, would count as a crash loop).
const CONFIG_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-recovery-cluster-'));
const CONFIG = path.join(CONFIG_DIR, 'run.toml');
process.on('exit', () => fs.rmSync(CONFIG_DIR, { recursive: true, force: true }));
fs.writeFileSync(
  CONFIG,
  'stable_after_ms = 100\n\n[[worker.history]]\nchannel = "rec-*"\nmax_len = 10000\nmax_age_ms = 300000\n'
);

const fmt = (n) => (Number.isFinite(n) ? Math.round(n) : n);

/** Starts a cluster before the tests of the enclosing describe and kills it after them. */
function runFixture() {
  const fx = { run: null };
  before(async () => {
    fx.run = await startRun({ workers: 2, stores: 1, balancers: 1, args: ['--config', CONFIG] });
  });
  after(async () => {
    if (fx.run) await fx.run.cleanup();
  });
  return fx;
}

/** The running children of `role` from /health, by id, each checked against its last `child ready` line. */
async function children(run, role) {
  const health = await run.health();
  const list = (health.children || []).filter((c) => c.role === role).sort((a, b) => a.id - b.id);
  for (const c of list) {
    assert.equal(c.state, 'running', `${role} ${c.id}: ${JSON.stringify(c)}`);
    assert.equal(c.pid, run.currentPid.get(`${role}/${c.id}`), `${role} ${c.id}: the pid of its last child ready line`);
  }
  return list;
}

/**
 * The sockets open on each worker (`GET /stats` of the worker itself, not through the balancer),
 * asked again until `pred(counts)` holds (at most `ms`).
 */
async function clientsPerWorker(workers, pred, ms = 5000) {
  const deadline = performance.now() + ms;
  for (;;) {
    const counts = [];
    for (const w of workers) {
      const res = await httpRequest(`http://${w.addr}/stats`);
      assert.equal(res.status, 200, `GET /stats of worker ${w.id}: ${res.body}`);
      counts.push(JSON.parse(res.body).clients);
    }
    if (pred(counts)) return counts;
    if (performance.now() > deadline) throw new Error(`clients per worker ${JSON.stringify(counts)}: not as expected within ${ms} ms`);
  }
}

/**
 * Publishes `{n}` for n = 1, 2, ... to `channel` at RATE a second (on a schedule: a late tick
 * catches up) until `end` (which may be set while it runs; the last one with invokePublish, so
 * `done` resolves with its n once the server has handled every publish). `count` is how many
 * were published; `onPublished(n)` is called after each.
 */
function startPublisher(socket, channel, { end = Infinity, onPublished } = {}) {
  const p = { count: 0, end, done: null };
  const startedAt = performance.now();
  p.done = new Promise((resolve, reject) => {
    const tick = setInterval(() => {
      const due = Math.floor(((performance.now() - startedAt) * RATE) / 1000);
      while (p.count < due) {
        const n = p.count + 1;
        if (n >= p.end) {
          clearInterval(tick);
          p.count = n;
          socket.invokePublish(channel, { n }).then(() => resolve(n), reject);
          return;
        }
        socket.transmitPublish(channel, { n });
        p.count = n;
        if (onPublished) onPublished(n);
      }
    }, 2);
  });
  return p;
}

/**
 * Follows a subscriber: its channel's messages (`messages`: `{n, at, published}`), the channel's
 * raw frames (`frames`: `#publish` with its position, the `#subscribe` reply, `#gap`), the
 * helper's gap reports (`gaps`) and the socket's `close`/`connect` events (`conn`), each stamped
 * with performance.now() and the publisher's count then (`pub.count`, once `pub` is set).
 */
function follow(socket, channelName, recovery) {
  const w = {
    pub: null,
    messages: [],
    frames: [],
    gaps: [],
    conn: [],
    waiters: [],
    changed() {
      const waiters = w.waiters;
      w.waiters = [];
      for (const f of waiters) f();
    },
    until(pred, ms, what) {
      return withTimeout(
        (async () => {
          while (!pred()) await new Promise((r) => w.waiters.push(r));
        })(),
        ms,
        {
          toString: () =>
            `${what} (${w.messages.length} messages, last ${JSON.stringify(w.messages.slice(-3).map((m) => m.n))}; ` +
            `last frames ${JSON.stringify(w.frames.slice(-3))}; gaps ${JSON.stringify(w.gaps)}; conn ${JSON.stringify(w.conn)})`,
        }
      );
    },
    published() {
      return w.pub ? w.pub.count : 0;
    },
    stream(channel) {
      (async () => {
        for await (const data of channel) {
          w.messages.push({ n: data && data.n, at: performance.now(), published: w.published() });
          w.changed();
        }
      })();
      return channel;
    },
    publishes(from = 0) {
      return w.frames.slice(from).filter((f) => f.kind === 'publish');
    },
  };
  tapChannelFrames(socket, channelName, w.frames, w.changed);
  for (const kind of ['close', 'connect']) {
    (async () => {
      for await (const e of socket.listener(kind)) {
        w.conn.push({ kind, code: e && e.code, at: performance.now(), published: w.published() });
        w.changed();
      }
    })();
  }
  recovery.onGap((gap) => {
    if (gap.channel !== channelName) return;
    w.gaps.push({ ...gap, at: performance.now(), published: w.published() });
    w.changed();
  });
  return w;
}

/** Asserts that `frames` (publishes) have offsets first, first+1, ... in `epoch`. */
function assertContiguous(frames, first, epoch, what) {
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    if (f.offset !== first + i || f.epoch !== epoch) {
      assert.fail(
        `${what}: frame ${i} (n ${f.n}) has position ${JSON.stringify({ offset: f.offset, epoch: f.epoch })}, ` +
          `expected ${JSON.stringify({ offset: first + i, epoch })}`
      );
    }
  }
}

/**
 * The subscriber through the balancer (with the helper), subscribed to a new `rec-` channel; the
 * worker it is on and the other one; a publisher connected straight to the other worker.
 */
async function subscriberAndPublisher(run, prefix) {
  const channel = uniqueChannel(prefix);
  const workers = await children(run, 'worker');
  assert.equal(workers.length, 2);
  const { socket } = await connectClient(run);
  const recovery = attachRecovery(socket);
  const w = follow(socket, channel, recovery);
  const chan = w.stream(recovery.subscribe(channel));
  await withTimeout(chan.listener('subscribe').once(), 5000, 'the subscription');
  await w.until(() => w.frames.some((f) => f.kind === 'reply'), 5000, 'the subscribe reply');
  const start = recovery.position(channel);
  assert.equal(start.offset, 0, `a new channel starts at offset 0: ${JSON.stringify(start)}`);
  const counts = await clientsPerWorker(workers, (c) => c[0] + c[1] === 1);
  const on = workers[counts[1] === 1 ? 1 : 0];
  const other = workers[counts[1] === 1 ? 0 : 1];
  const { socket: publisher } = await connectClient({ port: Number(other.addr.split(':').pop()), secure: false });
  await clientsPerWorker(workers, (c) => c[0] === 1 && c[1] === 1);
  return { channel, socket, recovery, w, start, on, other, publisher };
}

describe('missed-message recovery through `socketcluster run`', {
  skip: (REFERENCE && 'ours only: the reference server keeps no history and has no cluster') ||
    (TOPOLOGY !== 'single' && 'it starts its own cluster: the single topology runs it'),
}, () => {
  describe('a. kill -9 of the worker the subscriber is on', () => {
    const fx = runFixture();

    it(`all ${TOTAL} messages once, in order, no gap`, { timeout: 120000 }, async () => {
      const { run } = fx;
      const { channel, socket, recovery, w, start, on, other, publisher } = await subscriberAndPublisher(run, 'rec-worker');
      const epoch = start.epoch;
      const from = run.mark();
      let killing = null;
      const pub = (w.pub = startPublisher(publisher, channel, {
        end: TOTAL,
        onPublished(n) {
          if (n === KILL_AT) killing = run.kill('worker', on.id);
        },
      }));
      const startedAt = performance.now();
      await w.until(() => killing !== null, 10000, `${KILL_AT} publishes`);
      const killed = await killing;
      assert.equal(killed.pid, on.pid);
      const publishedAtKill = pub.count;

      await w.until(() => w.conn.some((e) => e.kind === 'connect'), RECOVER_MS, 'the reconnect');
      const lastN = await withTimeout(pub.done, RECOVER_MS, 'the publisher');
      const publishedIn = performance.now() - startedAt;
      await w.until(() => w.messages.some((m) => m.n === TOTAL), RECOVER_MS, `message ${TOTAL}`);
      // Nothing after the last one but what is published next: no duplicate, no late arrival.
      await publisher.invokePublish(channel, { n: TOTAL + 1 });
      await w.until(() => w.messages.some((m) => m.n === TOTAL + 1), 5000, 'the message after the last');
      const respawn = await run.waitForLine(new RegExp(`^child ready role=worker id=${on.id} pid=(\\d+)`), RECOVER_MS, from);
      const workers = await children(run, 'worker');
      const counts = await clientsPerWorker(workers, (c) => c[0] + c[1] === 2);

      assert.equal(lastN, TOTAL);
      const ns = w.messages.map((m) => m.n);
      const want = Array.from({ length: TOTAL + 1 }, (_, i) => i + 1);
      const firstBad = ns.findIndex((n, i) => n !== want[i]);
      assert.ok(
        firstBad < 0 && ns.length === want.length,
        `${ns.length} messages, expected 1..${TOTAL + 1} once each in order; first difference at index ${firstBad}: ` +
          `${JSON.stringify(ns.slice(Math.max(0, firstBad - 2), firstBad + 3))}`
      );
      assert.deepEqual(w.gaps, [], 'no gap reported: the store kept the history');
      assert.equal(w.frames.filter((f) => f.kind === 'gap').length, 0, 'no #gap frame');
      assertContiguous(w.publishes(), 1, epoch, 'the raw #publish frames');
      assert.deepEqual(recovery.position(channel), { offset: TOTAL + 1, epoch });
      const closes = w.conn.filter((e) => e.kind === 'close');
      const connects = w.conn.filter((e) => e.kind === 'connect');
      assert.equal(closes.length, 1, `one close: ${JSON.stringify(w.conn)}`);
      assert.equal(connects.length, 1, `one reconnect: ${JSON.stringify(w.conn)}`);
      // 4000 from the balancer, or socketcluster-client's own 1005 (cluster.test.js assertReconnectCodes).
      assert.ok([4000, 1005].includes(closes[0].code), `close code ${closes[0].code}`);
      const replies = w.frames.filter((f) => f.kind === 'reply');
      assert.equal(replies.length, 2, 'two subscribe replies: the subscribe and the resubscribe');

      const connect = connects[0];
      const beforeClose = w.messages.filter((m) => m.at < closes[0].at).length;
      const caughtUp = w.messages.find((m) => m.n === connect.published).at;
      const all = w.messages.find((m) => m.n === TOTAL).at;
      console.log(
        `recovery cluster a: worker ${on.id} (pid ${on.pid}) killed after ${publishedAtKill} of ${TOTAL} publishes (${RATE}/s, ` +
          `publisher on worker ${other.id}); ${beforeClose} received before the close (code ${closes[0].code}) ${fmt(closes[0].at - killed.at)} ms ` +
          `after the kill; reconnected ${fmt(connect.at - killed.at)} ms after the kill with ${connect.published} published ` +
          `(the resubscribe asked for ${JSON.stringify({ offset: replies[1].offset, epoch: replies[1].epoch })}); those caught up ` +
          `${fmt(caughtUp - killed.at)} ms after the kill; all ${TOTAL} ${fmt(all - killed.at)} ms after it (publishing took ` +
          `${fmt(publishedIn)} ms); worker ${on.id} respawned (pid ${respawn[1]}) ${fmt(respawn.at - killed.at)} ms after the kill; ` +
          `sockets per worker now ${JSON.stringify(counts)}; ${ns.length} messages, 0 lost, 0 duplicated, 0 gaps`
      );
      closeClients(socket, publisher);
    });
  });

  describe('b. kill -9 of the store process', () => {
    const fx = runFixture();

    it('an explicit #gap with the new epoch, then every message published after it', { timeout: 120000 }, async () => {
      const { run } = fx;
      const { channel, socket, recovery, w, start, on, other, publisher } = await subscriberAndPublisher(run, 'rec-store');
      const oldEpoch = start.epoch;
      const from = run.mark();
      const pub = (w.pub = startPublisher(publisher, channel));
      await w.until(() => w.messages.some((m) => m.n === BEFORE), 10000, `message ${BEFORE}`);
      const killed = await run.kill('store', 0);
      const publishedAtKill = pub.count;
      const framesAtKill = w.frames.length;

      await w.until(() => w.gaps.length > 0, RECOVER_MS, 'the gap notice');
      const gap = w.gaps[0];
      pub.end = gap.published + AFTER;
      const lastN = await withTimeout(pub.done, RECOVER_MS, 'the publisher');
      await w.until(() => w.messages.some((m) => m.n === lastN), RECOVER_MS, `message ${lastN}`);
      // Nothing after the last one but what is published next.
      await publisher.invokePublish(channel, { n: lastN + 1 });
      await w.until(() => w.messages.some((m) => m.n === lastN + 1), 5000, 'the message after the last');
      const respawn = await run.waitForLine(/^child ready role=store id=0 pid=(\d+)/, RECOVER_MS, from);

      // The notice: explicit, naming the new epoch and where the subscriber was.
      assert.equal(w.gaps.length, 1, `one gap: ${JSON.stringify(w.gaps)}`);
      assert.equal(gap.implicit, false, `an explicit #gap: ${JSON.stringify(gap)}`);
      assert.equal(typeof gap.epoch, 'string', `the #gap of a recorded channel names the epoch: ${JSON.stringify(gap)}`);
      assert.ok(Number.isInteger(gap.offset), `the #gap of a recorded channel has an offset: ${JSON.stringify(gap)}`);
      const newEpoch = gap.epoch;
      assert.notEqual(newEpoch, oldEpoch, 'the store restart made a new epoch');
      assert.equal(gap.previous && gap.previous.epoch, oldEpoch, `the gap says where the subscriber was: ${JSON.stringify(gap)}`);
      assert.deepEqual(w.conn, [], 'the subscriber stayed connected');

      // The raw frames: the old epoch at offsets 1, 2, ...; the #gap; the new epoch at offsets
      // gap.offset + 1, ...
      const frames = w.frames.filter((f) => f.kind !== 'reply');
      const gapIdx = frames.findIndex((f) => f.kind === 'gap');
      assert.equal(frames.filter((f) => f.kind === 'gap').length, 1, 'one #gap frame');
      const oldFrames = frames.slice(0, gapIdx);
      const newFrames = frames.slice(gapIdx + 1);
      assertContiguous(oldFrames, 1, oldEpoch, 'the #publish frames before the #gap');
      assert.deepEqual(gap.previous, { offset: oldFrames.length, epoch: oldEpoch });
      assert.ok(newFrames.length > 0);
      assertContiguous(newFrames, gap.offset + 1, newEpoch, 'the #publish frames after the #gap');
      assert.deepEqual(recovery.position(channel), { offset: gap.offset + newFrames.length, epoch: newEpoch });

      // The messages: in order, once; every one published after the notice arrived.
      const ns = w.messages.map((m) => m.n);
      const disorder = ns.findIndex((n, i) => i > 0 && !(n > ns[i - 1]));
      assert.equal(disorder, -1, `messages out of order or duplicated at index ${disorder}: ${JSON.stringify(ns.slice(Math.max(0, disorder - 2), disorder + 3))}`);
      assert.deepEqual(ns, [...oldFrames, ...newFrames].map((f) => f.n), "the channel stream is what the frames carried");
      const got = new Set(ns);
      const missing = [];
      for (let n = gap.published + 1; n <= lastN + 1; n++) if (!got.has(n)) missing.push(n);
      assert.deepEqual(missing.slice(0, 10), [], `${missing.length} of the messages published after the gap notice arrived are missing`);

      const lastOld = oldFrames.length ? oldFrames[oldFrames.length - 1].n : 0;
      const firstNew = newFrames[0];
      const lost = firstNew.n - lastOld - 1;
      const gapFrame = frames[gapIdx];
      console.log(
        `recovery cluster b: store (pid ${killed.pid}) killed after ${publishedAtKill} publishes (${RATE}/s; subscriber on ` +
          `worker ${on.id}, publisher on worker ${other.id}); respawned (pid ${respawn[1]}) ${fmt(respawn.at - killed.at)} ms after ` +
          `the kill; epoch ${JSON.stringify(oldEpoch)} -> ${JSON.stringify(newEpoch)}; #gap ${JSON.stringify({ offset: gap.offset, epoch: gap.epoch })} ` +
          `${fmt(gapFrame.at - killed.at)} ms after the kill with ${gap.published} published (previous ${JSON.stringify(gap.previous)}); ` +
          `the first message of the new epoch (n ${firstNew.n}, offset ${firstNew.offset}) ${fmt(firstNew.at - killed.at)} ms after the kill; ` +
          `${oldFrames.length} messages of the old epoch (last n ${lastOld}), ` +
          (lost ? `${lost} published meanwhile (n ${lastOld + 1}..${firstNew.n - 1}) lost, covered by the gap; ` : 'none lost: those published meanwhile were recorded in the new epoch; ') +
          `${newFrames.length} of the new epoch, every one of the ${lastN + 1 - gap.published} published after the notice arrived; ` +
          `${w.frames.length - framesAtKill} frames of the channel since the kill`
      );
      closeClients(socket, publisher);
    });
  });
});
