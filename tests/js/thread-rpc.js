// Calls into a worker thread by message, for the test helpers that run clients on a thread of
// their own (`ClientThread` in client-thread.js, `RemoteFleet` in fleet.js).
//
// Main thread: `new ThreadCaller(file, workerData, name)` starts `file` on a worker thread;
// `call(method, ...args)` returns a promise of what the thread's method returned (a failure
// there rejects it with the same message and stack). If the thread fails or exits, every call
// pending and every later one reject with that. Thread side: `serveCalls(lookup)` answers each
// call with `lookup(method)`, a function or nothing (then the call fails). `waiter(withTimeout)`
// gives a thread's `changed()` (call it when its state changed) and `until(pred, ms, what)`
// (resolves once `pred()` holds, rechecked at each `changed()`, or rejects after `ms`).
'use strict';

const { Worker, parentPort } = require('node:worker_threads');

class ThreadCaller {
  constructor(file, workerData, name) {
    this.calls = new Map();
    this.nextId = 1;
    this.failure = null;
    this.worker = new Worker(file, { workerData });
    this.worker.on('message', ({ id, ok, value, error }) => {
      const call = this.calls.get(id);
      if (!call) return;
      this.calls.delete(id);
      if (ok) return call.resolve(value);
      const err = new Error(error.message);
      err.stack = `${error.stack}\n    (on the ${name})`;
      call.reject(err);
    });
    const fail = (err) => {
      this.failure = this.failure || err;
      for (const call of this.calls.values()) call.reject(this.failure);
      this.calls.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`the ${name} exited (code ${code})`)));
  }

  call(method, ...args) {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args });
    });
  }

  terminate() {
    return this.worker.terminate();
  }
}

/** On the worker thread: answers the calls of its `ThreadCaller`. */
function serveCalls(lookup) {
  parentPort.on('message', async ({ id, method, args }) => {
    try {
      const fn = lookup(method);
      if (!fn) throw new Error(`no thread method ${method}`);
      parentPort.postMessage({ id, ok: true, value: await fn(...args) });
    } catch (e) {
      parentPort.postMessage({ id, ok: false, error: { message: e && e.message, stack: e && e.stack } });
    }
  });
}

/** `{ changed, until }`: waits for a condition on state that calls `changed()` when it changes. */
function waiter(withTimeout) {
  let waiters = [];
  const changed = () => {
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };
  const until = (pred, ms, what) =>
    withTimeout(
      (async () => {
        while (!pred()) await new Promise((r) => waiters.push(r));
      })(),
      ms,
      what
    );
  return { changed, until };
}

module.exports = { ThreadCaller, serveCalls, waiter };
