/*
 * socketcluster-recovery.js: missed-message recovery for the unchanged socketcluster-client v20
 * against a SocketCluster for Rust worker (docs/recovery.md). No dependencies.
 *
 * A channel the server keeps history for ([[worker.history]]) carries a position on every
 * message: `#publish` frames have "offset" (1, 2, 3 ... per channel and epoch) and "epoch" next to
 * "channel" and "data". This module remembers, per channel it subscribed, the last position seen
 * and sends it as `data.recover` on every (re)subscribe, so that after a reconnect the server
 * sends what was missed, then live messages: each message once, in order. When the history
 * cannot cover the gap (it was lost, or the messages are no longer kept) the server says so with
 * a `#gap` notice, which this module reports.
 *
 *   <script src="/socketcluster-recovery.js"></script>        // the global SocketClusterRecovery
 *   const { attachRecovery } = require('./socketcluster-recovery.js');   // Node
 *
 *   const recovery = SocketClusterRecovery.attachRecovery(socket, {
 *     onGap(gap) { ... }     // optional; gap = {channel, offset, epoch, previous, implicit}
 *   });
 *   const channel = recovery.subscribe('news.1', { data: { app: 'fields' } });
 *   for await (const message of channel) { ... }   // the client's own channel, unchanged
 *
 * recovery.subscribe(name, options): socket.subscribe(name, {...options, data: D}). D is a copy of
 *   options.data (a plain object, or none) that this module owns and updates in place:
 *   D.recover = {offset, epoch}. options.recover: a position to start from (e.g. one kept across a
 *   page reload from recovery.position()), or false to drop the position remembered for the
 *   channel; by default a channel subscribed again continues where it was (what the server
 *   published meanwhile is sent first, as far as its history reaches).
 * recovery.position(name): the last position seen, {offset, epoch}, or null.
 * recovery.onGap(listener): calls listener(gap) for every `#gap` notice of a channel the socket
 *   is subscribed to (pending included); returns a function that removes the listener. gap:
 *   {channel, offset, epoch, previous, implicit}: messages after `previous` (the position before,
 *   or null) may be lost; what follows continues after offset in epoch. offset and epoch are
 *   undefined for a channel without history (the server lost messages of it, e.g. its store
 *   restarted). implicit is true when no `#gap` came but the reply to a resubscribe continues
 *   from another position than the one asked for (a server that should have sent `#gap`).
 * recovery.forget(name): drops the channel's position (the next subscribe starts from now).
 * recovery.detach(): stops watching the socket (channels subscribed stay subscribed).
 *
 * How positions are learnt: from the socket's raw 'message' listener (socketcluster-client v20:
 * AGTransport.prototype._onMessage emits {event: 'message', data: {message}} with the frame's
 * text before it decodes it), so nothing of the client is patched. Three frames move a position:
 * `#publish` {"channel","data","offset","epoch"}, the reply to `#subscribe`
 * {"rid":N,"data":{"channel","offset","epoch"}} and `#gap` {"channel","offset","epoch"}. Within
 * an epoch a position only moves forward; a position of another epoch replaces it. The listener
 * is an async stream, so a frame is seen a few microtasks after the client handled it; a
 * resubscribe needs a new connection's handshake reply (a later macrotask), by which time every
 * frame of the previous connection was seen.
 */
