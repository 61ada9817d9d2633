// A hub that requires a token (--jwt-secret): the dashboard opened with ?token= goes
// live, shows the figures and loads the read API; without the token it never goes live.
// Usage: node token.mjs BASE_URL TOKEN
import {
  main, newPage, postEvent, visitor, waitFigure, waitStatus, waitFeed, check, noPageErrors,
} from './lib.mjs';

const base = process.argv[2];
const token = process.argv[3];

await main('token', async (browser) => {
  const page = await newPage(browser);
  await page.goto(new URL(`/?token=${encodeURIComponent(token)}&backoff=200`, base).href);
  await waitStatus(page, 'live');
  await waitFigure(page, 'total_events', 'v >= 0', 'total_events shown');
  const id = visitor();
  await postEvent(base, { event_type: 'page_view', page_url: '/with-token', visitor_id: id });
  await waitFeed(page, 'page_view', '/with-token');
  // The read API answered too (the chart and pages load through it).
  const apiCalls = page.requests.filter((r) => r.url.includes('/api/v1/analytics/'));
  check(apiCalls.length > 0, 'the dashboard called the read API');
  noPageErrors(page);

  const bare = await newPage(browser);
  const refused = bare.waitForResponse((r) => r.url().includes('/api/v1/analytics/') && r.status() === 401);
  await bare.goto(new URL('/?backoff=200', base).href);
  await refused;
  const status = await bare.locator('#status').getAttribute('data-status');
  check(status !== 'live', `without the token the dashboard is not live (${status})`);
});
