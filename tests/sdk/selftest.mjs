#!/usr/bin/env node
// Runs the harness end to end against mock_collector.mjs (no relay needed) and checks what the mock received:
//   node tests/sdk/selftest.mjs            (or: npm test, in tests/sdk)
// Cases: analytics-next (standard, batching), RudderStack (standard, batching, beacon), segment-analytics-python
// (gzip on). Python cases are skipped, and said so, when segment-analytics-python is not installed, unless CI is set.
// Ends with the line "N passed, N failed" and exits 1 if any failed.
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMockCollector } from './mock_collector.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const KEY = 'WK_selftest_1';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function run(cmd, args, timeoutMs) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const events = (records) =>
  records
    .filter((r) => r.method === 'POST' && r.body)
    .flatMap((r) => (Array.isArray(r.body.batch) ? r.body.batch : r.body.type ? [r.body] : []));

function check(cond, msg, problems) {
  if (!cond) problems.push(msg);
}

function checkBrowser(sdk, delivery, records, problems) {
  const evs = events(records);
  const types = evs.map((e) => e.type).sort().join(',');
  check(types === 'identify,page,page,track', `events received: ${types}`, problems);
  const anon = new Set(evs.map((e) => e.anonymousId));
  check(anon.size === 1, `anonymous ids: ${[...anon].join(', ')}`, problems);
  const track = evs.find((e) => e.type === 'track') || {};
  check(track.event === 'Order Completed', 'track event name', problems);
  check(track.properties?.order_id === 'ORD-BROWSER-1', 'track order_id', problems);
  check(track.userId === 'user-browser-1', 'track userId', problems);
  check(track.context?.consent?.marketing === true, 'track context.consent.marketing', problems);
  const landing = evs.find((e) => e.type === 'page');
  check(/oppref=clk_browser_42/.test(landing?.context?.page?.url || ''), 'landing page context.page.url', problems);
  const posts = records.filter((r) => r.method === 'POST' && !r.path.endsWith('/m'));
  const paths = [...new Set(posts.map((r) => r.path))].sort().join(' ');
  const expected = {
    'analytics-next/standard': '/v1/i /v1/p /v1/t',
    'analytics-next/batching': '/v1/b',
    'rudderstack/standard': '/v1/identify /v1/page /v1/track',
    'rudderstack/batching': '/v1/batch',
    'rudderstack/beacon': `/beacon/v1/batch?writeKey=${KEY}`,
  }[`${sdk}/${delivery}`];
  check(paths === expected, `paths ${paths}, expected ${expected}`, problems);
  const basic = `Basic ${Buffer.from(`${KEY}:`).toString('base64')}`;
  if (delivery !== 'beacon') {
    check(posts.every((r) => r.headers.authorization === basic), 'Authorization: Basic base64(writeKey:)', problems);
  }
}

async function browserCase(sdk, delivery) {
  const mock = await startMockCollector();
  try {
    const pagePort = await freePort();
    const args = [join(here, 'browser.mjs'), '--sdk', sdk, '--delivery', delivery, '--relay', mock.url, '--key', KEY,
      '--page-port', String(pagePort), '--timeout-ms', '45000'];
    const res = await run(process.execPath, args, 60000);
    const problems = [];
    if (res.code !== 0) problems.push(`browser.mjs exited ${res.code}: ${res.stderr.trim()}`);
    let out;
    try {
      out = JSON.parse(res.stdout.trim().split('\n').pop());
    } catch {
      problems.push(`no JSON line on stdout: ${res.stdout.slice(0, 200)}`);
    }
    if (out && !out.requests.some((r) => r.preflight) && delivery !== 'beacon') problems.push('no preflight observed');
    checkBrowser(sdk, delivery, mock.records, problems);
    return problems;
  } finally {
    await mock.close();
  }
}

async function pythonCase() {
  const mock = await startMockCollector();
  try {
    const res = await run('python3', [join(here, 'python_sender.py'), '--host', mock.url, '--key', KEY, '--gzip'], 60000);
    const problems = [];
    if (res.code !== 0) problems.push(`python_sender.py exited ${res.code}: ${res.stderr.trim()}`);
    const posts = mock.records.filter((r) => r.method === 'POST');
    check(posts.length >= 1 && posts.every((r) => r.path === '/v1/batch'), 'POST /v1/batch', problems);
    check(posts.every((r) => r.headers['content-encoding'] === 'gzip'), 'Content-Encoding: gzip', problems);
    check(posts.every((r) => r.body?.writeKey === KEY), 'body writeKey', problems);
    const evs = events(mock.records);
    check(evs.map((e) => e.type).sort().join(',') === 'identify,track', 'identify + track', problems);
    const track = evs.find((e) => e.type === 'track') || {};
    check(track.properties?.order_id === 'ORD-PY-1' && track.context?.consent?.marketing === true, 'track body', problems);
    return problems;
  } finally {
    await mock.close();
  }
}

const cases = [
  ['analytics-next standard', () => browserCase('analytics-next', 'standard')],
  ['analytics-next batching', () => browserCase('analytics-next', 'batching')],
  ['rudderstack standard', () => browserCase('rudderstack', 'standard')],
  ['rudderstack batching', () => browserCase('rudderstack', 'batching')],
  ['rudderstack beacon', () => browserCase('rudderstack', 'beacon')],
];
const hasPython = spawnSync('python3', ['-c', 'import segment.analytics'], { stdio: 'ignore' }).status === 0;
if (hasPython || process.env.CI) cases.push(['segment-analytics-python gzip', pythonCase]);
else console.log('NOTICE: segment-analytics-python is not installed; its case is skipped (pip install -r requirements.txt)');

let passed = 0;
let failed = 0;
for (const [name, fn] of cases) {
  const problems = await fn().catch((e) => [String(e)]);
  if (problems.length) {
    failed += 1;
    console.log(`FAIL ${name}: ${problems.join('; ')}`);
  } else {
    passed += 1;
    console.log(`ok   ${name}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
