// Shared helpers of the browser tests: launching Debian's Chromium, posting events,
// waiting with timeouts, and reporting. Each script is started by tests/browser.rs with
// the hub's base URL and exits 0 only when every check passed.
import { chromium } from 'playwright-core';
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';

export const WAIT = 15_000;

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}

/** A page that fails the test on any uncaught error, and records what it asked for. */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.errors = [];
  page.requests = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (process.env.E2E_VERBOSE) console.log(`[browser ${m.type()}] ${m.text()}`);
  });
  page.on('request', (r) => page.requests.push({ method: r.method(), url: r.url() }));
  return page;
}

export function visitor() {
  return randomUUID();
}

/** POSTs one event to the hub, as a site would; fails unless it is accepted. */
export async function postEvent(base, event) {
  const r = await fetch(new URL('/api/v1/analytics/event', base), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(WAIT),
  });
  if (r.status !== 201) throw new Error(`event refused: ${r.status} ${await r.text()}`);
}

export async function getJSON(base, path) {
  const r = await fetch(new URL(path, base), { signal: AbortSignal.timeout(WAIT) });
  const body = await r.json();
  if (!body.success) throw new Error(`${path}: ${body.error}`);
  return body.data;
}

/** The figure `name` as the dashboard shows it (a number, or NaN before the first). */
export async function figure(page, name) {
  const v = await page.locator(`[data-figure="${name}"]`).getAttribute('data-value');
  return v === null ? NaN : Number(v);
}

/** Waits until figure `name` satisfies `ok(value)`. */
export async function waitFigure(page, name, ok, what) {
  await page.waitForFunction(
    ([n, src]) => {
      const el = document.querySelector(`[data-figure="${n}"]`);
      const v = el && el.getAttribute('data-value');
      return v !== null && v !== undefined && new Function('v', `return ${src}`)(Number(v));
    },
    [name, ok],
    { timeout: WAIT },
  ).catch((e) => { throw new Error(`figure ${name}: expected ${what || ok}: ${e.message}`); });
}

export async function waitStatus(page, status) {
  await page.locator(`#status[data-status="${status}"]`).waitFor({ timeout: WAIT })
    .catch(async (e) => {
      const now = await page.locator('#status').getAttribute('data-status');
      throw new Error(`status: expected ${status}, still ${now}: ${e.message}`);
    });
}

/** Waits for a feed row of `type` (and page, when given). */
export async function waitFeed(page, type, pageUrl) {
  let sel = `#feed li[data-type="${type}"]`;
  const row = page.locator(sel).filter(pageUrl ? { hasText: pageUrl } : {});
  await row.first().waitFor({ timeout: WAIT })
    .catch((e) => { throw new Error(`feed: no ${type} ${pageUrl || ''} row: ${e.message}`); });
}

let checks = 0;
export function check(ok, what) {
  checks++;
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

export function noPageErrors(page) {
  check(page.errors.length === 0, `no uncaught errors in the page (${page.errors.join('; ')})`);
}

/** Lines from the test (stdin), for the steps the Rust side performs. */
const lines = createInterface({ input: process.stdin });
const waiting = [];
const received = [];
lines.on('line', (l) => {
  const w = waiting.shift();
  if (w) w(l.trim()); else received.push(l.trim());
});

/** Asks the Rust side to do `step` (a line `@step` on stdout) and waits for its answer. */
export async function ask(step, timeout = 60_000) {
  console.log(`@${step}`);
  const answer = received.length ? received.shift() : await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer to @${step} in ${timeout} ms`)), timeout);
    waiting.push((l) => { clearTimeout(t); resolve(l); });
  });
  if (answer !== 'done') throw new Error(`@${step}: ${answer}`);
}

/** Runs `body(browser)` with a browser and a global deadline; exits 0 on success. */
export async function main(name, body, deadline = 120_000) {
  const timer = setTimeout(() => {
    console.error(`FAIL ${name}: took more than ${deadline} ms`);
    process.exit(3);
  }, deadline);
  let browser;
  let failed = false;
  try {
    browser = await launch();
    await body(browser);
    console.log(`PASS ${name} (${checks} checks)`);
  } catch (e) {
    failed = true;
    console.error(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    clearTimeout(timer);
    lines.close();
  }
  process.exit(failed ? 1 : 0);
}
