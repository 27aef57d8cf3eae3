// Bundles the dashboard: node build.mjs OUTDIR (npm run build -- OUTDIR) writes
// OUTDIR/app.js, OUTDIR/app.css (uPlot's css included) and OUTDIR/index.html, minified.
// The output depends only on the sources and the locked packages (no timestamps).
import { build } from 'esbuild';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUTDIR');
  process.exit(2);
}
const outdir = path.resolve(out);
await mkdir(outdir, { recursive: true });
await build({
  absWorkingDir: here,
  entryPoints: [path.join(here, 'src/main.js')],
  outfile: path.join(outdir, 'app.js'),
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  legalComments: 'eof',
  sourcemap: false,
  charset: 'utf8',
  logLevel: 'warning',
});
await copyFile(path.join(here, 'index.html'), path.join(outdir, 'index.html'));
console.log(`dashboard: ${outdir}/{index.html,app.js,app.css}`);
