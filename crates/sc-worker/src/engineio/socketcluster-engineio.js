/*
 * socketcluster-engineio.js: lets socketcluster-client v20 run over engine.io (HTTP long-polling,
 * upgraded to WebSocket when possible) against a SocketCluster for Rust worker.
 *
 * It presents the WebSocket interface that socketcluster-client uses (constructor(uri, protocols,
 * options), binaryType, readyState with an own OPEN, send, close(code, reason), bytesReceived,
 * onopen/onclose/onmessage/onerror) on top of engine.io-client v6, which the page loads first
 * (engine.io-client's dist/engine.io.js defines the global `eio`). In a browser it sets
 * globalThis.WebSocket, so it must run before the socketcluster-client module is evaluated.
 *
 * Every engine.io message carries one SocketCluster frame. Close codes travel in-band: either
 * side sends one message `#close:{"code":<n>,"reason":"<text>"}` before the engine.io close.
 *
 * Options (set before this script runs, or change SocketClusterEngineIo.options later):
 *   window.SocketClusterEngineIo = {
 *     path: '/engine.io/',                    // the worker's engineio_path
 *     transports: ['polling', 'websocket'],   // e.g. ['polling'] for long-polling only
 *     upgrade: true,                          // upgrade polling to WebSocket when possible
 *     url: undefined,                         // base URL; default: taken from the client's URI
 *     engineOptions: {},                      // more engine.io-client options
 *     engineIoClient: undefined,              // the engine.io-client module or `eio` function
 *     install: true                           // set globalThis.WebSocket
 *   };
 * In Node: const { WebSocket, options } = require('./socketcluster-engineio.js'); it requires
 * engine.io-client unless options.engineIoClient is set.
 */
(function (root, factory) {
  'use strict';
  if (typeof module === 'object' && module.exports) {
    module.exports = factory(function () {
      return require('engine.io-client');
    }, {});
    return;
  }
  var preset = root.SocketClusterEngineIo || {};
  var api = factory(function () {
    if (typeof root.eio !== 'function') {
      throw new Error('socketcluster-engineio: load engine.io-client (dist/engine.io.js) first');
    }
    return root.eio;
  }, preset);
  root.SocketClusterEngineIo = api;
  if (api.options.install !== false) {
    root.WebSocket = api.WebSocket;
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function (loadEngineIo, preset) {
  'use strict';

  var CLOSE_PREFIX = '#close:';
  var CONNECTING = 0;
  var OPEN = 1;
  var CLOSING = 2;
  var CLOSED = 3;

  var options = {
    path: '/engine.io/',
    transports: ['polling', 'websocket'],
    upgrade: true,
    url: undefined,
    engineOptions: {},
    engineIoClient: undefined,
    install: true
  };
  Object.keys(preset).forEach(function (k) {
    if (k !== 'WebSocket' && k !== 'options') options[k] = preset[k];
  });
  if (preset.options) {
    Object.keys(preset.options).forEach(function (k) {
      options[k] = preset.options[k];
    });
  }

  function createEngine(base, opts) {
    var lib = options.engineIoClient || loadEngineIo();
    if (typeof lib === 'function') return lib(base, opts);
    return new lib.Socket(base, opts);
  }

  function fire(target, name, event) {
    var handler = target[name];
    if (typeof handler === 'function') handler.call(target, event);
  }

  function parseClose(text) {
    var info;
    try {
      info = JSON.parse(text);
    } catch (e) {
      info = {};
    }
    return {
      code: info && typeof info.code === 'number' ? info.code : 1005,
      reason: info && typeof info.reason === 'string' ? info.reason : ''
    };
  }

  function EngineIoWebSocket(uri, protocols, wsOptions) {
    this.CONNECTING = CONNECTING;
    this.OPEN = OPEN;
    this.CLOSING = CLOSING;
    this.CLOSED = CLOSED;
    this.url = uri;
    this.protocol = '';
    this.extensions = '';
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.bytesReceived = 0;
    this.onopen = null;
    this.onclose = null;
    this.onmessage = null;
    this.onerror = null;
    this._closeInfo = null;

    var u = new URL(uri);
    var scheme = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
    var base = options.url || scheme + '//' + u.host;
    var query = {};
    u.searchParams.forEach(function (v, k) {
      query[k] = v;
    });
    var engineOpts = {
      path: options.path,
      transports: options.transports,
      upgrade: options.upgrade !== false,
      query: query,
      closeOnBeforeunload: false
    };
    var extra = options.engineOptions || {};
    Object.keys(extra).forEach(function (k) {
      engineOpts[k] = extra[k];
    });

    var self = this;
    var engine;
    try {
      engine = createEngine(base, engineOpts);
    } catch (err) {
      this.readyState = CLOSED;
      setTimeout(function () {
        fire(self, 'onerror', { type: 'error', error: err, message: String(err && err.message), target: self });
        fire(self, 'onclose', { type: 'close', code: 1006, reason: String(err && err.message), wasClean: false, target: self });
      }, 0);
      return;
    }
    this._engine = engine;

    engine.on('open', function () {
      if (self.readyState !== CONNECTING) return;
      self.readyState = OPEN;
      fire(self, 'onopen', { type: 'open', target: self });
    });
    engine.on('message', function (data) {
      // An empty message (the SocketCluster ping) is decoded by engine.io-client as undefined.
      if (data === undefined || data === null) data = '';
      if (typeof data === 'string' && data.lastIndexOf(CLOSE_PREFIX, 0) === 0) {
        if (!self._closeInfo) self._closeInfo = parseClose(data.slice(CLOSE_PREFIX.length));
        self.readyState = CLOSING;
        engine.close();
        return;
      }
      if (self.readyState !== OPEN) return;
      self.bytesReceived += typeof data === 'string' ? data.length : data.byteLength || 0;
      fire(self, 'onmessage', { type: 'message', data: data, target: self });
    });
    engine.on('error', function (err) {
      fire(self, 'onerror', {
        type: 'error',
        error: err,
        message: String((err && err.message) || err),
        target: self
      });
    });
    engine.on('close', function (reason, description) {
      if (self.readyState === CLOSED) return;
      self.readyState = CLOSED;
      var info = self._closeInfo;
      if (!info) {
        info =
          reason === 'ping timeout'
            ? { code: 4000, reason: 'Server ping timed out' }
            : { code: 1006, reason: String(reason || 'Socket hung up') };
      }
      fire(self, 'onclose', {
        type: 'close',
        code: info.code,
        reason: info.reason,
        wasClean: !!self._closeInfo,
        target: self
      });
    });
  }

  EngineIoWebSocket.prototype.send = function (data) {
    if (this.readyState !== OPEN) return;
    this._engine.send(data);
  };

  EngineIoWebSocket.prototype.close = function (code, reason) {
    if (this.readyState === CLOSING || this.readyState === CLOSED || !this._engine) return;
    var info = { code: typeof code === 'number' ? code : 1000, reason: reason ? String(reason) : '' };
    this._closeInfo = info;
    if (this.readyState === OPEN) {
      this._engine.send(CLOSE_PREFIX + JSON.stringify(info));
    }
    this.readyState = CLOSING;
    // engine.io-client flushes what is buffered (the in-band close included) before closing.
    this._engine.close();
  };

  EngineIoWebSocket.CONNECTING = CONNECTING;
  EngineIoWebSocket.OPEN = OPEN;
  EngineIoWebSocket.CLOSING = CLOSING;
  EngineIoWebSocket.CLOSED = CLOSED;

  return { WebSocket: EngineIoWebSocket, options: options, CLOSE_PREFIX: CLOSE_PREFIX };
});
