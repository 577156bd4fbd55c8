// The client fleets of cluster.test.js: socketcluster-client sockets through a cluster's
// balancer, each subscribed to a channel, holding session data and invoking `echo`, with every
// close, connect and message recorded.
//
// `Fleet` holds its clients on the calling thread. `RemoteFleet` runs a `Fleet` on a worker
// thread of its own and offers the same methods (as promises): all clients on one Node thread
// make the test process, not the server, the bottleneck when hundreds of them reconnect at once
// (socketcluster-client spends about 1 ms of CPU on a reconnect), as real clients each have a
// machine of their own. Every time (`now()`, the `at` of each event) is on the main thread's
// clock (`performance.now()` there), in every thread.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { isDeepStrictEqual } = require('node:util');
const { setTimeout: delay } = require('node:timers/promises');
const { isMainThread, workerData } = require('node:worker_threads');
const { ThreadCaller, serveCalls } = require('./thread-rpc');
const {
  RunProcess,
  createClient,
  connectClient,
  closeClients,
  nextEvent,
  subscribe,
  withTimeout,
} = require('./harness');

/** A positive integer from the environment, or `fallback`; anything else is an error. */
function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) <= 0) throw new Error(`${name}=${raw}: expected a positive integer`);
  return Number(raw);
}

/**
 * Pause after each echo (load shaping, not synchronisation): about 1000/(rtt + pause) invokes/s
 * per client, some 4,000/s for 1,000 clients. The clients, the cluster and the test share the
 * machine's cores: at 100 ms (some 8,000/s) the steady echo alone kept both cores of the CI
 * machine busy, and the reconnect times measured the queue behind it.
 */
const ECHO_PAUSE_MS = envInt('CHAOS_ECHO_PAUSE_MS', 250);
const CHANNELS = 20;
const ACK_TIMEOUT_MS = 5000;
/** An invoke must settle within its ack timeout plus this. */
const INVOKE_SLACK_MS = 1000;
const SESSION_KEY = 'cluster-test';
/** Distinct client addresses (127.0.0.2 to 127.0.0.251). */
const CLIENT_ADDRESSES = 250;

/** The main thread's `performance.timeOrigin`: `now()` counts from it on every thread. */
const TIME_BASE = isMainThread ? performance.timeOrigin : workerData.timeBase;
const now = () => performance.timeOrigin - TIME_BASE + performance.now();

/** Wakes waiters when something changed; `until(pred)` re-checks pred at each change, bounded. */
class Notifier {
  constructor() {
    this.waiters = new Set();
    this.scheduled = false;
  }

  /** Called on every event; the waiters run once per turn of the event loop however many came. */
  notify() {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const waiters = [...this.waiters];
      this.waiters.clear();
      for (const w of waiters) w();
    });
  }

  /** Resolves once `pred()` holds; rejects after `timeoutMs` naming `what()`. */
  async until(pred, timeoutMs, what) {
    const deadline = now() + timeoutMs;
    while (!pred()) {
      const left = deadline - now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.add(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

/** Runs `fn` over `items`, at most `limit` at once. */
async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  });
  await Promise.all(runners);
  return out;
}

/** Counts of a list of strings, as `{ value: count }`. */
function tally(values) {
  const out = {};
  for (const v of values) out[v] = (out[v] || 0) + 1;
  return out;
}

/**
 * socketcluster-client sockets through the balancer, each subscribed to one of `channelCount`
 * channels, with a session cookie and session data (`sessions`), recording every close, connect,
 * channel message and `#gap`; `startEcho()` runs one echo loop per client (one invoke at a time).
 */
class Fleet {
  constructor(run, { count, channelCount = CHANNELS, sessions = true, tag = 'fleet' }) {
    this.run = run;
    this.count = count;
    this.sessions = sessions;
    this.changed = new Notifier();
    const suffix = crypto.randomBytes(4).toString('hex');
    this.channels = Array.from({ length: channelCount }, (_, j) => `${tag}-${j}-${suffix}`);
    this.clients = Array.from({ length: count }, (_, i) => ({
      i,
      localAddress: `127.0.0.${2 + (i % CLIENT_ADDRESSES)}`,
      channel: this.channels[i % channelCount],
      cookie: null,
      socket: null,
      chan: null,
      session: null,
      events: [],
      received: [],
      gaps: [],
      seq: 0,
      answered: 0,
      pendingSince: null,
    }));
    // Every echo invoke: its start, duration and error name (null when answered).
    this.invokes = { start: [], dur: [], err: [] };
    this.mismatches = [];
    this.echoing = false;
    this.loops = [];
    this.publisher = null;
  }

