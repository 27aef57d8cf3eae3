#!/usr/bin/env node
// The dashboard in a real browser against a real sweepd (docs/dashboard.md).
//
//   node tests/dashboard/browser_test.mjs --sweepd build/sweepd --make-db build/make_sweep_db \
//        --dashboard-dir build/dashboard --out /tmp/dash-test [--sweep NAME] [--chromium PATH]
//
// 1. make_sweep_db writes a finished synthetic sweep into OUT/dash.db; its sha256 is noted.
// 2. sweepd serves it (--http 127.0.0.1:0); headless Chromium (Debian's /usr/bin/chromium,
//    through playwright-core from dashboard/node_modules) opens every page and checks it
//    against the JSON API: the sweep is listed; one curve per depth; |lr| x |depth| heatmap
//    cells; the spike markers on the grad-norm overlay are the selected trials' spikes (also
//    after ticking one more trial); one parallel-coordinates line and one table row per
//    trial; on a trial page every chart drawn, one per-layer series per grad_norm/* metric,
//    its spikes marked; an unknown trial shows the error banner. Screenshots: OUT/sweeps.png,
//    OUT/sweep.png, OUT/trial.png.
// 3. The API: 400 for ?x=nope, 404 for an unknown trial and sweep, 405 for POST.
// 4. sweepd stops; the database file is byte-identical (the dashboard never writes).
// 5. sweepd again with --token-file: 401 without the token, 200 with Authorization: Bearer,
//    and the page opened once with ?token= renders and keeps working on the cookie.
// 6. A sweep left running (make_sweep_db --running 2): the sweep page keeps polling and
//    redrawing in place (body[data-updates] grows, the charts stay).
// Prints one line per assertion; exits 1 on any failure, 2 on bad usage, 77 (skipped) when
// /usr/bin/chromium or dashboard/node_modules is missing. sweepd is always killed; no step
// waits more than 60 s.

import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const STEP_MS = 60000;
const TOTAL_MS = 10 * 60000;

// ----- Arguments ------------------------------------------------------------------------------

function parseArgs(argv) {
  const a = { chromium: '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith('--')) usage(`unexpected argument ${k}`);
    const key = k.slice(2);
    if (key === 'help') usage();
    if (i + 1 >= argv.length) usage(`${k} needs a value`);
    a[key] = argv[++i];
  }
  for (const k of ['sweepd', 'make-db', 'dashboard-dir', 'out']) if (!a[k]) usage(`--${k} is required`);
  return a;
}

function usage(msg) {
  if (msg) console.error(`browser_test: ${msg}`);
  console.error('usage: browser_test.mjs --sweepd BIN --make-db BIN --dashboard-dir DIR --out DIR [--sweep NAME] [--chromium PATH]');
  process.exit(msg ? 2 : 0);
}

const args = parseArgs(process.argv.slice(2));
const out = path.resolve(args.out);
fs.mkdirSync(out, { recursive: true });

// ----- Reporting ----------------------------------------------------------------------------

let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
  return ok;
}
function equal(name, actual, expected, what = '') {
  return check(name, actual === expected, `${what}${what ? ' ' : ''}${JSON.stringify(actual)} (expected ${JSON.stringify(expected)})`);
}

// ----- Processes ----------------------------------------------------------------------------

