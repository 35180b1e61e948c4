// A stand-in for the relay, for developing the SDK harness without it. It documents what the SDKs need from a collector:
//
//   * OPTIONS (CORS preflight) -> 204 with Access-Control-Allow-Origin: <the request's Origin>, Vary: Origin,
//     Access-Control-Allow-Methods: POST, GET, OPTIONS, and Access-Control-Allow-Headers echoing what the browser asked
//     for in Access-Control-Request-Headers (analytics-next asks for `authorization`; RudderStack v3 asks for
//     `anonymousid,authorization,content-type,sentat`; on retries also `x-retry-count` / `rsa-*`). A relay with a fixed
//     list must at least allow: Authorization, Content-Type, AnonymousId, SentAt, X-Retry-Count, Rsa-Recovered,
//     Rsa-Retry-Attempt, Rsa-Since-Last-Attempt, Rsa-Since-First-Attempt, Rsa-Retry-Reason.
//   * every other request -> 200 {"success":true} (application/json) with Access-Control-Allow-Origin: <Origin>, so
//     the browser lets the SDK read the answer (both SDKs only look at the status: < 400 is success), and
//     Access-Control-Expose-Headers: Retry-After (else analytics-next cannot see a 429's Retry-After).
//   * bodies with Content-Encoding: gzip (segment-analytics-python with gzip=True) are inflated before decoding.
//
// Every request is recorded: method, path (with query), headers, raw body length, decoded body (JSON if it parses,
// else text). Dump them with GET /__dump (JSON array), clear them with POST /__reset; `--dump FILE` also writes the
// array to FILE after every request.
//
//   node mock_collector.mjs --port 8787 [--host 127.0.0.1] [--dump FILE]
//        [--fail-status 500 --fail-count 2 [--retry-after SECONDS]] [--no-cors-on-post]
//
// --fail-status/--fail-count answer the first N non-OPTIONS requests with that status instead of 200 (to watch an
// SDK's retries), with a Retry-After header if asked. --no-cors-on-post leaves Access-Control-Allow-Origin off the
// POST answers (preflights still pass): the browser then hides the answer from the SDK, which sees a network error
// and retries, i.e. the collector receives duplicates. On start it prints one line: {"listening":"http://HOST:PORT"}.
import { createServer } from 'node:http';
import { writeFileSync } from 'node:fs';
import { gunzipSync, inflateSync, brotliDecompressSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

export function startMockCollector({
  host = '127.0.0.1',
  port = 0,
  dumpFile,
  failStatus,
  failCount = 0,
  retryAfter,
  corsOnPost = true,
} = {}) {
  const records = [];
  let failuresLeft = failStatus ? failCount : 0;
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const url = new URL(req.url, 'http://mock');
      if (url.pathname === '/__dump' && req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(records, null, 1));
        return;
      }
      if (url.pathname === '/__reset' && req.method === 'POST') {
        records.length = 0;
        res.writeHead(204);
        res.end();
        return;
      }
      const origin = req.headers.origin;
      // Retry-After is not a CORS-safelisted response header: without the expose header analytics-next cannot read
      // it and retries a 429 on its own short backoff instead.
      const cors = origin
        ? { 'access-control-allow-origin': origin, vary: 'Origin', 'access-control-expose-headers': 'Retry-After' }
        : {};
      let status;
      let answer = '';
      let headers = { ...cors };
      if (req.method === 'OPTIONS') {
        status = 204;
        headers = {
          ...headers,
          'access-control-allow-methods': 'POST, GET, OPTIONS',
          'access-control-allow-headers':
            req.headers['access-control-request-headers'] || 'Authorization, Content-Type',
          'access-control-max-age': '600',
        };
      } else if (failuresLeft > 0) {
        failuresLeft -= 1;
        status = failStatus;
        answer = JSON.stringify({ success: false, error: `mock failure ${failStatus}` });
        headers['content-type'] = 'application/json';
        if (retryAfter !== undefined) headers['retry-after'] = String(retryAfter);
      } else {
        status = 200;
        answer = JSON.stringify({ success: true });
        headers['content-type'] = 'application/json';
      }
      if (req.method !== 'OPTIONS' && !corsOnPost) {
        delete headers['access-control-allow-origin'];
        delete headers.vary;
        delete headers['access-control-expose-headers'];
      }
      const record = {
        at: new Date().toISOString(),
        method: req.method,
        path: req.url,
        headers: req.headers,
        body_bytes: raw.length,
        status,
      };
      if (raw.length) {
        let body = raw;
        const enc = (req.headers['content-encoding'] || '').toLowerCase();
        try {
          if (enc === 'gzip') body = gunzipSync(raw);
          else if (enc === 'deflate') body = inflateSync(raw);
          else if (enc === 'br') body = brotliDecompressSync(raw);
          record.decoded_bytes = body.length;
        } catch (e) {
          record.decode_error = String(e);
        }
        const text = body.toString('utf8');
        try {
          record.body = JSON.parse(text);
        } catch {
          record.body_text = text;
        }
      }
      records.push(record);
      if (dumpFile) writeFileSync(dumpFile, JSON.stringify(records, null, 1));
      res.writeHead(status, headers);
      res.end(answer);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      resolve({ url: `http://${host}:${actual}`, records, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const mock = await startMockCollector({
    host: opt('host', '127.0.0.1'),
    port: Number(opt('port', '0')),
    dumpFile: opt('dump'),
    failStatus: opt('fail-status') ? Number(opt('fail-status')) : undefined,
    failCount: Number(opt('fail-count', '1')),
    retryAfter: opt('retry-after'),
    corsOnPost: !args.includes('--no-cors-on-post'),
  });
  console.log(JSON.stringify({ listening: mock.url }));
  const stop = () => mock.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
