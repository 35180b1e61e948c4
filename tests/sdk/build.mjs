// Turns the SDKs' npm packages into single browser scripts (IIFE, no dynamic chunks, nothing fetched from a CDN).
//
//   node build.mjs            writes dist/analytics-next.js and dist/rudderstack.js (npm run build)
//   import { buildBundles }   the same bundles in memory (browser.mjs builds them at start, so they are never stale)
//
// analytics-next: the package's ESM build; its lazy `import()`s (remote loader, plugins) are inlined by esbuild,
//   so the page never asks a CDN for a chunk. Exposed as window.SegmentAnalytics = { AnalyticsBrowser }.
// RudderStack:    '@rudderstack/analytics-js/bundled', the export with every plugin (XhrQueue, BeaconQueue, ...)
//   compiled in, instead of the default export that fetches plugins from the CDN as federated modules.
//   Exposed as window.RudderStackSDK = { RudderAnalytics }.
import { build } from 'esbuild';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export const BUNDLES = {
  'analytics-next': {
    globalName: 'SegmentAnalytics',
    contents: "export { AnalyticsBrowser } from '@segment/analytics-next';",
  },
  rudderstack: {
    globalName: 'RudderStackSDK',
    contents: "export { RudderAnalytics } from '@rudderstack/analytics-js/bundled';",
  },
};

/** name -> JavaScript source of the bundle */
export async function buildBundles(names = Object.keys(BUNDLES)) {
  const out = {};
  for (const name of names) {
    const spec = BUNDLES[name];
    if (!spec) throw new Error(`unknown bundle ${name}`);
    const result = await build({
      stdin: { contents: spec.contents, resolveDir: here, loader: 'js', sourcefile: `${name}-entry.js` },
      bundle: true,
      write: false,
      format: 'iife',
      globalName: spec.globalName,
      platform: 'browser',
      target: 'chrome100',
      minify: false,
      legalComments: 'none',
      logLevel: 'silent',
      define: { 'process.env.NODE_ENV': '"production"' },
    });
    out[name] = result.outputFiles[0].text;
  }
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const bundles = await buildBundles();
  const dist = join(here, 'dist');
  mkdirSync(dist, { recursive: true });
  for (const [name, code] of Object.entries(bundles)) {
    writeFileSync(join(dist, `${name}.js`), code);
    console.log(`dist/${name}.js ${code.length} bytes`);
  }
}
