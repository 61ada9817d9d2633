/*! maicivy-analytics script.js: the tracking snippet. */
/**
 *   <script defer src="https://hub.example/script.js"></script>
 *
 * Sends a `page_view` on load and on each history navigation (pushState, popstate), to the
 * hub that served this file. Custom events:
 *
 *   window.maicivy('button_click', { id: 'cta' });
 *
 * Calls made before the script has loaded are kept and sent once it has, if the page
 * defines this stub first:
 *   <script>window.maicivy=window.maicivy||function(){(window.maicivy.q=window.maicivy.q||[]).push(arguments)}</script>
 *
 * No cookie is read or written: the hub derives a visitor id that changes every day.
 * Events go as text/plain with fetch(keepalive) (or sendBeacon), so no CORS preflight.
 *
 * Nothing is sent from localhost (or a file: page) nor from an automated browser
 * (navigator.webdriver), nor when localStorage.maicivy_ignore is "true", unless the tag says
 * otherwise: data-allow-localhost, data-allow-automation. data-api="URL" sends elsewhere.
 * window.maicivy.disabled tells why nothing is sent ('' when events are sent).
 */
(function () {
  'use strict';
  var script = document.currentScript ||
    document.querySelector('script[src$="/script.js"]');
  if (!script) return;
  var endpoint = script.getAttribute('data-api') ||
    new URL('/api/v1/analytics/event', script.src).href;

  var host = location.hostname;
  var local = location.protocol === 'file:' || host === '' || host === 'localhost' ||
    /\.localhost$/.test(host) || /^127\./.test(host) || host === '[::1]' || host === '::1';
  var ignored = false;
  try { ignored = localStorage.getItem('maicivy_ignore') === 'true'; } catch (e) { /* no storage */ }

  var disabled = '';
  if (local && !script.hasAttribute('data-allow-localhost')) disabled = 'localhost';
  else if (navigator.webdriver && !script.hasAttribute('data-allow-automation')) disabled = 'automation';
  else if (ignored) disabled = 'ignored';

  function send(type, data) {
    if (disabled || typeof type !== 'string') return false;
    var body = JSON.stringify({
      event_type: type,
      event_data: data && typeof data === 'object' ? data : {},
      page_url: location.pathname
    });
    if (typeof fetch === 'function') {
      // credentials: 'omit': no cookie goes along, even to the hub's own domain.
      fetch(endpoint, {
        method: 'POST',
        body: body,
        headers: { 'Content-Type': 'text/plain' },
        keepalive: true,
        credentials: 'omit',
        mode: 'cors'
      }).catch(function () { /* analytics never break the page */ });
      return true;
    }
    if (navigator.sendBeacon) {
      return navigator.sendBeacon(endpoint, new Blob([body], { type: 'text/plain' }));
    }
    return false;
  }

  var lastPath = null;
  function pageView() {
    if (location.pathname === lastPath) return; // a hash or query change is the same page
    lastPath = location.pathname;
    var data = {};
    if (document.title) data.title = document.title;
    // Only where a visitor came from, and only from another site: its origin.
    try {
      var ref = document.referrer && new URL(document.referrer);
      if (ref && ref.host !== location.host) data.referrer = ref.origin;
    } catch (e) { /* not a URL */ }
    send('page_view', data);
  }

  var queued = (window.maicivy && window.maicivy.q) || [];
  var api = function (type, data) { return send(type, data); };
  api.disabled = disabled;
  api.endpoint = endpoint;
  window.maicivy = api;

  var push = history.pushState;
  history.pushState = function () {
    var result = push.apply(this, arguments);
    pageView();
    return result;
  };
  addEventListener('popstate', pageView);
  pageView();
  for (var i = 0; i < queued.length; i++) send(queued[i][0], queued[i][1]);
})();