const children = new Set();
function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130); });
const watchdog = setTimeout(() => {
  console.log(`FAIL the whole test: still running after ${TOTAL_MS / 1000} s`);
  killAll();
  process.exit(1);
}, TOTAL_MS);
watchdog.unref();

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: no result in ${ms / 1000} s`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function makeDb(db, extra = []) {
  for (const s of ['', '-wal', '-shm', '-journal']) fs.rmSync(db + s, { force: true });
  const r = spawnSync(args['make-db'], ['--db', db, ...extra], { encoding: 'utf8', timeout: STEP_MS });
  if (r.error || r.status !== 0) {
    throw new Error(`${args['make-db']} --db ${db} ${extra.join(' ')} failed (${r.error ? r.error.message : `exit ${r.status}`}): ${(r.stderr || '').slice(-2000)}`);
  }
  return r.stdout;
}

function sha256(file) {
  return fs.existsSync(file) ? createHash('sha256').update(fs.readFileSync(file)).digest('hex') : 'absent';
}

// The database as sweepd leaves it: the main file and its WAL when it holds anything (an
// empty WAL is no data; the -shm index never is).
function dbDigest(db) {
  const wal = `${db}-wal`;
  const walSize = fs.existsSync(wal) ? fs.statSync(wal).size : 0;
  return `${sha256(db)} wal:${walSize ? sha256(wal) : 'empty'}`;
}

// Starts sweepd on free loopback ports; resolves to {proc, base, stop()} once the HTTP port
// file appears.
async function startSweepd(name, db, extra = []) {
  const portFile = path.join(out, `${name}.http-port`);
  const grpcPortFile = path.join(out, `${name}.grpc-port`);
  fs.rmSync(portFile, { force: true });
  fs.rmSync(grpcPortFile, { force: true });
  const log = fs.openSync(path.join(out, `${name}.log`), 'w');
  const argv = ['--db', db, '--listen', '127.0.0.1:0', '--port-file', grpcPortFile,
    '--http', '127.0.0.1:0', '--http-port-file', portFile, '--dashboard-dir', path.resolve(args['dashboard-dir']), ...extra];
  const proc = spawn(args.sweepd, argv, { stdio: ['ignore', log, log] });
  children.add(proc);
  let exited = null;
  proc.on('exit', (code, sig) => { exited = sig || code; children.delete(proc); });
  const deadline = Date.now() + 30000;
  let port = '';
  while (Date.now() < deadline) {
    if (exited !== null) break;
    if (fs.existsSync(portFile)) port = fs.readFileSync(portFile, 'utf8').trim();
    if (/^\d+$/.test(port) && Number(port) > 0) break;
    await sleep(100);
  }
  if (!/^\d+$/.test(port) || Number(port) === 0) {
    proc.kill('SIGKILL');
    const text = fs.readFileSync(path.join(out, `${name}.log`), 'utf8').slice(-2000);
    throw new Error(`sweepd ${argv.join(' ')} did not write ${portFile} (${exited !== null ? `exited: ${exited}` : 'timeout'}): ${text}`);
  }
  const base = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (exited !== null) return exited;
    proc.kill('SIGTERM');
    const t0 = Date.now();
    while (exited === null && Date.now() - t0 < 15000) await sleep(50);
    if (exited === null) {
      proc.kill('SIGKILL');
      while (exited === null) await sleep(50);
      return 'SIGKILL (did not stop on SIGTERM in 15 s)';
    }
    return exited;
  };
  return { proc, base, stop };
}

async function http(base, p, opts = {}) {
  const res = await fetch(base + p, { ...opts, signal: AbortSignal.timeout(30000) });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: res.status, json, text, type: res.headers.get('content-type') || '' };
}

async function api(base, p, opts) {
  const r = await http(base, `/api/${p}`, opts);
  if (r.status !== 200) throw new Error(`GET /api/${p}: ${r.status} ${r.text.slice(0, 300)}`);
  return r.json;
}

// ----- The browser --------------------------------------------------------------------------

// Missing prerequisites exit 77 (CTest's SKIP_RETURN_CODE) with what to install.
function skip(why) {
  console.log(`SKIP ${why}`);
  process.exit(77);
}
if (!fs.existsSync(args.chromium)) skip(`no browser at ${args.chromium} (apt-get install chromium)`);
const require = createRequire(path.join(here, '..', '..', 'dashboard', 'package.json'));
let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  skip(`playwright-core is not installed (cd dashboard && npm ci): ${e.message.split('\n')[0]}`);
}

async function launch() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sweep-dash-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: args.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
    viewport: { width: 1400, height: 900 },
    timeout: STEP_MS,
  });
  context.setDefaultTimeout(STEP_MS);
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  const close = async () => {
    await withTimeout(context.close(), 20000, 'closing chromium').catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { context, page, errors, close };
}

// Opens base/#hash (or any address) and waits for the page to say it has drawn everything.
async function open(page, url, expectedPage) {
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: STEP_MS });
  await page.waitForFunction(
    (p) => document.body.dataset.ready === '1' && document.body.dataset.page === p,
    expectedPage, { timeout: STEP_MS, polling: 100 });
  return page.evaluate(() => ({
    error: document.body.dataset.error || '',
    banner: [...document.querySelectorAll('#banner .msg')].map((m) => m.textContent),
  }));
}

// Waits until fn(arg) (in the page) is true, or 10 s; returns the last value of probe(arg).
async function settle(page, fn, arg, probe) {
  await page.waitForFunction(fn, arg, { timeout: 10000, polling: 100 }).catch(() => {});
  return page.evaluate(probe, arg);
}

const attr = (sel, name) => `(() => { const e = document.querySelector(${JSON.stringify(sel)}); return e ? e.getAttribute(${JSON.stringify(name)}) : null; })()`;

async function chartAttr(page, id, name) {
  const v = await page.evaluate(attr(`[data-chart="${id}"]`, name));
  return v === null ? null : Number(v);
}

async function gradSpikesOf(base, ids) {
  let n = 0;
  for (const id of ids) {
    const t = await api(base, `trials/${id}`);
    n += (t.spikes || []).filter((s) => s.name === 'optim/grad_norm').length;
  }
  return n;
}

// ----- The test -----------------------------------------------------------------------------

async function mainRun(db) {
  const before = dbDigest(db);
  const sweepd = await startSweepd('sweepd', db);
  const { base } = sweepd;
  console.log(`sweepd at ${base} (log ${path.join(out, 'sweepd.log')})`);
  const browser = await launch();
  const { page } = browser;
  try {
    // The truth, from the API.
    const { sweeps } = await api(base, 'sweeps');
    check('api lists a sweep', sweeps.length > 0, `${sweeps.length} sweep(s)`);
    const name = args.sweep || sweeps[0].name;
    const sweep = await api(base, `sweeps/${encodeURIComponent(name)}`);
    const { trials } = await api(base, `sweeps/${encodeURIComponent(name)}/trials`);
    const param = (k) => (sweep.params || []).find((p) => p.key === k);
    const depths = param('model.n_layers')?.values || [];
    const lrs = param('optim.lr')?.values || [];
    check('the sweep varies model.n_layers and optim.lr', depths.length > 0 && lrs.length > 0, `depths ${JSON.stringify(depths)}, lrs ${JSON.stringify(lrs)}`);

    // Sweeps page.
    let st = await open(page, `${base}/#/`, 'sweeps');
    equal('sweeps page: no error', st.error, '');
    equal('sweeps page: no error banner', st.banner.length, 0, st.banner.join(' | '));
    const listed = await page.evaluate((n) => !!document.querySelector(`tr[data-sweep="${CSS.escape(n)}"] a`), name);
    check('sweeps page lists the sweep', listed, name);
    const rows = await page.evaluate(() => document.querySelectorAll('tr[data-sweep]').length);
    equal('sweeps page: one row per sweep', rows, sweeps.length);
    await page.screenshot({ path: path.join(out, 'sweeps.png'), fullPage: true });

    // Sweep page, reached by clicking the link.
    await page.click(`tr[data-sweep="${name}"] a`);
    await page.waitForFunction(() => document.body.dataset.ready === '1' && document.body.dataset.page === 'sweep', null, { timeout: STEP_MS, polling: 100 });
    st = await page.evaluate(() => ({ error: document.body.dataset.error || '', banner: [...document.querySelectorAll('#banner .msg')].map((m) => m.textContent) }));
    equal('sweep page: no error', st.error, '');
    equal('sweep page: no error banner', st.banner.length, 0, st.banner.join(' | '));

    // Heatmap with x = lr, y = depth.
    await page.selectOption('select[data-control="heat-x"]', 'optim.lr');
    await page.selectOption('select[data-control="heat-y"]', 'model.n_layers');
    const wantCells = lrs.length * depths.length;
    const cells = await settle(page, (n) => document.querySelectorAll('td.cell').length === n, wantCells,
      () => [...document.querySelectorAll('td.cell')].map((c) => [c.dataset.x, c.dataset.y]));
    equal('heatmap cells = |lr| x |depth|', cells.length, wantCells, `${lrs.length} x ${depths.length}:`);
    const xs = new Set(cells.map((c) => Number(c[0])));
    const ys = new Set(cells.map((c) => Number(c[1])));
    check('heatmap cells cover every lr and depth', lrs.every((v) => xs.has(v)) && depths.every((v) => ys.has(v)),
      `x ${JSON.stringify([...xs])}, y ${JSON.stringify([...ys])}`);

    // One curve per depth.
    await page.selectOption('select[data-control="curve-group"]', 'model.n_layers');
    const curves = await settle(page, (n) => document.querySelector('[data-chart="curves"]')?.dataset.series === String(n), depths.length,
      () => Number(document.querySelector('[data-chart="curves"]')?.dataset.series));
    equal('metric-vs-lr curves = distinct depths', curves, depths.length);

    // Traces: the spike markers are the selected trials' grad-norm spikes.
    const selected = await page.evaluate(() => [...document.querySelectorAll('tr[data-trial-id] input.select:checked')].map((c) => Number(c.closest('tr').dataset.trialId)));
    const overlaid = String(await page.evaluate(attr('[data-chart="traces-grad"]', 'data-trials')) || '').split(',').filter(Boolean).map(Number);
    check('traces: some trials selected by default', selected.length > 0, `trials ${selected.join(', ')}`);
    equal('traces: the overlay shows the ticked trials', JSON.stringify([...overlaid].sort((a, b) => a - b)), JSON.stringify([...selected].sort((a, b) => a - b)));
    equal('traces: one grad-norm line per selected trial', await chartAttr(page, 'traces-grad', 'data-series'), selected.length);
    equal('traces: one loss line per selected trial', await chartAttr(page, 'traces-loss', 'data-series'), selected.length);
    const wantSpikes = await gradSpikesOf(base, selected);
    equal('traces: spike markers = spikes of the selected trials', await chartAttr(page, 'traces-grad', 'data-spikes'), wantSpikes);
    // Tick one more trial (one with spikes when there is one) and check again.
    const extra = trials.filter((t) => !selected.includes(t.id)).sort((a, b) => (b.spikes || 0) - (a.spikes || 0))[0];
    if (extra) {
      await page.check(`tr[data-trial-id="${extra.id}"] input.select`);
      const want = wantSpikes + (await gradSpikesOf(base, [extra.id]));
      const got = await settle(page, (n) => document.querySelector('[data-chart="traces-grad"]')?.dataset.series === String(n), selected.length + 1,
        () => [document.querySelector('[data-chart="traces-grad"]').dataset.series, document.querySelector('[data-chart="traces-grad"]').dataset.spikes].map(Number));
      equal(`traces: ticking trial ${extra.id} adds its line`, got[0], selected.length + 1);
      equal(`traces: ticking trial ${extra.id} adds its ${want - wantSpikes} spike(s)`, got[1], want);
    }

    // Parallel coordinates, the trial table, the fit.
    equal('parallel coordinates: one line per trial', await page.evaluate(() => document.querySelectorAll('path.pc-line').length), trials.length);
    const tableIds = await page.evaluate(() => [...document.querySelectorAll('tr[data-trial-id]')].map((r) => Number(r.dataset.trialId)));
    equal('trial table: one row per trial', tableIds.length, trials.length);
    equal('trial table: the API\'s trials', JSON.stringify([...tableIds].sort((a, b) => a - b)), JSON.stringify(trials.map((t) => t.id).sort((a, b) => a - b)));
    const fitSeries = await chartAttr(page, 'fit', 'data-series');
    check('analysis: the power-law chart is drawn', fitSeries !== null && fitSeries > 0, `data-series ${fitSeries}`);
    // Sorting by clicking a header keeps every row.
    await page.click('table.trials th[data-key="id"]');
    const sorted = await page.evaluate(() => [...document.querySelectorAll('tr[data-trial-id]')].map((r) => Number(r.dataset.trialId)));
    check('trial table: sorted by id after a click on its header', sorted.length === trials.length && sorted.every((v, i) => i === 0 || sorted[i - 1] <= v), sorted.slice(0, 6).join(', '));
    await page.screenshot({ path: path.join(out, 'sweep.png'), fullPage: true });

    // Trial page: the trial with the most spikes, reached from its row.
    const pick = [...trials].sort((a, b) => (b.spikes || 0) - (a.spikes || 0) || a.id - b.id)[0];
    const trial = await api(base, `trials/${pick.id}`);
    await page.click(`tr[data-trial-id="${pick.id}"] a`);
    await page.waitForFunction(() => document.body.dataset.ready === '1' && document.body.dataset.page === 'trial', null, { timeout: STEP_MS, polling: 100 });
    st = await page.evaluate(() => ({ error: document.body.dataset.error || '', banner: [...document.querySelectorAll('#banner .msg')].map((m) => m.textContent) }));
    equal(`trial ${pick.id} page: no error`, st.error, '');
    equal(`trial ${pick.id} page: no error banner`, st.banner.length, 0, st.banner.join(' | '));
    const metrics = trial.metrics || [];
    const charts = { 'trial-loss': ['loss/out', 'loss/val'], 'trial-lr': ['optim/lr'], 'trial-grad': ['optim/grad_norm'] };
    for (const [id, names] of Object.entries(charts)) {
      const want = names.filter((n) => metrics.includes(n)).length;
      const got = await chartAttr(page, id, 'data-series');
      check(`trial ${pick.id}: ${id} drawn`, got > 0 && got === want, `data-series ${got}, logged ${want} of ${names.join(', ')}`);
    }
    const layerMetrics = metrics.filter((m) => m.startsWith('grad_norm/')).length;
    equal(`trial ${pick.id}: per-layer series = grad_norm/* metrics`, await chartAttr(page, 'trial-layers', 'data-series'), layerMetrics);
    check(`trial ${pick.id}: it has per-layer grad norms`, layerMetrics > 0, `${layerMetrics}`);
    const probeMetrics = metrics.filter((m) => m.startsWith('probe/')).length;
    equal(`trial ${pick.id}: probe series = probe/* metrics`, await chartAttr(page, 'trial-probes', 'data-series'), probeMetrics);
    const trialSpikes = (trial.spikes || []).filter((s) => s.name === 'optim/grad_norm').length;
    equal(`trial ${pick.id}: grad-norm spike markers = its spikes`, await chartAttr(page, 'trial-grad', 'data-spikes'), trialSpikes);
    check(`trial ${pick.id}: has spikes to mark`, trialSpikes > 0, `${trialSpikes}`);
    const lossSpikes = (trial.spikes || []).filter((s) => s.name === 'loss/out' || s.name === 'loss/val').length;
    equal(`trial ${pick.id}: loss spike markers = its loss spikes`, await chartAttr(page, 'trial-loss', 'data-spikes'), lossSpikes);
    await page.screenshot({ path: path.join(out, 'trial.png'), fullPage: true });

    // A diverged trial (non-finite values) renders too.
    const diverged = trials.find((t) => t.state === 'diverged');
    if (diverged) {
      st = await open(page, `${base}/#/trials/${diverged.id}`, 'trial');
      check(`diverged trial ${diverged.id} page renders`, st.error === '' && st.banner.length === 0, st.error || st.banner.join(' | '));
    }

    check('browser: no script errors on the pages', browser.errors.length === 0, browser.errors.join(' | '));

    // An unknown trial: the API's 404 message in the banner, the page still settles.
    st = await open(page, `${base}/#/trials/987654321`, 'trial');
    check('unknown trial: error banner with the 404', st.banner.some((m) => m.startsWith('404')) && st.error !== '', st.banner.join(' | '));

    // The API's errors.
    let r = await http(base, `/api/sweeps/${encodeURIComponent(name)}/grid?x=nope`);
    check('api: ?x=nope is 400 with a JSON error naming x', r.status === 400 && typeof r.json?.error === 'string' && /\bx\b/.test(r.json.error), `${r.status} ${r.text.slice(0, 200)}`);
    r = await http(base, '/api/trials/987654321');
    check('api: unknown trial is 404 with a JSON error', r.status === 404 && typeof r.json?.error === 'string', `${r.status} ${r.text.slice(0, 200)}`);
    r = await http(base, '/api/sweeps/no_such_sweep_x');
    check('api: unknown sweep is 404 with a JSON error', r.status === 404 && typeof r.json?.error === 'string', `${r.status} ${r.text.slice(0, 200)}`);
    r = await http(base, '/api/sweeps', { method: 'POST', body: '{}' });
    check('api: POST is 405', r.status === 405, `${r.status} ${r.text.slice(0, 200)}`);
  } finally {
    await browser.close();
    const how = await sweepd.stop();
    check('sweepd stops on SIGTERM', how === 0 || how === 'SIGTERM', String(how));
  }
  equal('database unchanged after every page and call (sha256)', dbDigest(db), before);
}

