#!/usr/bin/env node
// The relay's console driven like a person drives it: headless Chromium, real clicks and typing (playwright-core).
//
//   node tests/sdk/console.mjs --console http://127.0.0.1:APORT --relay http://127.0.0.1:RPORT --key INGESTION_KEY
//        --token CONSOLE_TOKEN --order-id ORDER --dead-id MESSAGE_ID --screenshots DIR [--api-key KEY]
//        [--endpoint URL (the new integration's, e.g. a fake OpenAI)] [--chromium /usr/bin/chromium]
//
// Steps, in order (each waits for what the page shows, 10 s at most):
//   login        /ui redirects to the login page; the token is typed and submitted.
//   add          "Add integration": name brand, pixel px_brand, the API key, consent advertising; Validate Only is
//                checked by default; Save; "Send a test event"; OpenAI's answer is read off the page.
//   editor       the default pixel's field mappings: a block with a misspelt target is typed at the end; the error
//                diagnostic and the text its span covers are read, and the highlighted text in the editor; the
//                misspelling is erased, `cu` typed, the completion `data.currency` accepted with Tab; the draft
//                compiles; the live preview shows the payload; "Save and apply".
//   order        an Order Completed with ORDER as order id is sent to the relay's ingestion (as a server would).
//   debugger     the event is found by searching its order id, opened, and still open after the page refreshed.
//   dead-letter  the dead letter of message DEAD_ID is replayed with its button.
//   quality      the match-quality page, last hour: the shares shown per event type and signal.
//   csrf         a change sent from the page without its anti-forgery token is refused.
//   narrow       every page at 390×800: nothing wider than the screen.
// Screenshots of each page at 1280×800 (and narrow) go to DIR. One JSON line on stdout reports what was seen.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const opts = { chromium: '/usr/bin/chromium' };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  opts[key] = process.argv[i + 1];
}
for (const needed of ['console', 'relay', 'key', 'token', 'orderId', 'deadId', 'screenshots']) {
  if (!opts[needed]) {
    console.error(`missing --${needed}`);
    process.exit(2);
  }
}
mkdirSync(opts.screenshots, { recursive: true });

const report = { steps: [] };
let browser;
let current;
const profile = mkdtempSync(join(tmpdir(), 'signal-engine-console-'));

