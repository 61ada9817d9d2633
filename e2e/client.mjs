// client.js on its own: the backoff schedule, dead-connection detection (a server that
// keeps the socket open but stops sending heartbeats), and nothing sent twice.
// Usage: node client.mjs BASE_URL SILENT_WS_URL. The silent server (in tests/browser.rs)
// sends initial_stats on each connection and then nothing; it records what it receives.
import { main, newPage, check, noPageErrors } from './lib.mjs';

const base = process.argv[2];
const silent = process.argv[3];

await main('client', async (browser) => {
  const page = await newPage(browser);
  await page.setContent('<!doctype html><title>client.js</title>');
  await page.addScriptTag({ url: new URL('/client.js', base).href });

  // The schedule: 5 s, x1.5, at most 30 s; jitter takes off up to 30 %.
  const delays = await page.evaluate(() => {
    const b = { initial: 5000, factor: 1.5, max: 30000, jitter: 0.3 };
    return {
      none: [0, 1, 2, 3, 4, 5, 9].map((n) => MaicivyLive.backoffDelay(n, b, 0)),
      full: [0, 9].map((n) => MaicivyLive.backoffDelay(n, b, 1)),
      random: Array.from({ length: 200 }, () => MaicivyLive.backoffDelay(3, b)),
    };
  });
  check(JSON.stringify(delays.none) === JSON.stringify([5000, 7500, 11250, 16875, 25313, 30000, 30000]),
    `backoff 5 s x1.5 up to 30 s (${delays.none})`);
  check(delays.full[0] === 3500 && delays.full[1] === 21000, `jitter takes off at most 30 % (${delays.full})`);
  check(delays.random.every((d) => d >= 11812 && d <= 16875) && new Set(delays.random).size > 10,
    'jittered delays spread within their bounds');

  // Dead connection: heartbeats every 200 ms expected; the server sends none.
  const t0 = Date.now();
  await page.evaluate((url) => {
    window.statuses = [];
    window.messages = 0;
    const live = MaicivyLive.connect(url, { heartbeatInterval: 200, backoff: { initial: 100, max: 400 } });
    live.on('status', (s) => window.statuses.push(s));
    live.on('*', () => window.messages++);
    // Sent while still connecting: queued, then sent exactly once.
    live.send({ type: 'refresh_stats', marker: 'once' });
    window.live = live;
  }, silent);
  await page.waitForFunction(() => window.statuses.filter((s) => s === 'live').length >= 2, null, { timeout: 10_000 });
  const took = Date.now() - t0;
  const statuses = await page.evaluate(() => window.statuses);
  check(statuses[0] === 'live' && statuses[1] === 'reconnecting', `live, then reconnecting without heartbeats (${statuses})`);
  check(took >= 600, `not before 3 intervals without a heartbeat (${took} ms)`);
  // The messages sent after a reconnection also go once.
  await page.evaluate(() => window.live.send({ type: 'ping', marker: 'after' }));
  await page.evaluate(() => window.live.close());
  check(await page.evaluate(() => window.live.status) === 'closed', 'close() closes for good');
  noPageErrors(page);
});
