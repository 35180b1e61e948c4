#!/usr/bin/env node
// One shopper's journey with a REAL browser analytics SDK (in headless Chromium) pointed at a collector (the relay).
//
//   node tests/sdk/browser.mjs --sdk analytics-next|rudderstack --relay http://127.0.0.1:RPORT --key WRITEKEY \
//        --page-port PPORT [--timeout-ms 30000] [--no-metrics] [--delivery standard|batching|beacon] [--quiet-ms 800]
//        [--chromium /usr/bin/chromium]
// --no-metrics: analytics-next's metrics client (POST <relay>/v1/m) off; by default it flushes every second here.
// --delivery (default standard = each SDK's default, one request per event: analytics-next POST <relay>/v1/{p,i,t},
//   RudderStack POST <relay>/v1/{page,identify,track}):
//   batching  analytics-next deliveryStrategy 'batching' -> POST <relay>/v1/b {batch:[...]}, flushed after 1 s;
//             RudderStack queueOptions.batch -> POST <relay>/v1/batch {batch:[...]}, flushed after 1 s.
//   beacon    RudderStack only: useBeacon -> navigator.sendBeacon to <relay>/beacon/v1/batch?writeKey=KEY
//             (text/plain, no Authorization, no preflight), flushed after 1 s.
//
// It serves the shop's pages itself on http://127.0.0.1:PPORT (another origin than the relay), with the SDK bundled
// from node_modules by esbuild at start (nothing is fetched from a CDN: settings / source config are given inline):
//   a. /landing?oppref=clk_browser_42&utm_source=chatgpt     page()
//   b. same page                                              identify('user-browser-1', {email, phone})
//   c. /checkout/complete?step=3 (by clicking a link)         page(), then track('Order Completed', {...})
// Every call carries options {context: {consent: {marketing: true}}}. The anonymous id lives in the SDK's own storage
// (cookie/localStorage of the page origin) and must be the same on both pages.
//
// Before leaving a page and before finishing it waits until the SDK's events were all answered by the relay, nothing
// to the relay is in flight, and nothing new went out for --quiet-ms. Then it prints ONE JSON line on stdout:
//   {"sdk","sdk_version","page_origin","relay","requests":[{method,url,status,request_headers,request_body,...}],
//    "console_errors":[...],"anonymous_ids":[...],"foreign_requests":[...],"ok","error"?}
// requests = every request from the pages to the relay, in order, CORS preflights included (seen through the
// Chrome DevTools Protocol, since playwright's request events do not show preflights; they have "preflight": true).
// Exit 0 when the journey completed, every non-OPTIONS request to the relay got a 2xx, the anonymous id persisted
// and no request left for any other host; exit 1 otherwise (reason on stderr). --timeout-ms bounds the whole run:
// on expiry the browser is killed and it exits 1.
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

