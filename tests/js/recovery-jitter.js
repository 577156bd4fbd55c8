// The clients of recovery.test.js's jitter test, on a worker thread of their own (as
// client-thread.js does for the balancer's kill -9 test: a socketcluster-client delivery and a
// reconnect cost CPU on the thread that holds the client, and hundreds of clients on the test's
// own thread would measure that thread, not the server).
//
// `JitterThread` (main thread) starts a thread holding `count` socketcluster-client sockets, each
// with the recovery helper (crates/sc-worker/src/socketcluster-recovery.js) subscribed to
// `channel`. Once started (`start()`), each client is force-closed every `cycleMs` (its first close
// at its own phase, so that closes are spread evenly over the cycle): its WebSocket is terminated
// (a TCP close without a close frame, the client sees 1006) and it stays offline for `outageMs`,
// then connects again and resubscribes with the position it saw last. Every client checks that the
// messages of the channel are 0, 1, 2, ... (the publisher's sequence numbers): each once, in
// order. At each reconnect it reads how many messages were published so far (a counter the main
// thread's publisher shares through a SharedArrayBuffer) and records the time from its `connect`
// to having received all of them: the catch-up time.
'use strict';

const path = require('node:path');
const { isMainThread, workerData } = require('node:worker_threads');
const { ThreadCaller, serveCalls, waiter } = require('./thread-rpc');

/** Main-thread handle of a thread of jittering clients; every method returns a promise. */
class JitterThread {
  /**
   * `server`: `{ port }`; `published`: an Int32Array over a SharedArrayBuffer whose [0] is the
   * number of messages published so far; `first`/`total`: this thread's clients are numbers
   * first .. first+count-1 of `total` (for their phases).
   */
  constructor({ server, channel, count, first, total, cycleMs, outageMs, published }) {
    this.thread = new ThreadCaller(
      __filename,
      {
        jitterThread: true,
        port: server.port,
        channel,
        count,
        first,
        total,
        cycleMs,
        outageMs,
        published: published.buffer,
      },
      'jitter thread'
    );
  }

  _call(method, ...args) {
    return this.thread.call(method, ...args);
  }

  /** Connects every client and subscribes it (each within `ms`). */
  ready(ms) {
    return this._call('ready', ms);
  }

  /** Starts the force-closes. */
  start() {
    return this._call('start');
  }

  /**
   * Stops the force-closes (a client offline connects now), waits (at most `ms`) until every
   * client received `total` messages, and resolves with the thread's report.
   */
  finish(total, ms) {
    return this._call('finish', total, ms);
  }

  async close() {
    const { withTimeout } = require('./harness');
    await withTimeout(this._call('close'), 10000, 'the jitter thread to close its clients').catch(() => {});
    await this.thread.terminate();
  }
}

