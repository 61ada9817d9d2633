// script.js on a site of another origin: it sends page_view on load and on history
// navigation, custom events through window.maicivy, as text/plain, with CORS answered;
// without its opt-in it sends nothing from localhost. The dashboard shows what it sent.
// Usage: node snippet.mjs BASE_URL SITE_URL (the site, served by tests/browser.rs, has
// /landing with the snippet opted in and /plain without).
import { main, newPage, waitStatus, waitFeed, check, noPageErrors } from './lib.mjs';

const base = process.argv[2];
const site = process.argv[3];

await main('snippet', async (browser) => {
  const dashboard = await newPage(browser);
  await dashboard.goto(new URL('/', base).href);
  await waitStatus(dashboard, 'live');

  const page = await newPage(browser);
  const sent = [];
  page.on('response', async (r) => {
    if (r.url().endsWith('/api/v1/analytics/event')) {
      sent.push({
        method: r.request().method(),
        status: r.status(),
        acao: r.headers()['access-control-allow-origin'],
        type: r.request().headers()['content-type'],
        cookie: r.request().headers()['cookie'],
        body: r.request().postData(),
      });
    }
  });
  const failed = [];
  page.on('requestfailed', (r) => failed.push(`${r.url()} ${r.failure()?.errorText}`));

  await page.goto(new URL('/landing', site).href);
  await waitFeed(dashboard, 'page_view', '/landing');
  check(true, 'the page_view of the page load shows on the dashboard');
  await page.waitForFunction(() => window.maicivy && window.maicivy.disabled === '');

  await page.click('#pricing'); // history.pushState
  await waitFeed(dashboard, 'page_view', '/pricing');
  await dashboard.locator('#pages li[data-page="/pricing"]').waitFor();
  check(true, 'a pushState navigation sends a page_view, and pages now shows it');

  await page.click('#cta'); // window.maicivy('button_click', {id: 'cta'})
  await waitFeed(dashboard, 'button_click', '/pricing');
  check(true, 'a custom event through window.maicivy shows on the dashboard');

  await page.goBack(); // popstate
  await dashboard.waitForFunction(() => document.querySelectorAll('#feed li[data-type="page_view"]').length >= 3);
  check(await dashboard.locator('#feed li[data-type="page_view"]').first().innerText().then((t) => t.includes('/landing')),
    'going back (popstate) sends a page_view of /landing');

  check(sent.length >= 4, `the page sent its events (${sent.length})`);
  check(sent.every((s) => s.method === 'POST' && s.status === 201), 'every event was a POST answered 201 (no preflight)');
  // The hub reflects the site's origin (CORS on every route, as maicivy's backend).
  check(sent.every((s) => s.acao && s.acao !== '*' && s.acao === new URL(page.url()).origin),
    'the hub answered CORS for the site, with its origin');
  check(sent.every((s) => /^text\/plain/.test(s.type || '')), 'events go as text/plain');
  check(sent.every((s) => !s.cookie), 'no cookie goes along');
  check(failed.length === 0, `no request failed (${failed.join('; ')})`);
  noPageErrors(page);

  // Without its opt-in the snippet stays silent on localhost.
  const plain = await newPage(browser);
  await plain.goto(new URL('/plain', site).href);
  await plain.waitForFunction(() => window.maicivy && typeof window.maicivy.disabled === 'string');
  check(await plain.evaluate(() => window.maicivy.disabled) === 'localhost', 'without data-allow-localhost it is disabled on localhost');
  check(await plain.evaluate(() => window.maicivy('button_click')) === false, 'and custom events are dropped');
  check(!plain.requests.some((r) => r.url.endsWith('/api/v1/analytics/event')), 'and nothing was sent');
  noPageErrors(dashboard);
});