(function (root, factory) {
  'use strict';
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.SocketClusterRecovery = factory();
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  function isPlainObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  function isPosition(offset, epoch) {
    return typeof offset === 'number' && isFinite(offset) && typeof epoch === 'string';
  }

  function attachRecovery(socket, attachOptions) {
    attachOptions = attachOptions || {};
    // name -> { data: D (sent with every #subscribe of the channel), position: {offset, epoch} | null }
    var channels = new Map();
    var gapListeners = [];
    if (typeof attachOptions.onGap === 'function') gapListeners.push(attachOptions.onGap);
    var consumer = null;
    var detached = false;

    function undecorate(name) {
      return typeof socket._undecorateChannelName === 'function' ? socket._undecorateChannelName(name) : name;
    }

    function decode(message) {
      var codec = socket.codec;
      try {
        return codec && typeof codec.decode === 'function' ? codec.decode(message) : JSON.parse(message);
      } catch (e) {
        return null;
      }
    }

    /** Moves a channel's position: forward within its epoch, replaced by another epoch. */
    function advance(state, offset, epoch) {
      var pos = state.position;
      if (pos && pos.epoch === epoch && offset <= pos.offset) return;
      if (pos && pos.epoch === epoch) {
        pos.offset = offset;
      } else {
        pos = { offset: offset, epoch: epoch };
        state.position = pos;
      }
      // The object the client resends on every automatic resubscribe (see subscribe below).
      state.data.recover = pos;
    }

    function onGap(name, data, implicit) {
      var state = channels.get(name);
      var hasPosition = isPosition(data.offset, data.epoch);
      var previous = state && state.position ? { offset: state.position.offset, epoch: state.position.epoch } : null;
      if (state && hasPosition) advance(state, data.offset, data.epoch);
      if (!state && !socket.isSubscribed(name, true)) return;
      var gap = {
        channel: name,
        offset: hasPosition ? data.offset : undefined,
        epoch: hasPosition ? data.epoch : undefined,
        previous: previous,
        implicit: implicit,
      };
      gapListeners.slice().forEach(function (listener) {
        try {
          listener(gap);
        } catch (err) {
          setTimeout(function () {
            throw err;
          }, 0);
        }
      });
    }

    function onPacket(packet) {
      if (!isPlainObject(packet)) return;
      var data = packet.data;
      if (!isPlainObject(data) || typeof data.channel !== 'string') return;
      var name = undecorate(data.channel);
      var state = channels.get(name);
      if (packet.event === '#publish') {
        if (!isPosition(data.offset, data.epoch)) return;
        // Only what the client delivered (or will, for a pending channel) counts as seen.
        if (state && socket.isSubscribed(name, true)) {
          state.noticed = false;
          advance(state, data.offset, data.epoch);
        }
      } else if (typeof packet.rid === 'number' && packet.event === undefined) {
        // The reply to #subscribe: where the server continues from. Asked to resume from a
        // position, it continues from there or sends a #gap first; anything else is reported as
        // a gap too (implicit: true), so that a loss is never silent.
        if (!state || !isPosition(data.offset, data.epoch)) return;
        var asked = state.position;
        var noticed = state.noticed;
        state.noticed = false;
        if (asked && !noticed && (asked.epoch !== data.epoch || asked.offset !== data.offset)) {
          onGap(name, data, true);
        } else {
          advance(state, data.offset, data.epoch);
        }
      } else if (packet.event === '#gap') {
        if (state) state.noticed = true;
        onGap(name, data, false);
      }
    }

    function onMessage(message) {
      // Cheap filter: only frames that can carry a position or a gap are decoded again.
      if (typeof message === 'string' && message.indexOf('"epoch"') < 0 && message.indexOf('"#gap"') < 0) return;
      var packet = decode(message);
      if (Array.isArray(packet)) packet.forEach(onPacket);
      else onPacket(packet);
    }

    consumer = socket.listener('message').createConsumer();
    (async function () {
      for (;;) {
        var item = await consumer.next();
        if (item.done || detached) return;
        if (item.value) onMessage(item.value.message);
      }
    })();

    return {
      subscribe: function (channelName, options) {
        options = options || {};
        if (options.data !== undefined && !isPlainObject(options.data)) {
          throw new TypeError('recovery.subscribe: options.data must be a plain object (recover is added to it)');
        }
        var state = channels.get(channelName);
        if (!state) {
          // noticed: a #gap came since the last #publish or reply of the channel.
          state = { data: {}, position: null, noticed: false };
          channels.set(channelName, state);
        }
        // D: the app's fields, and recover. Kept by the client by reference: socket.subscribe
        // stores options.data as channel.options.data, and AGClientSocket.prototype._trySubscribe
        // (called by processPendingSubscriptions on every reconnect) sends that same object as
        // the data of each #subscribe, so updating D in place is what makes every automatic
        // resubscribe carry the latest position.
        var D = state.data;
        Object.keys(D).forEach(function (key) {
          delete D[key];
        });
        if (options.data) Object.assign(D, options.data);
        if (options.recover === false) {
          state.position = null;
        } else if (isPlainObject(options.recover) && isPosition(options.recover.offset, options.recover.epoch)) {
          state.position = { offset: options.recover.offset, epoch: options.recover.epoch };
        }
        delete D.recover;
        if (state.position) D.recover = state.position;
        var subscribeOptions = {};
        Object.keys(options).forEach(function (key) {
          if (key !== 'recover') subscribeOptions[key] = options[key];
        });
        subscribeOptions.data = D;
        return socket.subscribe(channelName, subscribeOptions);
      },
      position: function (channelName) {
        var state = channels.get(channelName);
        return state && state.position ? { offset: state.position.offset, epoch: state.position.epoch } : null;
      },
      onGap: function (listener) {
        gapListeners.push(listener);
        return function () {
          var i = gapListeners.indexOf(listener);
          if (i >= 0) gapListeners.splice(i, 1);
        };
      },
      forget: function (channelName) {
        var state = channels.get(channelName);
        if (!state) return;
        state.position = null;
        delete state.data.recover;
      },
      detach: function () {
        detached = true;
        if (consumer) consumer.return();
      },
    };
  }

  return { attachRecovery: attachRecovery };
});