/** The thread: the clients, and the methods called by message. */
function serveJitterThread() {
  const { createClient, closeClients, nextEvent, withTimeout } = require('./harness');
  const { attachRecovery } = require(path.join(__dirname, '../../crates/sc-worker/src/socketcluster-recovery.js'));
  const { port, channel, count, first, total, cycleMs, outageMs } = workerData;
  const published = new Int32Array(workerData.published);
  const server = { port, secure: false };

  const { changed, until } = waiter(withTimeout);

  const clients = Array.from({ length: count }, (_, k) => {
    const socket = createClient(server, { connectTimeout: 10000 });
    const c = {
      index: first + k,
      socket,
      recovery: attachRecovery(socket),
      expected: 0, // the next sequence number due
      violations: [], // the first few messages out of order or duplicated
      violationCount: 0,
      gaps: [],
      closes: 0, // force-closes
      reconnects: 0, // connects after a force-close
      catchUpTarget: null, // messages published before the reconnect, while catching up
      connectedAt: 0,
      catchUps: [], // ms from connect to having received every message published before it
      offline: false,
      timer: null,
    };
    c.recovery.onGap((gap) => c.gaps.push(gap));
    return c;
  });

  const consume = async (c, ch) => {
    for await (const data of ch) {
      if (data === c.expected) {
        c.expected++;
      } else {
        c.violationCount++;
        if (c.violations.length < 5) c.violations.push({ expected: c.expected, got: data });
        // Go on from what came, so one loss is reported once, not as every message after it.
        if (Number.isInteger(data) && data > c.expected) c.expected = data + 1;
      }
      if (c.catchUpTarget != null && c.expected >= c.catchUpTarget) {
        c.catchUps.push(performance.now() - c.connectedAt);
        c.catchUpTarget = null;
      }
      changed();
    }
  };

  let running = false;

  /** Force-closes `c` now and brings it back after outageMs; then again after the cycle. */
  const jitter = (c) => {
    if (!running) return;
    c.closes++;
    c.offline = true;
    c.socket.options.autoReconnect = false;
    const ws = c.socket.transport && c.socket.transport.socket;
    if (ws && typeof ws.terminate === 'function') ws.terminate();
    else c.socket.disconnect(4000);
    c.timer = setTimeout(() => back(c), outageMs);
  };

  const back = (c) => {
    c.offline = false;
    c.socket.options.autoReconnect = true;
    c.socket.connect();
    if (running) c.timer = setTimeout(() => jitter(c), cycleMs - outageMs);
  };

  const methods = {
    async ready(ms) {
      await Promise.all(
        clients.map(async (c) => {
          const connected = nextEvent(c.socket, 'connect', ms);
          c.socket.connect();
          await connected;
          (async () => {
            for await (const _ of c.socket.listener('connect')) {
              c.connectedAt = performance.now();
              c.reconnects++;
              const target = Atomics.load(published, 0);
              c.catchUpTarget = c.expected >= target ? null : target;
              if (c.catchUpTarget == null) c.catchUps.push(0);
              changed();
            }
          })();
          const ch = c.recovery.subscribe(channel);
          const subscribed = withTimeout(ch.listener('subscribe').once(), ms, 'the subscription');
          consume(c, ch);
          await subscribed;
        })
      );
    },
    start() {
      running = true;
      for (const c of clients) {
        const phase = Math.round((c.index / total) * cycleMs);
        c.timer = setTimeout(() => jitter(c), phase);
      }
    },
    async finish(totalPublished, ms) {
      running = false;
      for (const c of clients) {
        clearTimeout(c.timer);
        if (c.offline) back(c);
      }
      try {
        // A client force-closed just after the last message already has them all: wait for its
        // reconnect too, so that every force-close is matched by one.
        await until(
          () => clients.every((c) => c.expected >= totalPublished && c.reconnects === c.closes && !c.offline),
          ms,
          `every client connected again with ${totalPublished} messages`
        );
      } catch (err) {
        const behind = clients.filter((c) => c.expected < totalPublished || c.reconnects !== c.closes);
        err.message += `: ${behind.length} behind, e.g. ${JSON.stringify(
          behind.slice(0, 3).map((c) => ({
            index: c.index,
            expected: c.expected,
            closes: c.closes,
            reconnects: c.reconnects,
            state: c.socket.state,
            gaps: c.gaps,
          }))
        )}`;
        throw err;
      }
      return clients.map((c) => ({
        index: c.index,
        received: c.expected,
        violationCount: c.violationCount,
        violations: c.violations,
        gaps: c.gaps,
        closes: c.closes,
        reconnects: c.reconnects,
        catchUps: c.catchUps,
      }));
    },
    close() {
      running = false;
      for (const c of clients) clearTimeout(c.timer);
      closeClients(clients.map((c) => c.socket));
    },
  };

  serveCalls((method) => methods[method]);
}

if (!isMainThread && workerData && workerData.jitterThread) serveJitterThread();

module.exports = { JitterThread };
