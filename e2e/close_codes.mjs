// Chromium's own WebSocket sends a message over --max-message-bytes (16384 here), and
// its `onclose` must see the server's close code 1009, not 1006: the server keeps
// reading what Chromium is still sending after the close frame, instead of resetting
// the connection (a reset fails Chromium's pending write, and Chromium then reports
// 1006 whatever close frame it had). Each size runs a few times: it was a race. A
// clean close (`wasClean`) is checked too: it is false when the connection ended in a
// reset, which is the cause even in the runs where the close frame happened to win.
// Usage: node close_codes.mjs BASE_URL
import { main, newPage, check, noPageErrors, WAIT } from './lib.mjs';

const base = process.argv[2];
const wsUrl = new URL('/ws/analytics', base).href.replace(/^http/, 'ws');
const SIZES = [20_000, 1024 * 1024, 20 * 1024 * 1024];
const TRIES = 5;

await main('close_codes', async (browser) => {
  const page = await newPage(browser);
  // Any page of the hub will do: the socket is opened from the page's own script.
  await page.goto(new URL('/healthz', base).href);
  for (const size of SIZES) {
    for (let attempt = 1; attempt <= TRIES; attempt++) {
      const seen = await page.evaluate(([url, size, wait]) => new Promise((resolve) => {
        const ws = new WebSocket(url);
        let sent = false;
        const timer = setTimeout(() => resolve({ timeout: true }), wait);
        ws.onmessage = (m) => {
          // After `initial_stats`, so that the session is running when it arrives.
          if (!sent && JSON.parse(m.data).type === 'initial_stats') {
            sent = true;
            ws.send('x'.repeat(size));
          }
        };
        ws.onclose = (e) => {
          clearTimeout(timer);
          resolve({ sent, code: e.code, reason: e.reason, wasClean: e.wasClean });
        };
      }), [wsUrl, size, WAIT]);
      const what = `${size} bytes, attempt ${attempt}: onclose saw ${JSON.stringify(seen)}`;
      check(seen.sent && seen.code === 1009, `${what}: code 1009`);
      check(seen.wasClean === true, `${what}: a clean close, no reset`);
    }
  }
  noPageErrors(page);
});
