// socketcluster-client sockets on a worker thread of their own, for the tests that measure how
// fast hundreds of clients reconnect: on one Node thread they would queue behind each other
// (socketcluster-client spends about 1 ms of CPU on a reconnect) and the test would measure
// itself, where real clients each have a machine of their own.
//
// `ClientThread` (main thread) starts the thread and calls it by message; the thread holds
// `count` clients of `createClient(server, options)`. Times it reports are on the main thread's
// clock (`performance.now()` there).
'use strict';

const { isMainThread, workerData } = require('node:worker_threads');
const { createClient, closeClients, nextEvent, subscribe, collect, withTimeout } = require('./harness');
const { ThreadCaller, serveCalls, waiter } = require('./thread-rpc');

/** The main thread's `performance.timeOrigin`: `now()` counts from it on every thread. */
const TIME_BASE = isMainThread ? performance.timeOrigin : workerData.timeBase;
const now = () => performance.timeOrigin - TIME_BASE + performance.now();

/** Main-thread handle of a thread of clients; every method returns a promise. */
class ClientThread {
  /** `server`: `{ port, secure }` (a plain server); `options`: createClient's. */
  constructor(server, count, options = {}) {
    this.count = count;
    this.thread = new ThreadCaller(
      __filename,
      { clientThread: true, timeBase: performance.timeOrigin, port: server.port, count, options },
      'client thread'
    );
  }

  _call(method, ...args) {
    return this.thread.call(method, ...args);
  }

  /** Connects every client (each within `ms`). */
  connect(ms) {
    return this._call('connect', ms);
  }

  /** Subscribes every client to `channel`. */
  subscribe(channel) {
    return this._call('subscribe', channel);
  }

  /** From now on, records each client's next close and the connect after it. */
  arm() {
    return this._call('arm');
  }

  /** Waits (at most `ms`) until `n` clients closed; then the records (`{ closedAt, code, reason, connectedAt }`). */
  closed(n, ms) {
    return this._call('closed', n, ms);
  }

  /** Waits (at most `ms`) until every client that closed connected again; then the records. */
  reconnected(ms) {
    return this._call('reconnected', ms);
  }

  /** Waits until every closed client's channel is subscribed again. */
  resubscribed(ms) {
    return this._call('resubscribed', ms);
  }

  /** Starts collecting one message per client's channel; `received()` waits for them. */
  expectOne(ms) {
    return this._call('expectOne', ms);
  }

  /** Every client's message collected since `expectOne`. */
  received() {
    return this._call('received');
  }

  async close() {
    await withTimeout(this._call('close'), 10000, 'the client thread to close its clients').catch(() => {});
    await this.thread.terminate();
  }
}

/** The thread: the clients, and the methods called by message. */
function serveClientThread() {
  const server = { port: workerData.port, secure: false };
  const clients = Array.from({ length: workerData.count }, () => createClient(server, workerData.options));
  const records = clients.map(() => ({ closedAt: null, code: null, reason: null, connectedAt: null }));
  let chans = [];
  let resubscribed = [];
  let collecting = null;
  const { changed, until } = waiter(withTimeout);
  const methods = {
    async connect(ms) {
      await Promise.all(
        clients.map((c) => {
          const connected = nextEvent(c, 'connect', ms);
          c.connect();
          return connected;
        })
      );
    },
    async subscribe(channel) {
      chans = await Promise.all(clients.map((c) => subscribe(c, channel)));
    },
    arm() {
      clients.forEach((c, i) => {
        c.listener('close')
          .once()
          .then(({ code, reason }) => {
            Object.assign(records[i], { closedAt: now(), code, reason });
            changed();
            return c.listener('connect').once();
          })
          .then(() => {
            records[i].connectedAt = now();
            changed();
          });
      });
      resubscribed = chans.map((ch) => ch.listener('subscribe').once());
    },
    async closed(n, ms) {
      await until(() => records.filter((r) => r.closedAt !== null).length >= n, ms, `${n} closes`).catch(() => {});
      return records;
    },
    async reconnected(ms) {
      await until(() => records.every((r) => r.closedAt === null || r.connectedAt !== null), ms, 'the reconnects').catch(() => {});
      return records;
    },
    async resubscribed(ms) {
      await withTimeout(Promise.all(resubscribed.filter((_, i) => records[i].closedAt !== null)), ms, 're-subscriptions');
    },
    expectOne(ms) {
      collecting = Promise.all(chans.map((ch) => collect(ch, 1, ms, 'the publish after the kill')));
    },
    received() {
      return collecting;
    },
    close() {
      closeClients(clients);
    },
  };
  serveCalls((method) => methods[method]);
}

if (!isMainThread && workerData && workerData.clientThread) serveClientThread();

module.exports = { ClientThread };