  /** Connects every client at once, subscribes each, and sets its session data. */
  async connect() {
    const t0 = now();
    if (this.sessions) {
      await withTimeout(
        mapLimit(this.clients, 50, async (c) => {
          c.cookie = await this.run.newSessionCookie({ localAddress: c.localAddress });
        }),
        90000,
        `${this.count} session cookies`
      );
    }
    for (const c of this.clients) {
      c.socket = createClient(this.run, {
        autoReconnectOptions: {}, // the client's real defaults
        ackTimeout: ACK_TIMEOUT_MS,
        wsOptions: this.run.wsOptions({ cookie: c.cookie, localAddress: c.localAddress }),
      });
      this._record(c);
    }
    await withTimeout(
      Promise.all(
        this.clients.map((c) => {
          const connected = nextEvent(c.socket, 'connect', 60000);
          c.socket.connect();
          return connected;
        })
      ),
      90000,
      `${this.count} clients to connect`
    );
    await withTimeout(
      Promise.all(
        this.clients.map(async (c) => {
          c.chan = await subscribe(c.socket, c.channel, undefined, 60000);
          (async () => {
            for await (const data of c.chan) {
              c.received.push(data);
              this.changed.notify();
            }
          })();
        })
      ),
      90000,
      `${this.count} subscriptions`
    );
    if (this.sessions) {
      await withTimeout(
        Promise.all(
          this.clients.map(async (c) => {
            const value = { client: c.i, token: crypto.randomBytes(8).toString('hex') };
            await c.socket.invoke('sessionSet', { key: SESSION_KEY, value });
            const id = await c.socket.invoke('sessionId');
            assert.equal(typeof id, 'string', `sessionId of client ${c.i}`);
            c.session = { id, value };
          })
        ),
        90000,
        `${this.count} sessionSet and sessionId calls`
      );
      const ids = new Set(this.clients.map((c) => c.session.id));
      assert.equal(ids.size, this.count, 'every client has a session of its own (its own cookie)');
    }
    this.setupMs = now() - t0;
  }

  _record(c) {
    const s = c.socket;
    (async () => {
      for await (const { code, reason } of s.listener('close')) {
        c.events.push({ type: 'close', at: now(), code, reason });
        this.changed.notify();
      }
    })();
    (async () => {
      for await (const { code, reason } of s.listener('connectAbort')) {
        c.events.push({ type: 'connectAbort', at: now(), code, reason });
        this.changed.notify();
      }
    })();
    (async () => {
      // The transport's error says why a connect failed (an HTTP status, a reset).
      for await (const { error } of s.listener('error')) {
        c.events.push({ type: 'error', at: now(), message: error && error.message });
        this.changed.notify();
      }
    })();
    (async () => {
      for await (const _status of s.listener('connect')) {
        c.events.push({ type: 'connect', at: now() });
        this.changed.notify();
      }
    })();
    (async () => {
      for await (const data of s.receiver('#gap')) {
        c.gaps.push({ at: now(), data });
        this.changed.notify();
      }
    })();
  }

  /** One echo loop per client: invoke, await the answer or the error, pause, again. */
  startEcho() {
    this.echoing = true;
    this.loops = this.clients.map((c) => this._echoLoop(c));
  }

  async _echoLoop(c) {
    const s = c.socket;
    await delay(Math.random() * ECHO_PAUSE_MS); // spread the loops
    while (this.echoing) {
      if (s.state !== s.OPEN) {
        // Wait for the client's own reconnect: an invoke now would make it connect at once.
        await nextEvent(s, 'connect', 1000).catch(() => {});
        continue;
      }
      const payload = { client: c.i, seq: ++c.seq, text: 'echo ✓' };
      const start = now();
      c.pendingSince = start;
      let err = null;
      try {
        const got = await s.invoke('echo', payload);
        c.answered++;
        if (!isDeepStrictEqual(got, payload) && this.mismatches.length < 1000) {
          this.mismatches.push({ client: c.i, sent: payload, got });
        }
      } catch (e) {
        err = e && e.name ? e.name : String(e);
      }
      c.pendingSince = null;
      this.invokes.start.push(start);
      this.invokes.dur.push(now() - start);
      this.invokes.err.push(err);
      this.changed.notify();
      if (this.echoing) await delay(ECHO_PAUSE_MS);
    }
  }