// ---------- arguments ----------
function parseArgs(argv) {
  const out = { timeoutMs: 30000, metrics: true, chromium: '/usr/bin/chromium', quietMs: 800, delivery: 'standard' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--sdk') out.sdk = next();
    else if (a === '--relay') out.relay = next().replace(/\/+$/, '');
    else if (a === '--key') out.key = next();
    else if (a === '--page-port') out.pagePort = Number(next());
    else if (a === '--timeout-ms') out.timeoutMs = Number(next());
    else if (a === '--quiet-ms') out.quietMs = Number(next());
    else if (a === '--chromium') out.chromium = next();
    else if (a === '--no-metrics') out.metrics = false;
    else if (a === '--delivery') out.delivery = next();
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  if (!['analytics-next', 'rudderstack'].includes(out.sdk)) usage('--sdk must be analytics-next or rudderstack');
  if (!out.relay || !/^https?:\/\/[^/]+$/.test(out.relay)) usage('--relay must be http://HOST:PORT');
  if (!out.key) usage('--key is required');
  if (!Number.isInteger(out.pagePort) || out.pagePort <= 0) usage('--page-port must be a port number');
  if (!(out.timeoutMs > 0)) usage('--timeout-ms must be positive');
  if (!['standard', 'batching', 'beacon'].includes(out.delivery)) usage('--delivery must be standard, batching or beacon');
  if (out.delivery === 'beacon' && out.sdk !== 'rudderstack') usage('--delivery beacon is for rudderstack');
  return out;
}

function usage(msg) {
  if (msg) process.stderr.write(`browser.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node browser.mjs --sdk analytics-next|rudderstack --relay http://127.0.0.1:RPORT --key WRITEKEY ' +
      '--page-port PPORT [--timeout-ms 30000] [--no-metrics] [--delivery standard|batching|beacon] [--quiet-ms 800] ' +
      '[--chromium /usr/bin/chromium]\n',
  );
  process.exit(msg ? 2 : 0);
}

const opts = parseArgs(process.argv.slice(2));
const pageOrigin = `http://127.0.0.1:${opts.pagePort}`;
const relayOrigin = new URL(opts.relay).origin;

const SDK_PACKAGES = { 'analytics-next': '@segment/analytics-next', rudderstack: '@rudderstack/analytics-js' };
function packageVersion(name) {
  try {
    return JSON.parse(readFileSync(join(here, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
}

// ---------- state that the report is built from ----------
const requests = []; // relay requests, in the order they started
const foreignRequests = [];
const consoleErrors = [];
let context; // playwright BrowserContext
let pageServer;
let profileDir;
let finished = false;

function report(extra) {
  const out = {
    sdk: opts.sdk,
    sdk_version: packageVersion(SDK_PACKAGES[opts.sdk]),
    page_origin: pageOrigin,
    relay: opts.relay,
    requests: requests.map(({ _pending, _seq, ...r }) => r),
    console_errors: consoleErrors,
    foreign_requests: foreignRequests,
    ...extra,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

// Every process this one started (Chromium and its helpers), found through /proc by parent id.
function descendants(pid) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch {
      // the process ended meanwhile
    }
  }
  const found = [];
  const walk = (p) => {
    for (const c of children.get(p) || []) {
      found.push(c);
      walk(c);
    }
  };
  walk(pid);
  return found;
}

async function cleanup() {
  if (context) {
    const ctx = context;
    context = undefined;
    await Promise.race([ctx.close().catch(() => {}), new Promise((r) => setTimeout(r, 3000))]);
  }
  for (const pid of descendants(process.pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  if (pageServer) pageServer.close();
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
}

async function fail(message, extra = {}) {
  if (finished) return;
  finished = true;
  report({ ok: false, error: message, ...extra });
  process.stderr.write(`browser.mjs: FAILED (${opts.sdk}): ${message}\n`);
  await cleanup();
  process.exit(1);
}

const globalTimer = setTimeout(() => {
  const pending = requests.filter((r) => r._pending).map((r) => `${r.method} ${r.url}`);
  fail(`global timeout of ${opts.timeoutMs} ms expired${pending.length ? `; still in flight: ${pending.join(', ')}` : ''}`);
}, opts.timeoutMs);
process.on('SIGTERM', () => fail('terminated by SIGTERM'));
process.on('SIGINT', () => fail('interrupted'));

// ---------- the in-page harness ----------
// window.harness.{ready,page,identify,track} return promises; analytics-next's resolve once the event went through
// the Segment.io plugin (the request was answered), RudderStack's once the event is queued (its callback); browser.mjs
// waits on the network for the rest.
const HARNESS_JS = String.raw`
(function () {
  var cfg = window.__HARNESS_CONFIG;
  var consent = { context: { consent: { marketing: true } } };
  var relay = new URL(cfg.relay);
  function describe(ctx) {
    // analytics-next resolves every call with a Context; keep what tells whether delivery failed.
    if (!ctx || typeof ctx.failedDelivery !== 'function') return null;
    var failed = ctx.failedDelivery();
    return { messageId: ctx.event && ctx.event.messageId, failed: failed ? String(failed.reason) : null };
  }
  if (cfg.sdk === 'analytics-next') {
    var apiHost = relay.host + '/v1';
    var protocol = relay.protocol.replace(':', '');
    // What Segment's CDN would answer for /v1/projects/<writeKey>/settings, with the collector as the API host.
    var cdnSettings = {
      integrations: {
        'Segment.io': {
          apiKey: cfg.key,
          apiHost: apiHost,
          protocol: protocol,
          unbundledIntegrations: [],
          addBundledMetadata: true,
          maybeBundledConfigIds: {},
          versionSettings: { version: '4.4.7', componentTypes: ['browser'] },
          // standard: one fetch per event to <apiHost>/<t|p|i|...>; batching: fetch to <apiHost>/b with {batch:[...]}
          // when 10 events are buffered, after config.timeout ms, or at once (keepalive) when the page is hidden/unloaded.
          deliveryStrategy:
            cfg.delivery === 'batching'
              ? { strategy: 'batching', config: { size: 10, timeout: 1000 } }
              : { strategy: 'standard', config: {} }
        }
      },
      plan: {},
      edgeFunction: {},
      analyticsNextEnabled: true,
      middlewareSettings: {},
      enabledMiddleware: {},
      legacyVideoPluginsEnabled: false,
      remotePlugins: [],
      metrics: cfg.metrics ? { sampleRate: 1, flushTimer: 1000 } : { sampleRate: 0 }
    };
    var analytics = window.SegmentAnalytics.AnalyticsBrowser.load(
      { writeKey: cfg.key, cdnSettings: cdnSettings },
      // The metrics client (/m) takes host and protocol from these init options only (else https://api.segment.io/v1).
      { integrations: { 'Segment.io': { apiHost: apiHost, protocol: protocol } } }
    );
    window.harness = {
      ready: function () {
        return analytics.then(function (r) { return { anonymousId: r[0].user().anonymousId() }; });
      },
      page: function () { return analytics.page({}, consent).then(describe); },
      identify: function (id, traits) { return analytics.identify(id, traits, consent).then(describe); },
      track: function (name, props) { return analytics.track(name, props, consent).then(describe); },
      anonymousId: function () { return analytics.user().then(function (u) { return u.anonymousId(); }); }
    };
  } else {
    var rudder = new window.RudderStackSDK.RudderAnalytics();
    var loaded = new Promise(function (resolve) {
      var loadOptions = {
        logLevel: 'WARN',
        // The source configuration that would come from the control plane's /sourceConfig: no device-mode
        // destinations, no error/metrics reporting, so no other host is ever contacted.
        getSourceConfig: function () {
          return {
            source: {
              id: 'signal-engine-harness-source',
              name: 'signal-engine harness',
              writeKey: cfg.key,
              workspaceId: 'signal-engine-harness',
              enabled: true,
              config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } },
              destinations: []
            }
          };
        },
        onLoaded: function () { resolve(); }
      };
      if (cfg.delivery === 'batching') {
        loadOptions.queueOptions = { batch: { enabled: true, maxItems: 10, flushInterval: 1000 } };
      } else if (cfg.delivery === 'beacon') {
        loadOptions.useBeacon = true;
        loadOptions.beaconQueueOptions = { maxItems: 10, flushQueueInterval: 1000 };
      }
      rudder.load(cfg.key, cfg.relay, loadOptions);
    });
    function call(fn) {
      return loaded.then(function () { return new Promise(function (resolve) { fn(function () { resolve(null); }); }); });
    }
    window.harness = {
      ready: function () { return loaded.then(function () { return { anonymousId: rudder.getAnonymousId() }; }); },
      page: function () { return call(function (cb) { rudder.page({}, consent, cb); }); },
      identify: function (id, traits) { return call(function (cb) { rudder.identify(id, traits, consent, cb); }); },
      track: function (name, props) { return call(function (cb) { rudder.track(name, props, consent, cb); }); },
      anonymousId: function () { return loaded.then(function () { return rudder.getAnonymousId(); }); }
    };
  }
})();
`;

function pageHtml(title, link = '') {
  const config = { sdk: opts.sdk, relay: opts.relay, key: opts.key, metrics: opts.metrics, delivery: opts.delivery };
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title><link rel="icon" href="data:,">
<script>window.__HARNESS_CONFIG = ${JSON.stringify(config)};</script>
<script src="/sdk/${opts.sdk}.js"></script>
<script src="/harness.js"></script>
</head><body><h1>${title}</h1>${link}</body></html>`;
}

async function startPageServer(bundle) {
  const server = createServer((req, res) => {
    const path = new URL(req.url, pageOrigin).pathname;
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (path === '/landing') send(200, 'text/html; charset=utf-8', pageHtml('Landing', '<a id="checkout" href="/checkout/complete?step=3">Buy</a>'));
    else if (path === '/checkout/complete') send(200, 'text/html; charset=utf-8', pageHtml('Order complete'));
    else if (path === `/sdk/${opts.sdk}.js`) send(200, 'application/javascript; charset=utf-8', bundle);
    else if (path === '/harness.js') send(200, 'application/javascript; charset=utf-8', HARNESS_JS);
    else send(404, 'text/plain', 'not found');
  });
  await new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`cannot serve pages on ${pageOrigin}: ${e.message}`)));
    server.listen(opts.pagePort, '127.0.0.1', resolve);
  });
  return server;
}

// ---------- watching the network ----------
let seq = 0;
let lastRelayActivity = Date.now();
const byRequest = new Map(); // playwright Request -> record
const cdpBodies = []; // bodies fetched through the DevTools protocol before playwright reported their request

function isRelay(url) {
  try {
    return new URL(url).origin === relayOrigin;
  } catch {
    return false;
  }
}

function bodyText(request) {
  const buf = request.postDataBuffer();
  if (!buf) return null;
  const text = buf.toString('utf8');
  return Buffer.from(text, 'utf8').equals(buf) ? text : `base64:${buf.toString('base64')}`;
}

function watch(page, cdp) {
  page.on('request', (request) => {
    const url = request.url();
    if (isRelay(url)) {
      const record = {
        method: request.method(),
        url,
        status: null,
        request_headers: request.headers(),
        request_body: bodyText(request),
        resource_type: request.resourceType(),
        page_url: page.url(),
        _pending: true,
        _seq: seq++,
      };
      if (record.request_body === null) {
        const i = cdpBodies.findIndex((b) => b.url === url);
        if (i >= 0) record.request_body = cdpBodies.splice(i, 1)[0].body;
      }
      byRequest.set(request, record);
      requests.push(record);
      lastRelayActivity = Date.now();
    } else if (!url.startsWith(pageOrigin + '/') && !url.startsWith('data:')) {
      foreignRequests.push(`${request.method()} ${url}`);
    }
  });
  const settle = async (request, failure) => {
    const record = byRequest.get(request);
    if (!record) return;
    try {
      record.request_headers = await request.allHeaders(); // with what the network stack added (Origin, ...)
    } catch {
      // keep the provisional headers
    }
    const response = failure ? null : await request.response().catch(() => null);
    record.status = response ? response.status() : null;
    if (failure) record.failure = failure;
    record._pending = false;
    lastRelayActivity = Date.now();
  };
  page.on('requestfinished', (request) => settle(request));
  page.on('requestfailed', (request) => settle(request, request.failure()?.errorText || 'failed'));
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));

  // CORS preflights are not playwright requests; the DevTools protocol reports them (an OPTIONS whose initiator is
  // "preflight"; its response comes with type "Preflight"), headers in requestWillBeSentExtraInfo.
  const preflights = new Map();
  cdp.on('Network.requestWillBeSent', (e) => {
    const preflight = e.type === 'Preflight' || e.initiator?.type === 'preflight' || e.request.method === 'OPTIONS';
    if (!preflight || !isRelay(e.request.url)) return;
    const record = {
      method: e.request.method,
      url: e.request.url,
      status: null,
      request_headers: lowerKeys(e.request.headers),
      request_body: null,
      resource_type: 'preflight',
      page_url: page.url(),
      preflight: true,
      _pending: true,
      _seq: seq++,
    };
    preflights.set(e.requestId, record);
    // Put the preflight before the request it clears (same URL, still unanswered, started last).
    const target = [...requests].reverse().find((r) => !r.preflight && r._pending && r.url === record.url);
    if (target) requests.splice(requests.indexOf(target), 0, record);
    else requests.push(record);
    lastRelayActivity = Date.now();
  });
  // playwright has no body for navigator.sendBeacon (a Blob); the DevTools protocol can still hand it over.
  cdp.on('Network.requestWillBeSent', async (e) => {
    if (!isRelay(e.request.url) || e.request.method === 'OPTIONS' || !e.request.hasPostData || e.request.postData) return;
    let body;
    try {
      body = (await cdp.send('Network.getRequestPostData', { requestId: e.requestId })).postData;
    } catch {
      return;
    }
    const record = requests.find((r) => !r.preflight && r.url === e.request.url && r.request_body === null);
    if (record) {
      record.request_body = body;
      lastRelayActivity = Date.now();
    } else {
      cdpBodies.push({ url: e.request.url, body }); // playwright's request event has not come yet
    }
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    const record = preflights.get(e.requestId);
    if (record) record.request_headers = lowerKeys(e.headers);
  });
  cdp.on('Network.responseReceived', (e) => {
    const record = preflights.get(e.requestId);
    if (record) {
      record.status = e.response.status;
      record.response_headers = lowerKeys(e.response.headers);
      record._pending = false;
      lastRelayActivity = Date.now();
    }
  });
  cdp.on('Network.loadingFailed', (e) => {
    const record = preflights.get(e.requestId);
    if (record) {
      record.failure = e.errorText + (e.corsErrorStatus ? ` (${e.corsErrorStatus.corsError})` : '');
      record._pending = false;
      lastRelayActivity = Date.now();
    }
  });
}

function lowerKeys(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers || {})) out[k.toLowerCase()] = v;
  return out;
}

/** Events (type -> count) in the bodies of non-preflight relay requests answered with a 2xx. */
function answeredEvents() {
  const counts = {};
  for (const r of requests) {
    if (r.preflight || r._pending || !r.request_body || !(r.status >= 200 && r.status < 300)) continue;
    let body;
    try {
      body = JSON.parse(r.request_body);
    } catch {
      continue;
    }
    const events = Array.isArray(body.batch) ? body.batch : body.type ? [body] : [];
    for (const e of events) counts[e.type] = (counts[e.type] || 0) + 1;
  }
  return counts;
}

// When the last SDK call of the page resolved. analytics-next's metrics client queues a counter per call and flushes
// the queue every flushTimer (1000 ms here); leaving the page earlier would abort that POST .../m.
let lastCallAt = 0;
const METRICS_FLUSH_WAIT_MS = 1300;

/**
 * Waits until `want` (type -> count) events were answered, nothing is in flight and the relay saw no activity for
 * quietMs; with analytics-next's metrics on, also until its metrics timer fired after the page's last call.
 */
async function settled(want, what) {
  const needMetrics = opts.sdk === 'analytics-next' && opts.metrics;
  for (;;) {
    const got = answeredEvents();
    const enough =
      Object.entries(want).every(([type, n]) => (got[type] || 0) >= n) &&
      (!needMetrics || Date.now() - lastCallAt >= METRICS_FLUSH_WAIT_MS);
    const inFlight = requests.some((r) => r._pending);
    if (enough && !inFlight && Date.now() - lastRelayActivity >= opts.quietMs) return;
    const failed = requests.find((r) => !r.preflight && !r._pending && !(r.status >= 200 && r.status < 300));
    if (failed && !inFlight && Date.now() - lastRelayActivity >= opts.quietMs) {
      throw new Error(
        `${what}: ${failed.method} ${failed.url} answered ${failed.status ?? failed.failure} ` +
          `(events answered so far: ${JSON.stringify(got)})`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---------- the journey ----------
async function main() {
  let playwright;
  try {
    playwright = await import('playwright-core');
  } catch (e) {
    throw new Error(`playwright-core is not installed (run npm ci in tests/sdk): ${e.message}`);
  }
  const { buildBundles } = await import('./build.mjs');
  const bundle = (await buildBundles([opts.sdk]))[opts.sdk];
  pageServer = await startPageServer(bundle);

  profileDir = mkdtempSync(join(tmpdir(), 'signal-engine-sdk-chromium-'));
  context = await playwright.chromium.launchPersistentContext(profileDir, {
    executablePath: opts.chromium,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: Math.max(1000, opts.timeoutMs - 1000),
  });
  const page = context.pages()[0] || (await context.newPage());
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  watch(page, cdp);

  const anonymousIds = [];
  const calls = [];
  const run = async (label, expr, arg) => {
    const result = await page.evaluate(expr, arg);
    lastCallAt = Date.now();
    calls.push({ call: label, page: page.url(), result });
    if (result && result.failed) throw new Error(`${label}: the SDK reports failed delivery: ${result.failed}`);
    return result;
  };

  // a + b: the landing page
  await page.goto(`${pageOrigin}/landing?oppref=clk_browser_42&utm_source=chatgpt`, { waitUntil: 'load' });
  const ready1 = await run('ready', () => window.harness.ready());
  await run('page', () => window.harness.page());
  await run('identify', ([id, traits]) => window.harness.identify(id, traits), [
    'user-browser-1',
    { email: ' Jane.Doe@Example.com ', phone: '+44 7700 900123' },
  ]);
  await settled({ page: 1, identify: 1 }, 'landing page');
  anonymousIds.push(ready1.anonymousId, await page.evaluate(() => window.harness.anonymousId()));

  // c: the checkout page, reached by following a link (so document.referrer is the landing page, as for a shopper)
  await Promise.all([
    page.waitForURL(`${pageOrigin}/checkout/complete?step=3`, { waitUntil: 'load' }),
    page.click('#checkout'),
  ]);
  const ready2 = await run('ready', () => window.harness.ready());
  await run('page', () => window.harness.page());
  await run('track', ([name, props]) => window.harness.track(name, props), [
    'Order Completed',
    {
      order_id: 'ORD-BROWSER-1',
      revenue: 129.99,
      currency: 'USD',
      products: [{ product_id: 'SKU-1', product_name: 'Widget', price: 129.99, quantity: 1 }],
    },
  ]);
  await settled({ page: 2, identify: 1, track: 1 }, 'checkout page');
  anonymousIds.push(ready2.anonymousId);

  // Anonymous ids in what was sent, as well as what the SDK reports.
  for (const r of requests) {
    if (r.preflight || !r.request_body) continue;
    try {
      const body = JSON.parse(r.request_body);
      for (const e of Array.isArray(body.batch) ? body.batch : body.type ? [body] : []) anonymousIds.push(e.anonymousId);
    } catch {
      // not JSON
    }
  }
  const distinct = [...new Set(anonymousIds)];
  const bad = requests.filter((r) => !r.preflight && !(r.status >= 200 && r.status < 300));
  const problems = [];
  if (bad.length) problems.push(`non-2xx answers: ${bad.map((r) => `${r.method} ${r.url} -> ${r.status ?? r.failure}`).join(', ')}`);
  const badPreflight = requests.filter((r) => r.preflight && (r.failure || !(r.status >= 200 && r.status < 300)));
  if (badPreflight.length) problems.push(`failed preflights: ${badPreflight.map((r) => `${r.url} -> ${r.status ?? r.failure}`).join(', ')}`);
  if (distinct.length !== 1 || !distinct[0]) problems.push(`the anonymous id did not persist across pages: ${JSON.stringify(distinct)}`);
  if (foreignRequests.length) problems.push(`requests to other hosts: ${foreignRequests.join(', ')}`);
  if (problems.length) return fail(problems.join('; '), { anonymous_ids: distinct, calls });

  finished = true;
  clearTimeout(globalTimer);
  report({ ok: true, anonymous_ids: distinct, calls });
  await cleanup();
  process.exit(0);
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
