// permessage-deflate with independent clients, started by tests/extensions.rs:
//   node deflate.mjs ws BASE        Node's `ws` library: one connection offering deflate,
//                                   one not; the same large and small messages on both.
//   node deflate.mjs chromium BASE  Chromium's own WebSocket (it offers deflate itself).
// Prints one line `RESULT {json}` for the Rust side to check, and exits 0.
import WebSocket from 'ws';
import { launch, postEvent, visitor, WAIT } from './lib.mjs';

const [mode, base] = process.argv.slice(2);
const wsUrl = `${base.replace(/^http/, 'ws')}/ws/analytics`;

/** A `ws` client that queues its messages, with the raw bytes read from its socket. */
function open(deflate) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { perMessageDeflate: deflate });
    ws.queue = [];
    ws.waiters = [];
    ws.on('upgrade', (res) => { ws.extensionsHeader = res.headers['sec-websocket-extensions'] || ''; });
    ws.on('message', (data) => {
      const text = data.toString('utf8');
      const w = ws.waiters.shift();
      if (w) w(text); else ws.queue.push(text);
    });
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
  });
}

function next(ws) {
  if (ws.queue.length) return Promise.resolve(ws.queue.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message in time')), WAIT);
    ws.waiters.push((m) => { clearTimeout(t); resolve(m); });
  });
}

async function nextOfType(ws, type) {
  for (;;) {
    const m = await next(ws);
    if (JSON.parse(m).type === type) return m;
  }
}

/** A large event: repetitive JSON, as real `event_data` tends to be. */
function largeEvent() {
  const items = [];
  for (let i = 0; i < 60; i++) items.push({ sku: `sku-${i % 7}`, name: 'Motivation letter', qty: i % 3, price: 19.9 });
  return { event_type: 'cart_view', visitor_id: visitor(), page_url: '/cart', event_data: { items } };
}

async function withWs() {
  const deflate = await open({});
  const plain = await open(false);
  for (const ws of [deflate, plain]) await nextOfType(ws, 'initial_stats');
  const before = [deflate._socket.bytesRead, plain._socket.bytesRead];
  await postEvent(base, largeEvent());
  const large = [await nextOfType(deflate, 'cart_view'), await nextOfType(plain, 'cart_view')];
  const afterLarge = [deflate._socket.bytesRead, plain._socket.bytesRead];
  // A small message (under the threshold) goes uncompressed: the same bytes on both.
  for (const ws of [deflate, plain]) ws.send('{"type":"dance"}');
  const small = [await nextOfType(deflate, 'error'), await nextOfType(plain, 'error')];
  const afterSmall = [deflate._socket.bytesRead, plain._socket.bytesRead];
  const result = {
    extensions: deflate.extensionsHeader,
    plain_extensions: plain.extensionsHeader,
    large_deflate: large[0],
    large_plain: large[1],
    large_wire_deflate: afterLarge[0] - before[0],
    large_wire_plain: afterLarge[1] - before[1],
    small_deflate: small[0],
    small_plain: small[1],
    small_wire_deflate: afterSmall[0] - afterLarge[0],
    small_wire_plain: afterSmall[1] - afterLarge[1],
  };
  deflate.close();
  plain.close();
  return result;
}

async function withChromium() {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    let extensions = null;
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
      const h = e.response.headers;
      extensions = h['Sec-WebSocket-Extensions'] ?? h['sec-websocket-extensions'] ?? '';
    });
    await page.goto(`${base}/healthz`);
    await page.evaluate((url) => new Promise((resolve, reject) => {
      window.received = [];
      const ws = new WebSocket(url);
      ws.onmessage = (m) => {
        window.received.push(m.data);
        if (JSON.parse(m.data).type === 'initial_stats') resolve();
      };
      ws.onerror = () => reject(new Error('the WebSocket failed'));
    }), wsUrl);
    const ev = largeEvent();
    await postEvent(base, ev);
    const received = await page.waitForFunction(
      () => window.received.find((m) => JSON.parse(m).type === 'cart_view'),
      null, { timeout: WAIT },
    ).then((h) => h.jsonValue());
    return { extensions, large: received, sent_event_data: ev.event_data };
  } finally {
    await browser.close();
  }
}

try {
  const result = mode === 'chromium' ? await withChromium() : await withWs();
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