  /**
   * Stops the echo loops and waits for them: each ends once its invoke settled, which must be
   * within the ack timeout + slack. Returns the clients whose invoke never settled.
   */
  async stopEcho() {
    this.echoing = false;
    const bound = ACK_TIMEOUT_MS + INVOKE_SLACK_MS + ECHO_PAUSE_MS + 1000;
    await withTimeout(Promise.all(this.loops), bound, 'the echo loops to end').catch(() => {});
    const t = now();
    return this.clients
      .filter((c) => c.pendingSince !== null)
      .map((c) => ({ client: c.i, pendingMs: Math.round(t - c.pendingSince) }));
  }

  /**
   * The echo invokes started in [from, to), or with `overlap` those running at any time in it:
   * answered durations (sorted), errors by name, the longest.
   */
  invokeReport(from = -Infinity, to = Infinity, { overlap = false } = {}) {
    const answered = [];
    const errors = [];
    let maxAny = 0;
    const { start, dur, err } = this.invokes;
    for (let k = 0; k < start.length; k++) {
      const inside = overlap ? start[k] < to && start[k] + dur[k] >= from : start[k] >= from && start[k] < to;
      if (!inside) continue;
      maxAny = Math.max(maxAny, dur[k]);
      if (err[k] === null) answered.push(dur[k]);
      else errors.push(err[k]);
    }
    answered.sort((a, b) => a - b);
    return { answered, errors: tally(errors), errorCount: errors.length, maxAny };
  }

  /** Asserts: every invoke settled (none pending), none took longer than ack timeout + slack, every answer right. */
  assertInvokes(pending, label) {
    const all = this.invokeReport();
    assert.ok(all.answered.length > 0, `${label}: some echo invokes were answered`);
    assert.deepEqual(pending, [], `${label}: echo invokes still pending after the ack timeout + ${INVOKE_SLACK_MS} ms`);
    assert.ok(
      all.maxAny <= ACK_TIMEOUT_MS + INVOKE_SLACK_MS,
      `${label}: the longest echo invoke took ${Math.round(all.maxAny)} ms (> ack timeout ${ACK_TIMEOUT_MS} + ${INVOKE_SLACK_MS} ms)`
    );
    assert.deepEqual(this.mismatches.slice(0, 5), [], `${label}: echo answered with other data`);
    return all;
  }

  allOpen() {
    return this.clients.every((c) => c.socket.state === c.socket.OPEN);
  }

  async waitAllOpen(timeoutMs, label) {
    await this.changed.until(() => this.allOpen(), timeoutMs, () => {
      const closed = this.clients.filter((c) => c.socket.state !== c.socket.OPEN);
      return `${label}: every client open (${closed.length} not: ${closed
        .slice(0, 5)
        .map((c) => `client ${c.i} ${c.socket.state}, last close ${JSON.stringify(c.events.filter((e) => e.type === 'close').slice(-1)[0])}`)
        .join('; ')})`;
    });
  }

  /** Waits until every client's channel is subscribed again (the client re-subscribes after a reconnect). */
  async waitSubscribed(timeoutMs, label) {
    await withTimeout(
      Promise.all(
        this.clients.map((c) =>
          c.chan.state === c.chan.SUBSCRIBED ? null : c.chan.listener('subscribe').once()
        )
      ),
      timeoutMs,
      {
        toString: () => {
          const t = now();
          const pending = this.clients.filter((c) => c.chan.state !== c.chan.SUBSCRIBED);
          const shown = pending.slice(0, 5).map(
            (c) =>
              `client ${c.i} (socket ${c.socket.state}, id ${c.socket.id}, channel ${c.chan.name} ${c.chan.state}; ` +
              `events ${JSON.stringify(c.events.slice(-6).map((e) => `${e.type}${e.code ? ` ${e.code}` : ''} ${Math.round(e.at - t)} ms`))})`
          );
          return `${label}: every channel subscribed again (${pending.length} not: ${shown.join('; ')})`;
        },
      }
    );
  }

  /** A client that publishes (connected from 127.0.0.1, not subscribed). */
  async getPublisher() {
    if (!this.publisher || this.publisher.state !== this.publisher.OPEN) {
      const { socket } = await connectClient(this.run, { ackTimeout: ACK_TIMEOUT_MS, connectWait: 15000 });
      this.publisher = socket;
    }
    return this.publisher;
  }

