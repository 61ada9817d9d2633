// The live dashboard: figures, feed, chart and pages now, kept current by client.js.
//
// Query parameters: ?token=JWT when the hub requires one (--jwt-secret or
// --jwt-public-key); for tests and slow links, ?backoff=MS (first reconnection wait) and
// ?heartbeat=MS (the server's heartbeat interval, if not the default 5 s).
(function () {
  'use strict';
  var FEED_MAX = 50;
  var params = new URLSearchParams(location.search);
  function numParam(name) {
    var n = Number(params.get(name));
    return n > 0 ? n : undefined;
  }
  var backoff = numParam('backoff');
  // The same token opens the WebSocket (query parameter: browsers cannot set headers
  // on a WebSocket) and the read API (Authorization header).
  var token = params.get('token');

  var live = MaicivyLive.connect(token ? '/ws/analytics?token=' + encodeURIComponent(token) : undefined, {
    heartbeatInterval: numParam('heartbeat'),
    backoff: backoff ? { initial: backoff, max: Math.max(backoff, 2000) } : undefined
  });
  window.dashboard = { live: live };

  // ---- figures ----------------------------------------------------------
  var figures = {};
  document.querySelectorAll('[data-figure]').forEach(function (el) {
    figures[el.getAttribute('data-figure')] = el;
  });
  var shown = {};
  var fmt = new Intl.NumberFormat();
  function setFigure(name, value) {
    var el = figures[name];
    if (!el || typeof value !== 'number' || value < 0) return;
    if (shown[name] === value) return;
    var grew = shown[name] !== undefined && value > shown[name];
    shown[name] = value;
    el.textContent = fmt.format(value);
    el.setAttribute('data-value', String(value));
    if (grew) {
      el.classList.remove('bump');
      void el.offsetWidth; // restart the animation
      el.classList.add('bump');
    }
  }
  live.on('stats', function (s) {
    ['current_visitors', 'unique_today', 'total_events', 'letters_today'].forEach(function (k) {
      setFigure(k, s[k]);
    });
    var at = s.timestamp ? new Date(s.timestamp * 1000) : new Date();
    document.getElementById('updated').textContent = 'figures of ' + at.toLocaleTimeString();
  });
  live.on('visitor_connected', function () {
    if (shown.current_visitors !== undefined) setFigure('current_visitors', shown.current_visitors + 1);
  });
  live.on('visitor_disconnected', function () {
    if (shown.current_visitors) setFigure('current_visitors', shown.current_visitors - 1);
  });

  // ---- connection indicator ---------------------------------------------
  var statusEl = document.getElementById('status');
  var statusText = {
    connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…',
    offline: 'offline, retrying', closed: 'closed'
  };
  function showStatus(st) {
    statusEl.setAttribute('data-status', st);
    document.getElementById('status-text').textContent = statusText[st] || st;
  }
  showStatus(live.status);
  live.on('status', function (st) {
    showStatus(st);
    if (st === 'live') catchUp();
  });

  // ---- live feed --------------------------------------------------------
  var feedEl = document.getElementById('feed');
  var feed = [];         // newest first: {type, visitor, at (ms), page, key}
  var pendingLive = null; // events received while a catch-up is in flight

  function keyOf(e) { return e.type + '|' + e.visitor + '|' + Math.floor(e.at / 1000) + '|' + (e.page || ''); }
  function fromMessage(m) {
    var e = { type: m.type, visitor: m.visitor_id || '', at: Date.parse(m.timestamp) || Date.now(), page: m.page_url || '' };
    e.key = keyOf(e);
    return e;
  }
  function fromStored(s) {
    var e = { type: s.event_type, visitor: s.visitor_id || '', at: Date.parse(s.created_at) || 0, page: s.page_url || '' };
    e.key = keyOf(e);
    return e;
  }
  function hue(type) {
    var h = 0;
    for (var i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) % 360;
    return h;
  }
  function row(e, fresh) {
    var li = document.createElement('li');
    if (fresh) li.className = 'new';
    li.setAttribute('data-type', e.type);
    var t = document.createElement('time');
    t.dateTime = new Date(e.at).toISOString();
    t.textContent = new Date(e.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    var ty = document.createElement('span');
    ty.className = 'type';
    ty.style.setProperty('--h', String(hue(e.type)));
    ty.textContent = e.type;
    var p = document.createElement('span');
    p.className = 'page';
    p.textContent = e.page || '—';
    p.title = (e.page || '') + (e.visitor ? '  · visitor ' + e.visitor.slice(0, 8) : '');
    li.append(t, ty, p);
    return li;
  }
  function renderFeed() {
    feedEl.replaceChildren.apply(feedEl, feed.map(function (e) { return row(e, false); }));
    document.getElementById('feed-empty').hidden = feed.length > 0;
    document.getElementById('feed-count').textContent = feed.length ? '· latest ' + feed.length : '';
  }
  function addToFeed(e) {
    feed.unshift(e);
    if (feed.length > FEED_MAX) feed.length = FEED_MAX;
    feedEl.prepend(row(e, true));
    while (feedEl.children.length > FEED_MAX) feedEl.lastChild.remove();
    document.getElementById('feed-empty').hidden = true;
    document.getElementById('feed-count').textContent = '· latest ' + feed.length;
  }

  live.on('event', function (m) {
    var e = fromMessage(m);
    if (pendingLive) pendingLive.push(e);
    addToFeed(e);
    // The figures follow each event at once; the next heartbeat confirms them.
    if (shown.total_events !== undefined) setFigure('total_events', shown.total_events + 1);
    if (e.type === 'letter_generate' && shown.letters_today !== undefined) {
      setFigure('letters_today', shown.letters_today + 1);
    }
    countInChart(e.at);
    if (e.type === 'page_view') schedulePages();
  });

  function getJSON(path) {
    var headers = token ? { Authorization: 'Bearer ' + token } : {};
    return fetch(path, { cache: 'no-store', headers: headers }).then(function (r) {
      return r.json().then(function (body) {
        if (!body.success) throw new Error(body.error || ('HTTP ' + r.status));
        return body.data;
      });
    });
  }

  // After each (re)connection: the feed, the chart and the pages from the store, so that
  // whatever happened while disconnected shows. Events that arrive live meanwhile are kept.
  function catchUp() {
    pendingLive = [];
    getJSON('/api/v1/analytics/timeline?limit=' + FEED_MAX).then(function (rows) {
      var stored = rows.map(fromStored);
      var known = {};
      stored.forEach(function (e) { known[e.key] = true; });
      var extra = (pendingLive || []).filter(function (e) { return !known[e.key]; });
      feed = extra.reverse().concat(stored).slice(0, FEED_MAX);
      pendingLive = null;
      renderFeed();
    }).catch(function (err) {
      pendingLive = null;
      console.warn('dashboard: could not load the timeline', err);
    });
    loadChart();
    loadPages();
  }

  // ---- events per minute ------------------------------------------------
  var chartEl = document.getElementById('chart');
  var xs = [];
  var ys = [];
  var plot = null;
  // Empty minutes draw no bar at all.
  function shownBars() { return ys.map(function (v) { return v || null; }); }
  function chartWidth() { return Math.max(260, chartEl.clientWidth); }
  function makePlot() {
    var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
    plot = new uPlot({
      width: chartWidth(),
      height: 220,
      cursor: { drag: { x: false, y: false } },
      legend: { show: false },
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(4, Math.ceil(max * 1.15))]; } } },
      axes: [
        { stroke: '#8a9bb5', grid: { stroke: '#22304a' }, ticks: { stroke: '#22304a' } },
        { stroke: '#8a9bb5', grid: { stroke: '#22304a' }, ticks: { stroke: '#22304a' }, size: 44 }
      ],
      series: [
        {},
        { label: 'events', stroke: '#38bdf8', fill: 'rgba(56,189,248,.35)', width: 1, paths: bars, points: { show: false } }
      ]
    }, [xs, shownBars()], chartEl);
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(function () { plot.setSize({ width: chartWidth(), height: 220 }); }).observe(chartEl);
    }
  }
  function setSeries(series) {
    xs = series.map(function (p) { return p.minute; });
    ys = series.map(function (p) { return p.count; });
    if (!plot) makePlot(); else plot.setData([xs, shownBars()]);
    chartEl.setAttribute('data-total', String(ys.reduce(function (a, b) { return a + b; }, 0)));
  }
  function loadChart() {
    getJSON('/api/v1/analytics/events-per-minute?minutes=30').then(setSeries)
      .catch(function (err) { console.warn('dashboard: could not load the chart', err); });
  }
  function countInChart(atMs) {
    if (!plot || !xs.length) return;
    var minute = Math.floor(atMs / 60000) * 60;
    var last = xs[xs.length - 1];
    if (minute > last) {
      // A new minute began: slide the window.
      while (xs[xs.length - 1] < minute) {
        xs.push(xs[xs.length - 1] + 60);
        ys.push(0);
        xs.shift();
        ys.shift();
      }
    }
    var i = xs.indexOf(minute);
    if (i < 0) return;
    ys[i] += 1;
    plot.setData([xs, shownBars()]);
    chartEl.setAttribute('data-total', String(ys.reduce(function (a, b) { return a + b; }, 0)));
  }
  setInterval(loadChart, 60000);

  // ---- pages now --------------------------------------------------------
  var pagesEl = document.getElementById('pages');
  var pagesTimer = null;
  function schedulePages() {
    if (pagesTimer) return;
    pagesTimer = setTimeout(function () { pagesTimer = null; loadPages(); }, 400);
  }
  function loadPages() {
    getJSON('/api/v1/analytics/pages-now?minutes=5&limit=10').then(function (pages) {
      var most = pages.reduce(function (m, p) { return Math.max(m, p.visitors, 1); }, 1);
      pagesEl.replaceChildren.apply(pagesEl, pages.map(function (p) {
        var li = document.createElement('li');
        li.setAttribute('data-page', p.page_url);
        var bar = document.createElement('span');
        bar.className = 'bar';
        bar.style.width = Math.round(100 * p.visitors / most) + '%';
        var page = document.createElement('span');
        page.className = 'page';
        page.textContent = p.page_url;
        page.title = p.page_url;
        var count = document.createElement('span');
        count.className = 'count';
        var b = document.createElement('b');
        b.textContent = String(p.visitors);
        count.append(b, ' on it · ' + p.views + (p.views === 1 ? ' view' : ' views'));
        li.append(bar, page, count);
        return li;
      }));
      document.getElementById('pages-empty').hidden = pages.length > 0;
    }).catch(function (err) { console.warn('dashboard: could not load the pages', err); });
  }
  setInterval(loadPages, 30000);

  renderFeed();
  loadChart();
})();