async function main() {
  const playwright = await import('playwright-core');
  browser = await playwright.chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  current = page;
  page.setDefaultTimeout(10000);
  const consoleErrors = [];
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
  page.on('pageerror', (error) => consoleErrors.push(String(error)));
  const shot = async (name) => page.screenshot({ path: join(opts.screenshots, name + '.png'), fullPage: true });
  const step = (name, seen) => report.steps.push({ name, ...seen });

  // login
  await page.goto(opts.console + '/ui');
  const loginUrl = page.url();
  await shot('login');
  await page.fill('#token', opts.token);
  await Promise.all([page.waitForURL(/\/ui(#.*)?$/), page.click('button[type=submit]')]);
  await page.waitForSelector('#integrations tbody tr');
  const cookies = await context.cookies();
  step('login', { login_url: loginUrl, session_cookie: cookies.find((c) => c.name === 'engine_console') || null });
  await shot('integrations');

  // add
  await page.click('#add-integration');
  await page.waitForSelector('#add-form');
  await page.fill('#name', 'brand');
  await page.fill('#pixel_id', 'px_brand');
  await page.fill('#api_key', opts.apiKey || 'sk-test-0123456789');
  await page.selectOption('#consent_category', 'advertising');
  if (opts.endpoint) {
    await page.click('#add-form details summary');
    await page.fill('#endpoint', opts.endpoint);
  }
  const validateOnlyDefault = await page.isChecked('#validate_only');
  await page.click('#create');
  await page.waitForSelector('#created');
  await page.click('#send-test');
  await page.waitForSelector('#test-answer:not([hidden])');
  step('add', {
    validate_only_default: validateOnlyDefault,
    created: await page.textContent('#created'),
    test_status: await page.textContent('#test-status'),
    test_answer: await page.textContent('#test-answer'),
    answer_status: await page.getAttribute('#test-answer', 'data-status'),
  });
  await shot('add-integration');
  await page.goto(opts.console + '/ui#/integrations');
  await page.waitForSelector('tr[data-integration="brand"]');
  step('listed', { brand_row: await page.textContent('tr[data-integration="brand"]') });

  // editor
  await page.goto(opts.console + '/ui#/mapping/default');
  await page.waitForSelector('#check-status.ok');
  const clean = await page.textContent('#check-status');
  await page.click('#source');
  await page.keyboard.press('Control+End');
  await page.keyboard.type('\nwhen order_created {\n  "EUR" -> data.curency', { delay: 5 });
  await page.keyboard.press('Escape');
  await page.keyboard.type('\n}', { delay: 5 });
  const error = await page.waitForSelector('#diagnostics li[data-severity="error"]');
  const diagnostic = {
    code: await error.getAttribute('data-code'),
    line: Number(await error.getAttribute('data-line')),
    text: await error.textContent(),
    spanned: await error.$eval('code.spanned', (node) => node.textContent).catch(() => null),
    marked: await page.$$eval('.backdrop mark.error', (marks) => marks.map((m) => m.textContent)),
    lines: await page.$eval('#source', (node) => node.value.split('\n').length),
  };
  await shot('mapping-editor-diagnostic');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('End');
  for (let n = 0; n < 'curency'.length; n++) await page.keyboard.press('Backspace');
  await page.keyboard.type('cu', { delay: 20 });
  await page.waitForSelector('#completions:not([hidden]) li[data-label="data.currency"]');
  const offered = await page.$$eval('#completions li', (items) => items.map((li) => li.dataset.label));
  await page.keyboard.press('Tab');
  await page.waitForSelector('#check-status[data-errors="0"]');
  const fixedLine = await page.$eval('#source', (node) => node.value.trimEnd().split('\n').slice(-2)[0]);
  await page.waitForFunction(() => document.querySelector('#preview').textContent.includes('"currency": "EUR"'));
  const preview = await page.textContent('#preview');
  await shot('mapping-editor-fixed');
  await page.click('#save');
  await page.waitForSelector('#save-status.ok');
  step('editor', {
    clean_status: clean,
    diagnostic,
    offered,
    fixed_line: fixedLine,
    preview_has_eur: preview.includes('"currency": "EUR"'),
    saved: await page.textContent('#save-status'),
  });

  // order
  const now = new Date().toISOString();
  const order = {
    type: 'track', event: 'Order Completed', messageId: 'm-ui-order', anonymousId: 'ui-visitor', timestamp: now,
    properties: { order_id: opts.orderId, revenue: 42.5, currency: 'USD', products: [{ product_id: 'SKU-1', price: 42.5, quantity: 1 }] },
    context: { page: { url: 'https://shop.example.com/thanks' }, consent: { marketing: true } },
  };
  const sent = await fetch(opts.relay + '/v1/t', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Basic ' + Buffer.from(opts.key + ':').toString('base64') },
    body: JSON.stringify(order),
  });
  step('order', { status: sent.status });

  // debugger
  await page.goto(opts.console + '/ui#/events');
  await page.waitForSelector('details.event');
  await page.fill('#search', opts.orderId);
  const mine = 'details.event[data-message-id="m-ui-order"][data-pixel="default"]';
  await page.waitForFunction(() => [...document.querySelectorAll('details.event')].every((d) => d.dataset.messageId === 'm-ui-order'));
  const found = await page.$$eval('details.event', (list) => list.map((d) => d.dataset.messageId + ' @ ' + d.dataset.pixel));
  await page.locator(mine + ' > summary').click();
  await page.waitForSelector(mine + '[open]');
  await page.waitForTimeout(2600);
  const stillOpen = await page.$(mine + '[open]');
  const payload = await page.$eval(mine + ' pre.payload', (node) => node.textContent);
  const silent = await page.$$eval(mine + ' ul.silent li', (items) => items.length);
  await shot('event-debugger');
  step('debugger', { found, still_open: Boolean(stillOpen), payload_has_eur: payload.includes('"currency": "EUR"'), silent_rules: silent });

  // dead-letter
  await page.goto(opts.console + '/ui#/dead-letters');
  const row = await page.waitForSelector(`tr[data-id="${opts.deadId}"]`);
  const reason = await row.textContent();
  await shot('dead-letters');
  await row.$eval('button.replay', (button) => button.click());
  await page.waitForSelector('#dlq-message.ok');
  step('dead-letter', { row: reason, message: await page.textContent('#dlq-message') });

  // quality
  await page.goto(opts.console + '/ui#/quality');
  await page.selectOption('#window', 'hour');
  await page.waitForSelector('section[data-pixel="default"] tr[data-event-type="order_created"]');
  const shares = await page.$$eval('section[data-pixel="default"] tr[data-event-type]', (rows) => rows.map((r) => ({
    event_type: r.dataset.eventType,
    signals: Object.fromEntries([...r.querySelectorAll('td[data-signal]')].map((td) => [td.dataset.signal, td.dataset.share === '' ? null : Number(td.dataset.share)])),
  })));
  const score = await page.getAttribute('section[data-pixel="default"] .score', 'data-score');
  await shot('match-quality');
  step('quality', { shares, score: Number(score) });

  // csrf (the refusal is the browser's one expected console error, left out of the report)
  const errorsBefore = consoleErrors.length;
  const forged = await page.evaluate(async () => {
    const response = await fetch('/api/integrations/brand', { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: '{"validate_only":false}' });
    return { status: response.status, body: await response.json() };
  });
  await page.waitForTimeout(100);
  consoleErrors.splice(errorsBefore);
  step('csrf', forged);

  // narrow
  const widths = {};
  await page.setViewportSize({ width: 390, height: 800 });
  for (const [name, hash] of [['integrations', '#/integrations'], ['mapping', '#/mapping/default'], ['events', '#/events'], ['dead-letters', '#/dead-letters'], ['quality', '#/quality']]) {
    await page.goto(opts.console + '/ui' + hash);
    await page.waitForSelector('main#view > *:not(p:only-child)');
    await page.waitForTimeout(300);
    widths[name] = await page.evaluate(() => document.documentElement.scrollWidth);
    await shot('narrow-' + name);
  }
  step('narrow', { viewport: 390, widths });
  report.console_errors = consoleErrors;
  report.ok = true;
}

main()
  .catch(async (error) => {
    report.ok = false;
    report.error = String(error && error.stack || error);
    if (current) {
      report.page_url = current.url();
      report.page_text = await current.textContent('body').catch(() => null);
      await current.screenshot({ path: join(opts.screenshots, 'failure.png'), fullPage: true }).catch(() => {});
    }
  })
  .finally(async () => {
    if (browser) await browser.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
    console.log(JSON.stringify(report));
    process.exit(report.ok ? 0 : 1);
  });
