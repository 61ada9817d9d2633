// The dashboard survives a restart of the hub: it says so, reconnects on its own, and
// catches up with what happened while it was away.
// Usage: node restart.mjs BASE_URL. Steps the Rust side performs, asked on stdout and
// answered "done" on stdin:
//   @stop   stop the hub, record three events (two pdf_download and a page_view on /while-away) with another
//           instance on the same database that the page cannot reach, stop that one too;
//   @start  start the hub again on the same address and database.
import { main, newPage, postEvent, visitor, figure, waitFigure, waitStatus, waitFeed, check, ask, noPageErrors } from './lib.mjs';

const base = process.argv[2];

await main('restart', async (browser) => {
  const page = await newPage(browser);
  // A short first backoff and the test server's 500 ms heartbeat.
  await page.goto(new URL('/?backoff=300&heartbeat=500', base).href);
  await waitStatus(page, 'live');
  await postEvent(base, { event_type: 'page_view', page_url: '/before', visitor_id: visitor() });
  await waitFeed(page, 'page_view', '/before');
  await waitFigure(page, 'total_events', 'v >= 1', 'the first event');
  const before = await figure(page, 'total_events');
  check(true, `live, with ${before} event(s) today`);

  await ask('stop');
  await page.waitForFunction(() => ['reconnecting', 'offline'].includes(document.getElementById('status').dataset.status),
    null, { timeout: 15_000 });
  check(true, `the indicator says ${await page.locator('#status').getAttribute('data-status')} while the hub is down`);
  check(await page.locator('#feed li[data-type="pdf_download"]').count() === 0, 'the events recorded meanwhile are not shown yet');

  await ask('start');
  await waitStatus(page, 'live');
  check(true, 'the page reconnected on its own');
  await waitFeed(page, 'pdf_download', '/while-away');
  check(await page.locator('#feed li[data-type="pdf_download"]').count() === 2, 'the feed caught up with both events');
  await waitFigure(page, 'total_events', `v === ${before + 3}`, `${before + 3} events after the catch-up`);
  check(true, 'the figures caught up');
  await page.locator('#pages li[data-page="/while-away"]').waitFor();
  check(true, 'pages now caught up');

  // And it is live again: a new event arrives over the new connection.
  await postEvent(base, { event_type: 'letter_generate', page_url: '/after', visitor_id: visitor() });
  await waitFeed(page, 'letter_generate', '/after');
  check(true, 'events flow again after the restart');
  noPageErrors(page);
});