  /**
   * Publishes `{ probe: tag, round }` on every channel until every client received a probe of
   * `tag` on its channel: one round when `retry` is false, else a new round every 2 s within
   * `timeoutMs`. Asserts no client got a probe twice. Returns the rounds published.
   */
  async probe(tag, timeoutMs, { retry = false } = {}) {
    const has = (c) => c.received.some((d) => d && d.probe === tag);
    const deadline = now() + timeoutMs;
    const publishErrors = [];
    let rounds = 0;
    for (let round = 0; ; round++) {
      const publisher = await this.getPublisher();
      rounds++;
      await Promise.all(
        this.channels.map((ch) =>
          publisher.invokePublish(ch, { probe: tag, round }).catch((e) => publishErrors.push(`${ch}: ${e.name} ${e.message}`))
        )
      );
      const wait = retry ? Math.min(2000, deadline - now()) : deadline - now();
      try {
        await this.changed.until(() => this.clients.every(has), Math.max(0, wait), 'probe');
        break;
      } catch {
        if (!retry || now() >= deadline) {
          const missing = this.clients.filter((c) => !has(c));
          throw new Error(
            `${tag}: ${missing.length} of ${this.count} subscribers got no publish on their channel within ${timeoutMs} ms ` +
              `(${rounds} rounds; channels missing: ${[...new Set(missing.map((c) => c.channel))].join(', ')}; ` +
              `publish errors: ${publishErrors.slice(0, 5).join(' | ') || 'none'})`
          );
        }
      }
    }
    if (!retry) {
      const twice = this.clients.filter((c) => c.received.filter((d) => d && d.probe === tag).length > 1);
      assert.equal(twice.length, 0, `${tag}: ${twice.length} clients got the probe twice`);
    }
    return rounds;
  }

  /** Asserts every client's sessionGet returns what it set and its session id is unchanged. */
  async assertSessions(label) {
    const results = await withTimeout(
      Promise.all(
        this.clients.map(async (c) => {
          const [value, id] = await Promise.all([
            c.socket.invoke('sessionGet', { key: SESSION_KEY }),
            c.socket.invoke('sessionId'),
          ]);
          return { c, value, id };
        })
      ),
      60000,
      `${label}: sessionGet of ${this.count} clients`
    );
    const lost = results.filter((r) => !isDeepStrictEqual(r.value, r.c.session.value));
    const changed = results.filter((r) => r.id !== r.c.session.id);
    assert.equal(
      lost.length,
      0,
      `${label}: ${lost.length} sessions lost, e.g. ${lost
        .slice(0, 3)
        .map((r) => `client ${r.c.i} set ${JSON.stringify(r.c.session.value)} got ${JSON.stringify(r.value)}`)
        .join('; ')}`
    );
    assert.equal(changed.length, 0, `${label}: ${changed.length} clients now have another session id`);
  }

  /** Waits until every client had an echo answered. */
  waitEchoing(timeoutMs) {
    return this.changed.until(() => this.clients.every((c) => c.answered >= 1), timeoutMs, 'every client echoing');
  }

  /** Every client's `{ i, events }`. */
  clientEvents() {
    return this.clients.map((c) => ({ i: c.i, events: c.events }));
  }

  /** Every close since `from`: `{ client, at, code, reason }`. */
  closesSince(from) {
    const out = [];
    for (const c of this.clients) {
      for (const e of c.events) if (e.type === 'close' && e.at >= from) out.push({ client: c.i, ...e });
    }
    return out;
  }

  close() {
    this.echoing = false; // ends the echo loops of a test that failed midway
    closeClients(this.clients.map((c) => c.socket).filter(Boolean));
    if (this.publisher) closeClients(this.publisher);
  }
}

/** The methods of a `Fleet` that a `RemoteFleet` forwards to its thread (each returns a promise). */
const REMOTE_METHODS = [
  'connect',
  'startEcho',
  'stopEcho',
  'invokeReport',
  'assertInvokes',
  'waitAllOpen',
  'waitSubscribed',
  'probe',
  'assertSessions',
  'closesSince',
  'waitEchoing',
  'clientEvents',
];

/**
 * A `Fleet` of `count` clients on a worker thread of its own: the same methods, each returning
 * a promise of what the fleet's returns (an assertion failing there rejects it with the same
 * message). `clientEvents()` gives every client's `{ i, events }`; `close()` closes the clients
 * and ends the thread.
 */
class RemoteFleet {
  constructor(run, opts) {
    this.count = opts.count;
    this.thread = new ThreadCaller(__filename, { fleetThread: true, timeBase: TIME_BASE, port: run.port, opts }, 'fleet thread');
  }

  _call(method, args) {
    return this.thread.call(method, ...args);
  }

