// Regenerates samples/*.json: what mock_collector.mjs received from each SDK run (headers that matter, decoded bodies).
//   node tests/sdk/capture_samples.mjs
import { startMockCollector } from './mock_collector.mjs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
const here = dirname(fileURLToPath(import.meta.url));
import { spawn } from 'node:child_process';
const runAsync=(cmd,args)=>new Promise(res=>{const c=spawn(cmd,args);let err='';c.stderr.on('data',d=>err+=d);c.stdout.on('data',()=>{});c.on('close',status=>res({status,stderr:err}));});
import { writeFileSync } from 'node:fs';
const KEY = 'WK_sample_1';
const keep = ['origin','content-type','content-encoding','content-length','authorization','anonymousid','sentat','x-retry-count','access-control-request-method','access-control-request-headers','user-agent','referer','sec-fetch-mode','cookie'];
const cases = [
 ['analytics-next', ['browser.mjs','--sdk','analytics-next']],
 ['analytics-next-batching', ['browser.mjs','--sdk','analytics-next','--delivery','batching']],
 ['rudderstack', ['browser.mjs','--sdk','rudderstack']],
 ['rudderstack-batching', ['browser.mjs','--sdk','rudderstack','--delivery','batching']],
 ['rudderstack-beacon', ['browser.mjs','--sdk','rudderstack','--delivery','beacon']],
 ['python-gzip', ['python_sender.py','--gzip']],
];
let port = 18900;
for (const [name, args] of cases) {
  const mock = await startMockCollector({ port: 18880 });
  const py = args[0].endsWith('.py');
  const full = py ? [join(here, args[0]), ...args.slice(1), '--host', mock.url, '--key', KEY]
                  : [join(here, args[0]), ...args.slice(1), '--relay', mock.url, '--key', KEY, '--page-port', String(port++)];
  const r = await runAsync(py ? 'python3' : 'node', full);
  if (r.status !== 0) console.log(name, 'FAILED', r.stderr);
  const recs = mock.records.map(x => ({ method: x.method, path: x.path, status: x.status,
    headers: Object.fromEntries(Object.entries(x.headers).filter(([k]) => keep.includes(k))),
    body_bytes: x.body_bytes, ...(x.decoded_bytes !== undefined && x.decoded_bytes !== x.body_bytes ? { decoded_bytes: x.decoded_bytes } : {}),
    ...(x.body !== undefined ? { body: x.body } : {}) }));
  writeFileSync(join(here, 'samples', `${name}.json`), JSON.stringify({ captured_by: 'tests/sdk/mock_collector.mjs', sdk_run: [py ? 'python3' : 'node', ...args, py ? '--host' : '--relay', 'http://127.0.0.1:18880', '--key', KEY].join(' '), requests: recs }, null, 1) + '\n');
  console.log(name, r.status, recs.length);
  await mock.close();
}