async function tokenRun(db) {
  const before = dbDigest(db);
  const token = randomBytes(24).toString('hex');
  const tokenFile = path.join(out, 'token');
  fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const sweepd = await startSweepd('sweepd-token', db, ['--token-file', tokenFile]);
  const { base } = sweepd;
  const browser = await launch();
  try {
    let r = await http(base, '/api/sweeps');
    check('token: /api/sweeps without it is 401 with a JSON error', r.status === 401 && typeof r.json?.error === 'string', `${r.status} ${r.text.slice(0, 200)}`);
    r = await http(base, '/api/sweeps', { headers: { Authorization: 'Bearer wrong' } });
    equal('token: a wrong token is 401', r.status, 401);
    r = await http(base, '/');
    equal('token: the page without it is 401', r.status, 401);
    r = await http(base, '/api/sweeps', { headers: { Authorization: `Bearer ${token}` } });
    check('token: Authorization: Bearer is 200', r.status === 200 && Array.isArray(r.json?.sweeps), `${r.status}`);
    const name = args.sweep || r.json?.sweeps?.[0]?.name;
    const { page } = browser;
    let st = await open(page, `${base}/?token=${token}#/`, 'sweeps');
    const listed = await page.evaluate((n) => !!document.querySelector(`tr[data-sweep="${CSS.escape(n)}"]`), name);
    check('token: ?token= renders the sweeps page', listed && st.error === '' && st.banner.length === 0, st.error || st.banner.join(' | '));
    check('token: the token leaves the address', !page.url().includes(token), page.url().replace(token, 'TOKEN'));
    const cookies = await browser.context.cookies(base);
    const c = cookies.find((k) => k.name === 'sweep_token');
    check('token: cookie sweep_token, HttpOnly, SameSite=Strict', !!c && c.httpOnly && c.sameSite === 'Strict', c ? `httpOnly ${c.httpOnly}, sameSite ${c.sameSite}` : 'no cookie');
    st = await open(page, `${base}/#/sweeps/${encodeURIComponent(name)}`, 'sweep');
    check('token: a later load without ?token= works on the cookie', st.error === '' && st.banner.length === 0, st.error || st.banner.join(' | '));
  } finally {
    await browser.close();
    await sweepd.stop();
  }
  equal('database unchanged after the token run (sha256)', dbDigest(db), before);
}

