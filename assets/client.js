/*! maicivy-analytics client.js: the live WebSocket client of the hub. */
/**
 * MaicivyLive: a WebSocket client for `/ws/analytics` that stays connected.
 *
 *   <script src="https://hub.example/client.js"></script>
 *   const live = MaicivyLive.connect();           // ws(s)://<host of client.js>/ws/analytics
 *   live.on('stats', s => show(s.current_visitors)); // initial_stats and every heartbeat
 *   live.on('page_view', e => console.log(e.page_url));
 *   live.on('status', st => badge(st));           // 'connecting' | 'live' | 'reconnecting' | 'offline' | 'closed'
 *
 * API
 *   MaicivyLive.connect(url?, options?) -> client   (url: ws:// or wss://, or http(s):// of the hub)
 *   client.on(type, fn) -> unsubscribe function
 *       type: a server message type ('initial_stats', 'heartbeat', 'pong', 'visitor_connected',
 *             'visitor_disconnected', 'page_view', any custom event type), or
 *             '*'      every server message (parsed JSON),
 *             'stats'  the STATS object of initial_stats and heartbeat,
 *             'event'  every tracked event (a message that is not one the server itself sends),
 *             'status' the connection status, see above.
 *   client.off(type, fn)
 *   client.send(obj)     sends a JSON message; while disconnected it is queued (at most 100) and
 *                        sent once, on the next connection. Nothing is ever sent twice.
 *   client.refresh()     asks for fresh figures ({"type":"refresh_stats"}).
 *   client.reconnect()   drops the connection and connects again at once.
 *   client.close()       closes for good.
 *   client.status, client.stats (the latest STATS or null)
 *
 * Options (all optional)
 *   heartbeatInterval  ms, the server's heartbeat interval (5000). It is learnt from the gaps
 *                      between heartbeats once two have arrived. When no heartbeat has come for
 *                      3 intervals the connection is taken as dead and replaced.
 *   backoff            { initial: 5000, factor: 1.5, max: 30000, jitter: 0.3 }: the wait before
 *                      reconnection attempt n is min(max, initial * factor^n), less a random
 *                      part of up to `jitter` of it (so clients do not all return at once).
 *   offlineAfter       failed attempts in a row after which the status says 'offline' (3).
 *   visitorId          a UUID: sent with a ping on each connection and every `presenceEvery`
 *                      ms (60000), so that this visitor counts as current.
 *   events             a list of event types: only those (and the figures) are sent
 *                      (`?events=` of the hub's protocol extensions). Default: every type.
 *   catchUp            true (default): events carry `seq`; after a lost connection the client
 *                      reconnects with the stream's epoch and the last `seq` it saw, and the hub
 *                      sends what was missed, in order, before the live events. When the gap
 *                      cannot be filled (the hub restarted, or too much went by) a
 *                      'resume_failed' message says so and the figures are fresh anyway.
 *                      client.epoch and client.lastSeq hold the position.
 */
