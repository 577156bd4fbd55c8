// Missed-message recovery (issue 19; the wire contract in ../../docs/recovery.md): channels named
// by a `[[worker.history]]` rule carry a position (offset, epoch) on every `#publish`, and a
// client that resubscribes with the last position it saw gets what it missed, then live
// messages: each once, in order; where the history cannot cover the gap, an explicit `#gap`.
// Driven with the real socketcluster-client v20 and the helper the worker serves,
// crates/sc-worker/src/socketcluster-recovery.js.
//
//   a. the extra fields of `#publish` are harmless to a plain client, and visible in its raw frames
//   b. a subscriber cut off for 2 s (a TCP relay between it and the server, cut and refusing)
//      while 1,000 messages are published gets them all after its reconnect
//   c. kill -9 of the server a subscriber is on (two servers sharing a store process): none lost
//   d. a restart of the store process: a new epoch, and an explicit `#gap` (for a subscriber that
//      stayed and for one that resubscribes with a position of the old epoch), then live messages
//   e. jitter: JITTER_CLIENTS (200) clients force-closed every 15 s and offline 2 s while
//      JITTER_RATE (100) messages a second are published to their channel, for JITTER_MS (30 s
//      here; scripts/jitter runs 2 minutes): every message once and in order; prints the p50/p99
//      catch-up time after a reconnect
//
// Our server only (the reference server keeps no history), one process topology: the file starts
// its own processes.
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const vm = require('node:vm');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  HOST,
  TOPOLOGY,
  ServerProcess,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  withTimeout,
  RawClient,
  uniqueChannel,
  percentile,
  tapChannelFrames,
} = require('./harness');
const HELPER = path.join(__dirname, '../../crates/sc-worker/src/socketcluster-recovery.js');
const { attachRecovery } = require(HELPER);
const { JitterThread } = require('./recovery-jitter');

const REFERENCE = process.env.SC_SERVER === 'reference';

const envInt = (name, dflt) => {
  const v = process.env[name];
  if (v == null || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name}=${v}: expected a positive integer`);
  return n;
};
const JITTER_MS = envInt('JITTER_MS', 30000);
const JITTER_CLIENTS = envInt('JITTER_CLIENTS', 200);
const JITTER_RATE = envInt('JITTER_RATE', 100);
const JITTER_CYCLE_MS = envInt('JITTER_CYCLE_MS', 15000);
const JITTER_OUTAGE_MS = envInt('JITTER_OUTAGE_MS', 2000);
const JITTER_THREADS = envInt('JITTER_THREADS', 2);

// Channels `rec-*` keep a history; `plain-*` do not.
const CONFIG_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-recovery-'));
const CONFIG = path.join(CONFIG_DIR, 'serve.toml');
process.on('exit', () => fs.rmSync(CONFIG_DIR, { recursive: true, force: true }));
fs.writeFileSync(
  CONFIG,
  '[[worker.history]]\nchannel = "rec-*"\nmax_len = 10000\nmax_age_ms = 300000\n'
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (n) => (Number.isFinite(n) ? Math.round(n) : n);

/** `serve --config CONFIG` plus `args`, sharing `authKey` when given. */
function historyServer({ authKey, args = [] } = {}) {
  return new ServerProcess({ authKey, args: ['--config', CONFIG, ...args] });
}

/**
 * Follows one channel of a socketcluster-client socket: what the app gets from the channel's
 * stream (`messages`), the raw frames of the channel (`frames`: `#publish` with its position,
 * the reply to `#subscribe`, `#gap`), and the helper's gap reports (`gaps`, when `recovery` is
 * given). Create it before subscribing, so that the reply is seen; then `follow(channel)`.
 */