  async close() {
    await withTimeout(this._call('close', []), 10000, 'the fleet thread to close its clients').catch(() => {});
    await this.thread.terminate();
  }
}
for (const method of REMOTE_METHODS) {
  RemoteFleet.prototype[method] = function (...args) {
    return this._call(method, args);
  };
}

/** The worker thread of a RemoteFleet: a Fleet, and its methods called by message. */
function serveFleetThread() {
  // A RunProcess with only what clients need (its port): the master runs on the main thread.
  const run = Object.assign(Object.create(RunProcess.prototype), { port: workerData.port });
  const fleet = new Fleet(run, workerData.opts);
  const own = { close: () => fleet.close() };
  serveCalls((method) => own[method] || (REMOTE_METHODS.includes(method) && fleet[method].bind(fleet)));
}

/**
 * `count` clients in `threads` fleets used as one (the first on this thread, each other on a
 * worker thread of its own); every method returns a promise. Clients are numbered across the
 * fleets (the first fleet's first, and so on); each fleet has `CHANNELS` channels of its own.
 */
class FleetGroup {
  constructor(run, { count, threads = 2, tag = 'fleet' }) {
    const n = Math.max(1, Math.min(threads, count));
    this.count = count;
    this.parts = [];
    this.offsets = [];
    let first = 0;
    for (let k = 0; k < n; k++) {
      const size = Math.floor(count / n) + (k < count % n ? 1 : 0);
      const opts = { count: size, tag: `${tag}-${k}` };
      this.parts.push(k === 0 ? new Fleet(run, opts) : new RemoteFleet(run, opts));
      this.offsets.push(first);
      first += size;
    }
    this.channelCount = CHANNELS * n;
    this.setupMs = null;
  }

  _all(method, ...args) {
    return Promise.all(this.parts.map((p) => p[method](...args)));
  }

  /** `rows` of each fleet (arrays of objects with a fleet-local `client` or `i`), numbered across the fleets. */
  _renumber(perPart, key) {
    return perPart.flatMap((rows, k) => rows.map((r) => ({ ...r, [key]: r[key] + this.offsets[k] })));
  }

  async connect() {
    const t0 = now();
    await this._all('connect');
    this.setupMs = now() - t0;
  }

  startEcho() {
    return this._all('startEcho');
  }

  waitEchoing(timeoutMs) {
    return this._all('waitEchoing', timeoutMs);
  }

  waitAllOpen(timeoutMs, label) {
    return this._all('waitAllOpen', timeoutMs, label);
  }

  waitSubscribed(timeoutMs, label) {
    return this._all('waitSubscribed', timeoutMs, label);
  }

  async probe(tag, timeoutMs, opts) {
    return Math.max(...(await this._all('probe', tag, timeoutMs, opts)));
  }

  assertSessions(label) {
    return this._all('assertSessions', label);
  }

  async stopEcho() {
    return this._renumber(await this._all('stopEcho'), 'client');
  }

  async clientEvents() {
    return this._renumber(await this._all('clientEvents'), 'i');
  }

  async closesSince(from) {
    return this._renumber(await this._all('closesSince', from), 'client');
  }

  /** Fleet.invokeReport over every fleet. */
  async invokeReport(...args) {
    const parts = await this._all('invokeReport', ...args);
    const errors = {};
    for (const p of parts) for (const [k, v] of Object.entries(p.errors)) errors[k] = (errors[k] || 0) + v;
    return {
      answered: parts.flatMap((p) => p.answered).sort((a, b) => a - b),
      errors,
      errorCount: parts.reduce((sum, p) => sum + p.errorCount, 0),
      maxAny: Math.max(...parts.map((p) => p.maxAny)),
    };
  }

  /** Fleet.assertInvokes over every fleet; `pending` from `stopEcho()`. */
  async assertInvokes(pending, label) {
    assert.deepEqual(pending, [], `${label}: echo invokes still pending after the ack timeout + ${INVOKE_SLACK_MS} ms`);
    await this._all('assertInvokes', [], label);
  }

  async close() {
    await Promise.all(this.parts.map((p) => p.close()));
  }
}

if (!isMainThread && workerData && workerData.fleetThread) serveFleetThread();

module.exports = {
  Fleet,
  RemoteFleet,
  FleetGroup,
  Notifier,
  envInt,
  mapLimit,
  tally,
  now,
  ECHO_PAUSE_MS,
  CHANNELS,
  ACK_TIMEOUT_MS,
  INVOKE_SLACK_MS,
  SESSION_KEY,
  CLIENT_ADDRESSES,
};