(function (root) {
  'use strict';

  // The server's own message types; any other type is a tracked event.
  var SERVER_TYPES = {
    initial_stats: 1, heartbeat: 1, pong: 1, error: 1,
    visitor_connected: 1, visitor_disconnected: 1,
    subscribed: 1, resumed: 1, resume_failed: 1
  };
  var MAX_QUEUE = 100;

  // The hub that served this file: the default server to connect to.
  var scriptSrc = (typeof document !== 'undefined' && document.currentScript &&
    document.currentScript.src) || (typeof location !== 'undefined' ? location.href : '');

  function wsUrl(url) {
    var u = new URL(url || '/ws/analytics', scriptSrc || undefined);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    if (!url) u.pathname = '/ws/analytics';
    return u.href;
  }

  /** The wait before reconnection attempt `attempt` (0 = the first), in ms. */
  function backoffDelay(attempt, backoff, random) {
    var base = Math.min(backoff.max, backoff.initial * Math.pow(backoff.factor, attempt));
    var r = typeof random === 'number' ? random : Math.random();
    return Math.round(base - base * backoff.jitter * r);
  }

  function Client(url, options) {
    options = options || {};
    var b = options.backoff || {};
    this.url = wsUrl(url);
    this.backoff = {
      initial: b.initial != null ? b.initial : 5000,
      factor: b.factor != null ? b.factor : 1.5,
      max: b.max != null ? b.max : 30000,
      jitter: b.jitter != null ? b.jitter : 0.3
    };
    this.heartbeatInterval = options.heartbeatInterval || 5000;
    this.offlineAfter = options.offlineAfter != null ? options.offlineAfter : 3;
    this.visitorId = options.visitorId || null;
    this.presenceEvery = options.presenceEvery || 60000;
    this.events = options.events || null;
    this.catchUp = options.catchUp !== false;
    this.epoch = null;       // the stream's epoch, from the hub's `resumed`/`resume_failed`
    this.lastSeq = 0;        // the last event number received in that epoch
    this.status = 'connecting';
    this.stats = null;
    this.handlers = {};
    this.queue = [];
    this.ws = null;
    this.generation = 0;     // which socket is current; messages of older ones are ignored
    this.failures = 0;       // attempts in a row that never got a first message
    this.learnt = null;      // heartbeat interval learnt from the server
    this.lastHeartbeat = 0;
    this.deadTimer = null;
    this.retryTimer = null;
    this.presenceTimer = null;
    this.closed = false;
    var self = this;
    if (typeof addEventListener === 'function') {
      this._onOnline = function () { if (self.status !== 'live') self.reconnect(); };
      this._onOffline = function () { self._setStatus('offline'); };
      addEventListener('online', this._onOnline);
      addEventListener('offline', this._onOffline);
    }
    this._open();
  }

  Client.prototype.on = function (type, fn) {
    (this.handlers[type] = this.handlers[type] || []).push(fn);
    var self = this;
    return function () { self.off(type, fn); };
  };

  Client.prototype.off = function (type, fn) {
    var list = this.handlers[type];
    if (list) this.handlers[type] = list.filter(function (f) { return f !== fn; });
  };

  Client.prototype._emit = function (type, value) {
    var list = (this.handlers[type] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](value); } catch (e) { console.error('maicivy client: a handler failed', e); }
    }
  };

  Client.prototype._setStatus = function (status) {
    if (this.status === status) return;
    this.status = status;
    this._emit('status', status);
  };

  Client.prototype.send = function (obj) {
    if (this.closed) return false;
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    if (this.queue.length >= MAX_QUEUE) this.queue.shift();
    this.queue.push(obj);
    return false;
  };

  Client.prototype.refresh = function () { return this.send({ type: 'refresh_stats' }); };

  Client.prototype.reconnect = function () {
    if (this.closed) return;
    this._drop();
    this.failures = 0;
    this._open();
  };

  Client.prototype.close = function () {
    this.closed = true;
    this._drop();
    if (this._onOnline) {
      removeEventListener('online', this._onOnline);
      removeEventListener('offline', this._onOffline);
    }
    this._setStatus('closed');
  };

  // Forgets the current socket: its late events are ignored from now on.
  Client.prototype._drop = function () {
    this.generation++;
    clearTimeout(this.deadTimer);
    clearTimeout(this.retryTimer);
    clearInterval(this.presenceTimer);
    var ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try { ws.close(); } catch (e) { /* already closed */ }
    }
  };

  Client.prototype._open = function () {
    var self = this;
    var gen = ++this.generation;
    var ws;
    try {
      ws = new WebSocket(this._connectUrl());
    } catch (e) {
      this._lost(gen);
      return;
    }
    this.ws = ws;
    this.gotFirst = false;
    ws.onopen = function () {
      if (gen !== self.generation) return;
      // No heartbeat ever: dead too. The first message is initial_stats.
      self._armDeadTimer(gen);
      self._flush();
      if (self.visitorId) {
        self.send({ type: 'ping', visitor_id: self.visitorId });
        self.presenceTimer = setInterval(function () {
          self.send({ type: 'ping', visitor_id: self.visitorId });
        }, self.presenceEvery);
      }
    };
    ws.onmessage = function (ev) {
      if (gen !== self.generation) return;
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (!msg || typeof msg.type !== 'string') return;
      self._receive(gen, msg);
    };
    ws.onerror = function () { /* onclose follows */ };
    ws.onclose = function () { if (gen === self.generation) self._lost(gen); };
  };

  // The URL of the next connection: the subscription, and where to resume from.
  Client.prototype._connectUrl = function () {
    if (!this.catchUp && !this.events) return this.url;
    var u = new URL(this.url);
    if (this.events) u.searchParams.set('events', this.events.join(','));
    if (this.catchUp) u.searchParams.set('resume', this.epoch ? this.epoch + ':' + this.lastSeq : '');
    return u.href;
  };

  Client.prototype._flush = function () {
    // Shift before sending: a message leaves the queue exactly once.
    while (this.queue.length && this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(this.queue.shift()));
    }
  };

  Client.prototype._interval = function () { return this.learnt || this.heartbeatInterval; };

  Client.prototype._armDeadTimer = function (gen) {
    var self = this;
    clearTimeout(this.deadTimer);
    this.deadTimer = setTimeout(function () {
      if (gen !== self.generation) return;
      console.warn('maicivy client: no heartbeat for 3 intervals, reconnecting');
      self._lost(gen);
    }, 3 * this._interval());
  };

  Client.prototype._receive = function (gen, msg) {
    if (!this.gotFirst) {
      // A server that answers: the next loss starts the backoff from the beginning.
      this.gotFirst = true;
      this.failures = 0;
      this._setStatus('live');
    }
    if (msg.type === 'resumed' || msg.type === 'resume_failed') {
      // Where the stream stands: the next events follow this number.
      this.epoch = msg.epoch;
      this.lastSeq = msg.last_seq;
    } else if (typeof msg.seq === 'number') {
      // Never hand the same event to the handlers twice.
      if (msg.seq <= this.lastSeq) return;
      this.lastSeq = msg.seq;
    }
    if (msg.type === 'heartbeat' || msg.type === 'initial_stats') {
      var now = Date.now();
      if (msg.type === 'heartbeat') {
        if (this.lastHeartbeat) {
          var gap = now - this.lastHeartbeat;
          // The longest recent gap, so one early tick does not shorten the deadline.
          this.learnt = this.learnt ? Math.max(gap, (this.learnt + gap) / 2) : gap;
        }
        this.lastHeartbeat = now;
      }
      this._armDeadTimer(gen);
      if (msg.data) {
        this.stats = msg.data;
        this._emit('stats', msg.data);
      }
    }
    this._emit(msg.type, msg);
    if (!SERVER_TYPES[msg.type]) this._emit('event', msg);
    this._emit('*', msg);
  };

  Client.prototype._lost = function (gen) {
    if (gen !== this.generation || this.closed) return;
    this._drop();
    this.lastHeartbeat = 0;
    var attempt = this.failures++;
    var offline = (typeof navigator !== 'undefined' && navigator.onLine === false) ||
      this.failures > this.offlineAfter;
    this._setStatus(offline ? 'offline' : 'reconnecting');
    var self = this;
    var delay = backoffDelay(attempt, this.backoff);
    this.nextRetryIn = delay;
    this.retryTimer = setTimeout(function () { self._open(); }, delay);
  };

  var api = {
    connect: function (url, options) { return new Client(url, options); },
    backoffDelay: backoffDelay,
    Client: Client
  };
  root.MaicivyLive = api;
  if (typeof module === 'object' && module.exports) module.exports = api;
})(typeof window !== 'undefined' ? window : this);
