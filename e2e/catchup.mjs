// client.js catching up after a lost connection (started by tests/extensions.rs):
// events posted while it was away reach its handlers in order, before the live ones,
// and a position the hub cannot continue from is reported as `resume_failed`.
// Usage: node catchup.mjs BASE_URL
import { main, newPage, check, noPageErrors, postEvent, visitor, WAIT } from './lib.mjs';

const base = process.argv[2];

await main('catchup', async (browser) => {
  const page = await newPage(browser);
  await page.setContent('<!doctype html><title>catch-up</title>');
  await page.addScriptTag({ url: new URL('/client.js', base).href });
  await page.evaluate((url) => {
    window.got = [];
    window.replies = [];
    // A long backoff: the test reconnects by hand, once the missed events are posted.
    const live = MaicivyLive.connect(new URL('/ws/analytics', url).href, { backoff: { initial: 60000, max: 60000, jitter: 0 } });
    live.on('event', (m) => window.got.push({ type: m.type, seq: m.seq }));
    live.on('resumed', (m) => window.replies.push(m));
    live.on('resume_failed', (m) => window.replies.push(m));
    window.live = live;
  }, base);
  const state = () => page.evaluate(() => JSON.stringify({ status: window.live.status, url: window.live.ws && window.live.ws.url, replies: window.replies, got: window.got }));
  const waitFor = (fn, arg, what) => page.waitForFunction(fn, arg, { timeout: WAIT })
    .catch(async (e) => { throw new Error(`${what}: ${e.message}; ${await state()}`); });
  const replies = (n) => waitFor((k) => window.replies.length >= k, n, `${n} resume replies`);
  const received = (type) => waitFor((t) => window.got.some((e) => e.type === t), type, `an event ${type}`);

  await replies(1);
  const first = await page.evaluate(() => window.replies[0]);
  check(first.type === 'resumed' && typeof first.epoch === 'string', `a fresh connection learns the epoch (${JSON.stringify(first)})`);
  const who = visitor();
  await postEvent(base, { event_type: 'before', visitor_id: who });
  await received('before');

  // The connection drops; three events go by while client.js is away.
  await page.evaluate(() => window.live.ws.close());
  await page.waitForFunction(() => window.live.status === 'reconnecting', null, { timeout: WAIT });
  for (const t of ['missed_1', 'missed_2', 'missed_3']) await postEvent(base, { event_type: t, visitor_id: who });
  await page.evaluate(() => window.live.reconnect());
  await received('missed_3');
  await replies(2);
  const second = await page.evaluate(() => window.replies[1]);
  check(second.type === 'resumed' && second.replayed === 3, `resumed with the 3 missed events (${JSON.stringify(second)})`);
  await postEvent(base, { event_type: 'live_after', visitor_id: who });
  await received('live_after');
  const got = await page.evaluate(() => window.got);
  check(JSON.stringify(got.map((e) => e.type)) === JSON.stringify(['before', 'missed_1', 'missed_2', 'missed_3', 'live_after']),
    `every event once, in order (${JSON.stringify(got)})`);
  check(got.every((e, i) => i === 0 || e.seq > got[i - 1].seq), 'sequence numbers increase');

  // A position from another epoch (a restarted hub): told so, then served as usual.
  await page.evaluate(() => { window.live.epoch = 'ffffffffffffffff'; window.live.reconnect(); });
  await replies(3);
  const third = await page.evaluate(() => window.replies[2]);
  check(third.type === 'resume_failed' && /restarted/.test(third.error), `a stale epoch is reported (${JSON.stringify(third)})`);
  await postEvent(base, { event_type: 'after_gap', visitor_id: who });
  await received('after_gap');
  check(await page.evaluate(() => window.live.epoch) === first.epoch, 'the current epoch is taken up again');
  await page.evaluate(() => window.live.close());
  noPageErrors(page);
});