function watch(socket, channelName, recovery) {
  const w = {
    socket,
    channelName,
    messages: [],
    arrivals: [], // performance.now() of each message
    frames: [],
    gaps: [],
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
            `${what} (${w.messages.length} messages, last ${JSON.stringify(w.messages.slice(-3))}; ` +
            `last frames ${JSON.stringify(w.frames.slice(-3))}; gaps ${JSON.stringify(w.gaps)})`,
        }
      );
    },
    follow(channel) {
      (async () => {
        for await (const data of channel) {
          w.messages.push(data);
          w.arrivals.push(performance.now());
          w.changed();
        }
      })();
      return channel;
    },
    /** Publish frames (the raw view) from index `from` of `frames` on. */
    publishes(from = 0) {
      return w.frames.slice(from).filter((f) => f.kind === 'publish');
    },
  };
  tapChannelFrames(socket, channelName, w.frames, w.changed);
  if (recovery) {
    recovery.onGap((gap) => {
      if (gap.channel !== channelName) return;
      w.gaps.push({ ...gap, at: performance.now() });
      w.changed();
    });
  }
  return w;
}

/** Asserts that `frames` (publishes) have offsets first, first+1, ... in `epoch`. */
function assertContiguous(frames, first, epoch, what) {
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    if (f.offset !== first + i || f.epoch !== epoch) {
      assert.fail(
        `${what}: frame ${i} has position ${JSON.stringify({ offset: f.offset, epoch: f.epoch })}, ` +
          `expected ${JSON.stringify({ offset: first + i, epoch })}`
      );
    }
  }
}

/** Asserts that `list` is exactly 0 .. n-1 (each once, in order), naming the first difference. */
function assertSequence(list, n, what) {
  const firstBad = list.findIndex((v, i) => v !== i);
  if (firstBad >= 0 || list.length !== n) {
    const at = firstBad >= 0 ? firstBad : Math.min(list.length, n);
    const dup = list.length - new Set(list).size;
    assert.fail(
      `${what}: ${list.length} messages, expected 0..${n - 1} exactly once in order; ` +
        `first difference at index ${at}: ${JSON.stringify(list.slice(Math.max(0, at - 2), at + 3))}; ` +
        `${dup} duplicates`
    );
  }
}

/**
 * Publishes `values` to `channel` with transmitPublish, `perTick` every `tickMs`, calling
 * `onPublished(i)` after each; the last one with invokePublish, so that when this resolves the
 * server has handled all of them (one socket's frames are handled in order).
 */
async function publishPaced(publisher, channel, values, { perTick = 10, tickMs = 10, onPublished } = {}) {
  for (let i = 0; i < values.length; i++) {
    if (i === values.length - 1) {
      await publisher.invokePublish(channel, values[i]);
    } else {
      publisher.transmitPublish(channel, values[i]);
    }
    if (onPublished) onPublished(i);
    if ((i + 1) % perTick === 0) await sleep(tickMs);
  }
}

/** A TCP relay in front of a server's port: `cut()` drops every connection and refuses new ones. */
class Relay {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.port = 0;
    this.conns = new Set();
    this.server = null;
    this.cuts = 0;
  }

  async open() {
    const server = net.createServer((down) => {
      const up = net.connect({ host: HOST, port: this.targetPort });
      const pair = { down, up };
      this.conns.add(pair);
      const end = () => {
        this.conns.delete(pair);
        down.destroy();
        up.destroy();
      };
      for (const s of [down, up]) {
        s.setNoDelay(true);
        s.on('error', end);
        s.on('close', end);
      }
      down.pipe(up);
      up.pipe(down);
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, HOST, resolve);
    });
    this.port = server.address().port;
    this.server = server;
  }

  /** Closes the listening socket (connections are refused from now on) and every connection. */
  cut() {
    this.cuts++;
    if (this.server) this.server.close();
    this.server = null;
    for (const { down, up } of this.conns) {
      down.destroy();
      up.destroy();
    }
    this.conns.clear();
  }

  close() {
    this.cut();
  }
}