// A sweep with trials left running: the page keeps polling and redraws in place.
async function liveRun(db) {
  makeDb(db, ['--running', '2', '--lease-ttl', '1e9', '--seeds', '1', '--steps', '200']);
  const sweepd = await startSweepd('sweepd-live', db);
  const browser = await launch();
  try {
    const { sweeps } = await api(sweepd.base, 'sweeps');
    const live = sweeps.find((s) => (s.counts?.running || 0) + (s.counts?.leased || 0) > 0 || s.state === 'running');
    if (!check('live: make_sweep_db --running leaves a sweep running', !!live, JSON.stringify(sweeps.map((s) => [s.name, s.state, s.counts])))) return;
    const st = await open(browser.page, `${sweepd.base}/#/sweeps/${encodeURIComponent(live.name)}`, 'sweep');
    equal('live: sweep page renders', st.error, '');
    const handle = await browser.page.$('[data-chart="traces-grad"] canvas');
    const updates = await settle(browser.page, () => Number(document.body.dataset.updates) >= 2, null, () => Number(document.body.dataset.updates));
    check('live: the page polls (2 refreshes in 10 s)', updates >= 2, `body[data-updates] ${updates}`);
    const same = handle ? await handle.evaluate((c) => c.isConnected) : false;
    check('live: charts redrawn in place (same canvas)', same, handle ? '' : 'no canvas in traces-grad');
    equal('live: still ready after polling', await browser.page.evaluate(() => document.body.dataset.ready), '1');
  } finally {
    await browser.close();
    await sweepd.stop();
  }
}

async function main() {
  const db = path.join(out, 'dash.db');
  console.log(`make_sweep_db --db ${db}`);
  makeDb(db);
  await withTimeout(mainRun(db), 5 * 60000, 'the main run');
  await withTimeout(tokenRun(db), 2 * 60000, 'the token run');
  await withTimeout(liveRun(path.join(out, 'live.db')), 2 * 60000, 'the live run');
}

try {
  await main();
} catch (e) {
  check('the test ran to the end', false, e.stack || String(e));
}
killAll();
console.log(`${passed} passed, ${failed} failed; screenshots in ${out}`);
process.exit(failed ? 1 : 0);
