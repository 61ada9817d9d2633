// The dashboard: open it, ingest events over HTTP, see the figures, the feed, the chart
// and the pages now change; it loads nothing from elsewhere; it fits a phone.
// Usage: node dashboard.mjs BASE_URL [SCREENSHOT.png]
import {
  main, newPage, postEvent, visitor, figure, waitFigure, waitStatus, waitFeed, check,
  noPageErrors,
} from './lib.mjs';

const base = process.argv[2];
const screenshot = process.argv[3];

await main('dashboard', async (browser) => {
  const page = await newPage(browser);
  const origin = new URL(base).origin;
  await page.goto(new URL('/', base).href);
  await waitStatus(page, 'live');
  // initial_stats has arrived: the four figures are numbers.
  for (const f of ['current_visitors', 'unique_today', 'total_events', 'letters_today']) {
    await waitFigure(page, f, 'v >= 0', `${f} shown`);
  }
  const events0 = await figure(page, 'total_events');
  const letters0 = await figure(page, 'letters_today');
  const unique0 = await figure(page, 'unique_today');

  // Five visitors on a few pages; one generates a letter.
  const people = [visitor(), visitor(), visitor(), visitor(), visitor()];
  const sent = [
    { event_type: 'page_view', page_url: '/', visitor_id: people[0] },
    { event_type: 'page_view', page_url: '/cv', visitor_id: people[1] },
    { event_type: 'page_view', page_url: '/cv', visitor_id: people[2] },
    { event_type: 'cv_theme_change', page_url: '/cv', visitor_id: people[2], event_data: { theme: 'dark' } },
    { event_type: 'page_view', page_url: '/letters', visitor_id: people[3] },
    { event_type: 'letter_generate', page_url: '/letters', visitor_id: people[3], event_data: { letter_type: 'motivation' } },
    { event_type: 'page_view', page_url: '/cv', visitor_id: people[4] },
    { event_type: 'pdf_download', page_url: '/cv', visitor_id: people[4] },
    { event_type: 'button_click', page_url: '/', visitor_id: people[0], event_data: { id: 'contact' } },
  ];
  for (const e of sent) await postEvent(base, e);

  // Each event shows at once, in the feed and in the figures.
  await waitFeed(page, 'letter_generate', '/letters');
  await waitFeed(page, 'pdf_download', '/cv');
  await waitFeed(page, 'button_click', '/');
  check(true, 'the feed shows each event type and page');
  await waitFigure(page, 'total_events', `v === ${events0 + sent.length}`, `${events0 + sent.length} events today`);
  check(true, `events today went from ${events0} to ${events0 + sent.length}`);
  await waitFigure(page, 'letters_today', `v === ${letters0 + 1}`, `${letters0 + 1} letters`);
  check(true, 'letters today counted the letter');
  // unique_today is only in the server's figures: the next heartbeat brings it.
  await waitFigure(page, 'unique_today', `v >= ${unique0 + people.length}`, 'unique visitors via heartbeat');
  await waitFigure(page, 'current_visitors', `v >= ${people.length}`, 'current visitors');
  check(true, 'a heartbeat updated unique today and current visitors');

  // The chart counts them in the current minute.
  await page.waitForFunction((n) => Number(document.getElementById('chart').getAttribute('data-total')) >= n,
    sent.length, { timeout: 15_000 });
  check(await page.locator('#chart canvas').count() >= 1, 'the chart is drawn by uPlot');

  // Pages now: /cv first (three visitors on it).
  await page.locator('#pages li[data-page="/cv"]').waitFor();
  const firstPage = await page.locator('#pages li').first().getAttribute('data-page');
  check(firstPage === '/cv', `pages now puts /cv first (got ${firstPage})`);
  check(await page.locator('#pages li[data-page="/letters"]').count() === 1, 'pages now lists /letters');

  // Works offline: nothing was requested from another origin.
  const foreign = page.requests.filter((r) => !r.url.startsWith(origin) && !r.url.startsWith('data:'));
  check(foreign.length === 0, `no request leaves the hub (${foreign.map((r) => r.url).join(', ')})`);
  noPageErrors(page);

  if (screenshot) {
    // Let the highlight animations end before the picture.
    await page.waitForFunction(() => document.getAnimations().every((a) => a.playState !== 'running' || a.effect?.getTiming().iterations === Infinity),
      null, { timeout: 5_000 }).catch(() => {});
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`screenshot: ${screenshot}`);
  }

  // A phone: no sideways scrolling, figures two by two.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth + 1, null, { timeout: 5_000 })
    .catch(() => {});
  const [scrollW, innerW] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(scrollW <= innerW + 1, `fits a 390 px phone (content ${scrollW} px)`);
  const boxes = await page.locator('.figure').evaluateAll((els) => els.map((e) => e.getBoundingClientRect().top));
  check(new Set(boxes.map(Math.round)).size === 2, 'figures stand two by two on a phone');
  if (process.env.PHONE_SCREENSHOT) await page.screenshot({ path: process.env.PHONE_SCREENSHOT, fullPage: true });
});