describe('missed-message recovery', {
  skip: (REFERENCE && 'ours only: the reference server keeps no history') ||
    (TOPOLOGY !== 'single' && 'it starts its own processes: the single topology runs it'),
}, () => {
  describe('one server, history in-process', () => {
    let server;
    let publisher;

    before(async () => {
      server = historyServer();
      await server.start();
      ({ socket: publisher } = await connectClient(server));
    });
    after(async () => {
      if (server) await server.stop();
    });

    it('a. a plain client gets exactly the published data; its raw frames carry offset and epoch', async () => {
      const channel = uniqueChannel('rec-a');
      const { socket } = await connectClient(server);
      const w = watch(socket, channel);
      w.follow(await subscribe(socket, channel));
      await w.until(() => w.frames.some((f) => f.kind === 'reply'), 5000, 'the subscribe reply in the raw frames');

      const values = [{ n: 1, text: 'héllo' }, 'two', 3, [4, { deep: [null] }], null, true, undefined, { offset: 'mine', epoch: 'mine' }, 'end'];
      for (const v of values) {
        if (v === undefined) publisher.transmitPublish(channel);
        else await publisher.invokePublish(channel, v);
      }
      await w.until(() => w.messages.length >= values.length, 5000, `${values.length} messages`);
      // One more round trip through the channel: nothing else arrives before it.
      await publisher.invokePublish(channel, 'sentinel');
      await w.until(() => w.messages.includes('sentinel'), 5000, 'the sentinel');
      assert.deepEqual(w.messages, [...values, 'sentinel'], 'the channel stream holds exactly the published data');

      const reply = w.frames.find((f) => f.kind === 'reply');
      assert.equal(typeof reply.epoch, 'string', `the subscribe reply names the epoch: ${JSON.stringify(reply)}`);
      assert.ok(Number.isInteger(reply.offset) && reply.offset >= 0, `the subscribe reply has an offset: ${JSON.stringify(reply)}`);
      const pubs = w.publishes();
      assert.equal(pubs.length, values.length + 1);
      assertContiguous(pubs, reply.offset + 1, reply.epoch, 'the raw #publish frames');
      assert.deepEqual(pubs.map((f) => f.hasData), [...values, 'sentinel'].map((v) => v !== undefined), 'no "data" key for a publish without data');
      console.log(
        `recovery a: ${pubs.length} messages, offsets ${pubs[0].offset}..${pubs[pubs.length - 1].offset}, epoch ${JSON.stringify(reply.epoch)}`
      );
      closeClients(socket);
    });

    it('a. raw frames: #publish and the #subscribe reply on a recorded channel; an unrecorded channel unchanged', async () => {
      const recorded = uniqueChannel('rec-raw');
      const plain = uniqueChannel('plain-raw');
      const [raw] = await RawClient.connect(server);
      try {
        const r1 = await raw.invoke('#subscribe', { channel: recorded }, 2);
        assert.deepEqual(Object.keys(r1).sort(), ['data', 'rid']);
        assert.deepEqual(Object.keys(r1.data).sort(), ['channel', 'epoch', 'offset']);
        assert.equal(r1.data.channel, recorded);
        const r2 = await raw.invoke('#subscribe', { channel: plain }, 3);
        assert.deepEqual(r2, { rid: 3 }, 'the reply for a channel without history stays {"rid":N}');

        await publisher.invokePublish(recorded, { x: 1 });
        const text = await raw.nextRaw((t) => t.includes('"#publish"'), 5000, { what: 'the #publish' });
        assert.deepEqual(JSON.parse(text), {
          event: '#publish',
          data: { channel: recorded, data: { x: 1 }, offset: r1.data.offset + 1, epoch: r1.data.epoch },
        });
        publisher.transmitPublish(recorded);
        const bare = JSON.parse(await raw.nextRaw((t) => t.includes('"#publish"'), 5000, { what: 'the #publish without data' }));
        assert.deepEqual(bare, { event: '#publish', data: { channel: recorded, offset: r1.data.offset + 2, epoch: r1.data.epoch } });

        await publisher.invokePublish(plain, { y: 2 });
        const plainText = await raw.nextRaw((t) => t.includes('"#publish"'), 5000, { what: 'the #publish of the plain channel' });
        assert.deepEqual(JSON.parse(plainText), { event: '#publish', data: { channel: plain, data: { y: 2 } } });
      } finally {
        raw.close();
      }
    });

    it('the worker serves the helper at /socketcluster-recovery.js; as a <script> it defines SocketClusterRecovery', async () => {
      const res = await fetch(`${server.httpUrl}/socketcluster-recovery.js`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') || '', /javascript/);
      const body = await res.text();
      assert.equal(body, fs.readFileSync(HELPER, 'utf8'), 'the file of the repository');
      const context = vm.createContext({});
      vm.runInContext(body, context);
      assert.equal(typeof vm.runInContext('SocketClusterRecovery.attachRecovery', context), 'function');
    });

    it('b. a subscriber cut off for 2 s while 1,000 messages are published gets them all, once, in order', async () => {
      const channel = uniqueChannel('rec-b');
      const relay = new Relay(server.port);
      await relay.open();
      try {
        const socket = createClient({ port: relay.port, secure: false });
        const connected = nextEvent(socket, 'connect', 5000);
        socket.connect();
        await connected;
        const recovery = attachRecovery(socket);
        const w = watch(socket, channel, recovery);
        const chan = w.follow(recovery.subscribe(channel));
        await withTimeout(chan.listener('subscribe').once(), 5000, 'the subscription');

        const BEFORE = 50;
        const DURING = 1000;
        const AFTER = 50;
        const TOTAL = BEFORE + DURING + AFTER;
        const seq = (from, n) => Array.from({ length: n }, (_, i) => from + i);

        // Live before the outage.
        await publishPaced(publisher, channel, seq(0, BEFORE));
        await w.until(() => w.messages.length === BEFORE, 5000, `${BEFORE} live messages`);
        const before = recovery.position(channel);
        assert.equal(typeof before.epoch, 'string');

        // The outage: every connection through the relay dropped (no close frame), connections
        // refused for 2 s; 1,000 messages published meanwhile.
        const closed = nextEvent(socket, 'close', 5000);
        const cutAt = performance.now();
        relay.cut();
        const { code } = await closed;
        await publishPaced(publisher, channel, seq(BEFORE, DURING), { perTick: 7, tickMs: 10 });
        const publishedBy = performance.now() - cutAt;
        await sleep(Math.max(0, 2000 - (performance.now() - cutAt)));
        let connectAt = null;
        const reconnected = nextEvent(socket, 'connect', 10000).then(() => {
          connectAt = performance.now();
        });
        await relay.open();
        const reopenedAt = performance.now();

        // The last 50 are published at once: they race the client's resubscribe.
        await publishPaced(publisher, channel, seq(BEFORE + DURING, AFTER));
        await reconnected;
        await w.until(() => w.messages.length >= BEFORE + DURING, 10000, 'the messages of the outage');
        const caughtUp = w.arrivals[BEFORE + DURING - 1];
        await w.until(() => w.messages.length >= TOTAL, 10000, `${TOTAL} messages`);
        await publisher.invokePublish(channel, 'sentinel');
        await w.until(() => w.messages.includes('sentinel'), 5000, 'the sentinel');

        assert.equal(w.messages.pop(), 'sentinel');
        assertSequence(w.messages, TOTAL, 'the channel stream');
        assert.deepEqual(w.gaps, [], 'no gap reported: the history covered the outage');
        const first = w.frames.find((f) => f.kind === 'reply');
        assertContiguous(w.publishes(), first.offset + 1, first.epoch, 'the raw #publish frames');
        const end = recovery.position(channel);
        assert.deepEqual(end, { offset: first.offset + TOTAL + 1, epoch: first.epoch });
        console.log(
          `recovery b: outage ${fmt(reopenedAt - cutAt)} ms (close code ${code}), ${DURING} published in ${fmt(publishedBy)} ms during it; ` +
            `reconnected ${fmt(connectAt - reopenedAt)} ms after the relay reopened, the ${BEFORE + DURING} messages published before ` +
            `it all received ${fmt(caughtUp - connectAt)} ms after the reconnect; ${w.messages.length} messages, 0 lost, 0 duplicated`
        );
        closeClients(socket);
      } finally {
        relay.close();
      }
    });
  });

  describe('two servers sharing a store process', () => {
    const authKey = `recovery-key-${process.pid}`;
    let store;
    let a;
    let b;

    before(async () => {
      store = new ServerProcess({ subcommand: 'store' });
      await store.start();
      const storeArgs = ['--store', `sc://${HOST}:${store.port}`];
      a = historyServer({ authKey, args: storeArgs });
      b = historyServer({ authKey, args: storeArgs });
      await a.start();
      await b.start();
    });
    after(async () => {
      for (const p of [a, b, store]) if (p) await p.stop();
    });

    it('c. kill -9 of the server a subscriber is on, during publishing: every message once, in order', async () => {
      const channel = uniqueChannel('rec-c');
      const { socket } = await connectClient(a);
      const recovery = attachRecovery(socket);
      const w = watch(socket, channel, recovery);
      const chan = w.follow(recovery.subscribe(channel));
      await withTimeout(chan.listener('subscribe').once(), 5000, 'the subscription');
      const { socket: pub } = await connectClient(b);

      const TOTAL = 3000;
      const KILL_AT = 600;
      const values = Array.from({ length: TOTAL }, (_, i) => i);
      let killAt = null;
      let killDone = null;
      let aBackAt = null;
      let closedAt = null;
      let connectAt = null;
      let receivedAtConnect = null;
      let publishedCount = 0;
      let publishedAtConnect = null;
      const closed = nextEvent(socket, 'close', 15000).then((e) => {
        closedAt = performance.now();
        return e;
      });
      const reconnected = closed.then(() =>
        nextEvent(socket, 'connect', 20000).then(() => {
          connectAt = performance.now();
          receivedAtConnect = w.messages.length;
          publishedAtConnect = publishedCount;
        })
      );
      await publishPaced(pub, channel, values, {
        perTick: 5,
        tickMs: 10,
        onPublished(i) {
          publishedCount = i + 1;
          if (i === KILL_AT) {
            killAt = performance.now();
            killDone = (async () => {
              await a.kill();
              await a.start();
              aBackAt = performance.now();
            })();
          }
        },
      });
      const publishedAt = performance.now();
      await withTimeout(killDone, 20000, 'server A to restart');
      const { code } = await closed;
      await reconnected;
      await w.until(() => w.messages.length >= TOTAL, 15000, `${TOTAL} messages`);
      const doneAt = w.arrivals[TOTAL - 1];
      await pub.invokePublish(channel, 'sentinel');
      await w.until(() => w.messages.includes('sentinel'), 5000, 'the sentinel');

      assert.equal(w.messages.pop(), 'sentinel');
      assertSequence(w.messages, TOTAL, 'the channel stream');
      assert.deepEqual(w.gaps, [], 'no gap reported: the store kept the history');
      const first = w.frames.find((f) => f.kind === 'reply');
      assertContiguous(w.publishes(), first.offset + 1, first.epoch, 'the raw #publish frames');
      console.log(
        `recovery c: kill -9 of server A after ${KILL_AT} of ${TOTAL} publishes; client closed ${fmt(closedAt - killAt)} ms ` +
          `after the kill (code ${code}); A listening again ${fmt(aBackAt - killAt)} ms after the kill; client reconnected ` +
          `${fmt(connectAt - killAt)} ms after the kill with ${receivedAtConnect} messages received and ${publishedAtConnect} ` +
          `published; those ${publishedAtConnect} all received ${fmt(Math.max(0, w.arrivals[publishedAtConnect - 1] - connectAt))} ms ` +
          `after the reconnect; all ${TOTAL} ${fmt(doneAt - connectAt)} ms after it (publishing ended ${fmt(publishedAt - killAt)} ms after the kill); ` +
          `0 lost, 0 duplicated`
      );
      closeClients(socket, pub);
    });

    it('d. a store restart: a new epoch and an explicit #gap (staying and resubscribing), then live messages', async () => {
      const channel = uniqueChannel('rec-d');
      // X stays connected to A throughout; Y (on B) is offline during the restart and comes
      // back with a position of the old epoch.
      const { socket: x } = await connectClient(a);
      const rx = attachRecovery(x);
      const wx = watch(x, channel, rx);
      const chx = wx.follow(rx.subscribe(channel));
      await withTimeout(chx.listener('subscribe').once(), 5000, "X's subscription");
      const { socket: y } = await connectClient(b);
      const ry = attachRecovery(y);
      const wy = watch(y, channel, ry);
      const chy = wy.follow(ry.subscribe(channel));
      await withTimeout(chy.listener('subscribe').once(), 5000, "Y's subscription");
      const { socket: pub } = await connectClient(b);

      const FIRST = 20;
      for (let i = 0; i < FIRST; i++) await pub.invokePublish(channel, { old: i });
      await wx.until(() => wx.messages.length === FIRST, 5000, `${FIRST} messages on X`);
      await wy.until(() => wy.messages.length === FIRST, 5000, `${FIRST} messages on Y`);
      const oldX = rx.position(channel);
      assert.deepEqual(ry.position(channel), oldX, 'both saw the same position');
      const e1 = oldX.epoch;

      const yClosed = nextEvent(y, 'close', 5000);
      y.disconnect();
      await yClosed;
      const framesBefore = wx.frames.length;

      const killAt = performance.now();
      await store.kill();
      await store.start();
      const storeBackAt = performance.now();

      // X: a #gap with the new epoch. Publish probes until X gets a message again (the servers'
      // store connections come back on their own schedule; a publish may fail meanwhile).
      await wx.until(() => wx.gaps.length > 0, 20000, 'a gap notice on X after the store restart');
      const gapX = wx.gaps[0];
      const gapXAt = gapX.at;
      let probes = 0;
      const probeResults = [];
      const probing = (async () => {
        while (!wx.messages.some((m) => m && m.probe != null)) {
          const k = probes++;
          pub.invokePublish(channel, { probe: k }).then(
            () => probeResults.push(`${k} acked`),
            (err) => probeResults.push(`${k} failed: ${err.name} ${err.message}`)
          );
          await sleep(200);
        }
      })();
      await withTimeout(probing, 20000, 'a message on X after the store restart');
      const liveAgainAt = performance.now();
      const LIVE = 100;
      for (let i = 0; i < LIVE; i++) pub.transmitPublish(channel, { live: i });
      await pub.invokePublish(channel, { live: LIVE });
      await wx.until(() => wx.messages.some((m) => m && m.live === LIVE), 10000, 'the live messages on X');

      const xFrames = wx.frames.slice(framesBefore);
      const firstGapIdx = xFrames.findIndex((f) => f.kind === 'gap');
      const firstNewIdx = xFrames.findIndex((f) => f.kind === 'publish');
      assert.ok(firstGapIdx >= 0 && firstGapIdx < firstNewIdx, `X's first frame of the channel after the restart is the #gap: ${JSON.stringify(xFrames.slice(0, 3))}`);
      const gapFrame = xFrames[firstGapIdx];
      assert.equal(typeof gapFrame.epoch, 'string', `the #gap of a recorded channel names the epoch: ${JSON.stringify(gapFrame)}`);
      assert.ok(Number.isInteger(gapFrame.offset), `the #gap of a recorded channel has an offset: ${JSON.stringify(gapFrame)}`);
      const e2 = gapFrame.epoch;
      assert.notEqual(e2, e1, 'the store restart made a new epoch');
      assert.equal(gapX.implicit, false);
      assert.deepEqual(gapX.previous, oldX, "the helper's gap says where X was");
      assert.equal(wx.gaps.length, 1, `one gap on X: ${JSON.stringify(wx.gaps)}`);
      const xAfter = xFrames.slice(firstGapIdx + 1).filter((f) => f.kind === 'publish');
      assertContiguous(xAfter, gapFrame.offset + 1, e2, "X's #publish frames after the gap");
      const xLive = wx.messages.filter((m) => m && m.live != null).map((m) => m.live);
      assertSequence(xLive, LIVE + 1, "X's live messages after the gap");
      assert.deepEqual(wx.messages.slice(0, FIRST), Array.from({ length: FIRST }, (_, i) => ({ old: i })));

      // Y comes back with {offset, epoch: e1}: a #gap naming e2 before the reply, what the new
      // history holds, then live messages.
      const framesYBefore = wy.frames.length;
      const messagesYBefore = wy.messages.length;
      const yBack = nextEvent(y, 'connect', 10000);
      y.connect();
      await yBack;
      await wy.until(() => wy.gaps.length > 0, 10000, 'a gap notice on Y after its resubscribe');
      const TAIL = 50;
      for (let i = 0; i < TAIL; i++) pub.transmitPublish(channel, { tail: i });
      await pub.invokePublish(channel, { tail: TAIL });
      await wy.until(() => wy.messages.some((m) => m && m.tail === TAIL), 10000, 'the tail on Y');
      await wx.until(() => wx.messages.some((m) => m && m.tail === TAIL), 10000, 'the tail on X');

      const gapY = wy.gaps[0];
      assert.equal(wy.gaps.length, 1, `one gap on Y: ${JSON.stringify(wy.gaps)}`);
      assert.equal(gapY.implicit, false, `Y got an explicit #gap: ${JSON.stringify(gapY)}`);
      assert.deepEqual(gapY.previous, oldX, 'Y asked to resume from the old epoch');
      assert.equal(gapY.epoch, e2, "Y's gap names the new epoch");
      const yFrames = wy.frames.slice(framesYBefore);
      assert.equal(yFrames[0].kind, 'gap', `Y's first frame of the channel after its reconnect is the #gap: ${JSON.stringify(yFrames.slice(0, 3))}`);
      assert.equal(yFrames[1].kind, 'reply', 'then the subscribe reply');
      assert.deepEqual({ offset: yFrames[1].offset, epoch: yFrames[1].epoch }, { offset: gapY.offset, epoch: e2 }, 'the reply continues from the gap');
      const yAfter = yFrames.filter((f) => f.kind === 'publish');
      assertContiguous(yAfter, gapY.offset + 1, e2, "Y's #publish frames after the gap");
      // Whatever X got in the new epoch, Y got too, at the same offsets; then the tail.
      const yByOffset = new Map(yAfter.map((f) => [f.offset, f.data]));
      for (const f of wx.publishes(framesBefore)) {
        if (f.epoch !== e2 || f.offset <= gapY.offset) continue;
        assert.deepEqual(yByOffset.get(f.offset), f.data, `Y's message at offset ${f.offset} is X's`);
      }
      // The new epoch's history is complete (max_len 10000): Y gets all of it, from offset 1.
      assert.equal(gapY.offset, 0, 'the history of the new epoch holds everything from offset 1');
      const yNew = wy.messages.slice(messagesYBefore);
      assertSequence(yNew.filter((m) => m && m.live != null).map((m) => m.live), LIVE + 1, "Y's live messages");
      assertSequence(yNew.filter((m) => m && m.tail != null).map((m) => m.tail), TAIL + 1, "Y's tail");
      assertSequence(wx.messages.filter((m) => m && m.tail != null).map((m) => m.tail), TAIL + 1, "X's tail");
      console.log(
        `recovery d: epoch ${JSON.stringify(e1)} -> ${JSON.stringify(e2)}; store back ${fmt(storeBackAt - killAt)} ms after the kill; ` +
          `#gap on X ${fmt(gapXAt - killAt)} ms after the kill (offset ${gapFrame.offset}), X live again ${fmt(liveAgainAt - killAt)} ms ` +
          `after it (probes: ${probeResults.join(', ')}; X got ${JSON.stringify(wx.messages.filter((m) => m && m.probe != null))}); Y resubscribed from ${JSON.stringify(gapY.previous)}: #gap ${JSON.stringify({ offset: gapY.offset, epoch: gapY.epoch })}, ` +
          `${yAfter.length} messages after it (${yAfter.length - TAIL - 1} from the new history)`
      );
      closeClients(x, y, pub);
    });
  });

  describe('jitter', () => {
    let server;
    const threads = [];

    before(async () => {
      server = historyServer();
      await server.start();
    });
    after(async () => {
      for (const t of threads) await t.close();
      if (server) await server.stop();
    });

    it(`e. ${JITTER_CLIENTS} clients force-closed every ${JITTER_CYCLE_MS / 1000} s for ${JITTER_OUTAGE_MS / 1000} s, ${JITTER_RATE} publishes/s for ${JITTER_MS / 1000} s: all delivered once, in order`, { timeout: JITTER_MS + 120000 }, async () => {
      const channel = uniqueChannel('rec-jitter');
      const published = new Int32Array(new SharedArrayBuffer(4));
      const perThread = Math.ceil(JITTER_CLIENTS / JITTER_THREADS);
      for (let first = 0; first < JITTER_CLIENTS; first += perThread) {
        threads.push(
          new JitterThread({
            server,
            channel,
            count: Math.min(perThread, JITTER_CLIENTS - first),
            first,
            total: JITTER_CLIENTS,
            cycleMs: JITTER_CYCLE_MS,
            outageMs: JITTER_OUTAGE_MS,
            published,
          })
        );
      }
      await Promise.all(threads.map((t) => t.ready(30000)));
      const { socket: pub } = await connectClient(server);

      // The publisher: JITTER_RATE a second on a schedule (a late tick catches up), the count
      // shared with the clients' threads after each publish.
      await Promise.all(threads.map((t) => t.start()));
      const startedAt = performance.now();
      let sent = 0;
      let maxLagMs = 0;
      await new Promise((resolve) => {
        const tick = setInterval(() => {
          const elapsed = performance.now() - startedAt;
          const due = Math.min(Math.floor((elapsed * JITTER_RATE) / 1000), Math.floor((JITTER_MS * JITTER_RATE) / 1000));
          maxLagMs = Math.max(maxLagMs, ((due - sent) * 1000) / JITTER_RATE);
          while (sent < due) {
            pub.transmitPublish(channel, sent);
            sent++;
            Atomics.store(published, 0, sent);
          }
          if (elapsed >= JITTER_MS) {
            clearInterval(tick);
            resolve();
          }
        }, 5);
      });
      // The last one acknowledged: the server handled every publish before it.
      await pub.invokePublish(channel, sent);
      sent++;
      Atomics.store(published, 0, sent);
      const publishEnd = performance.now();

      const reports = (await Promise.all(threads.map((t) => t.finish(sent, 30000)))).flat();
      const settledIn = performance.now() - publishEnd;
      assert.equal(reports.length, JITTER_CLIENTS);
      const bad = reports.filter((r) => r.violationCount || r.received !== sent || r.gaps.length);
      const catchUps = reports.flatMap((r) => r.catchUps).sort((p, q) => p - q);
      const closes = reports.reduce((s, r) => s + r.closes, 0);
      const reconnects = reports.reduce((s, r) => s + r.reconnects, 0);
      const deliveries = reports.reduce((s, r) => s + r.received, 0);
      console.log(
        `recovery e (jitter): ${JITTER_CLIENTS} clients on ${threads.length} threads, ${sent} messages in ${fmt(publishEnd - startedAt)} ms ` +
          `(${JITTER_RATE}/s; publisher at most ${fmt(maxLagMs)} ms behind schedule), ${deliveries} deliveries of ${sent * JITTER_CLIENTS} ` +
          `expected, ${closes} force-closes (${JITTER_OUTAGE_MS} ms offline each), ${reconnects} reconnects; ` +
          `${reports.filter((r) => r.violationCount).length} clients with messages out of order or duplicated, ` +
          `${reports.reduce((s, r) => s + r.gaps.length, 0)} gaps; all settled ${fmt(settledIn)} ms after the last publish`
      );
      console.log(
        `recovery e (jitter): catch-up after a reconnect (connect -> every message published before it received), ` +
          `${catchUps.length} reconnects: p50 ${fmt(percentile(catchUps, 0.5))} ms, p99 ${fmt(percentile(catchUps, 0.99))} ms, ` +
          `max ${fmt(catchUps[catchUps.length - 1])} ms`
      );
      assert.deepEqual(
        bad.slice(0, 5).map((r) => ({ index: r.index, received: r.received, violations: r.violations, gaps: r.gaps })),
        [],
        `${bad.length} clients did not get every message exactly once in order`
      );
      const minCloses = Math.floor(JITTER_MS / JITTER_CYCLE_MS);
      for (const r of reports) {
        assert.ok(r.closes >= Math.max(1, minCloses), `client ${r.index} was force-closed ${r.closes} times`);
        assert.equal(r.reconnects, r.closes, `client ${r.index}: one reconnect per force-close`);
      }
      assert.equal(catchUps.length, reconnects);
      closeClients(pub);
    });
  });
});
