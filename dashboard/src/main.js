// The sweep dashboard: a single-page app over sweepd's read-only JSON API
// (docs/dashboard.md). Hash routes:
//   #/              every sweep                       (pages/sweeps.js)
//   #/sweeps/NAME   one sweep (name or id)            (pages/sweep.js)
//   #/trials/ID     one trial                         (pages/trial.js)
// A page polls every 2 s while what it shows is running and redraws in place.
//
// Test hooks (tests/dashboard/browser_test.mjs asserts on these; keep them stable):
//   body[data-page]        "sweeps" | "sweep" | "trial", set when the page is ready
//   body[data-ready]       "0" while a page loads (reset on every navigation), "1" once it has
//                          fetched its data and drawn everything (also after an error, which
//                          then sets body[data-error] to the message)
//   [data-chart=ID]        every chart container; IDs: curves, traces-grad, traces-loss, fit
//                          (sweep page); trial-loss, trial-lr, trial-grad, trial-layers,
//                          trial-probes (trial page)
//   [data-series=N]        on each chart: the data series drawn (lines and point sets; not
//                          spike markers, not interval-band edges)
//   [data-spikes=N]        on charts that mark spikes (traces-grad, traces-loss, trial-grad,
//                          trial-loss): the spike markers drawn (the series' `spikes`)
//   [data-trials="1,2"]    on traces-grad / traces-loss: the trial ids overlaid
//   td.cell[data-x][data-y]  heatmap cells, one per (x, y) pair of the grid answer
//   path.pc-line           parallel coordinates: one per trial (with data-trial-id)
//   tr[data-trial-id]      the sweep page's trial table: one row per trial; its
//                          input.select checkbox selects the trial for the traces
//   tr[data-sweep]         the sweeps page: one row per sweep
//   select[data-control]   the sweep page's choices: heat-x, heat-y, heat-metric, heat-agg
//                          (heatmap), curve-group, curve-metric (curves), fit (power law)
//   body[data-updates=N]   how many live refreshes the page has drawn (polling)

import 'uplot/dist/uPlot.min.css';
import './style.css';
import { clearErrors, showError } from './api.js';
import { renderSweeps } from './pages/sweeps.js';
import { renderSweep } from './pages/sweep.js';
import { renderTrial } from './pages/trial.js';

export const POLL_MS = 2000;

// What a page gets: `alive` turns false on navigation; poll() repeats a refresh every 2 s
// (never two at once) while it returns true; own() registers something to destroy().
class PageContext {
  constructor() {
    this.alive = true;
    this.timers = new Set();
    this.owned = [];
  }

  own(thing) {
    this.owned.push(thing);
    return thing;
  }

  poll(refresh) {
    const tick = async () => {
      if (!this.alive) return;
      let again = true;
      try {
        again = await refresh();
      } catch (e) {
        console.error(e); // shown in the banner by api.js; keep polling
      }
      if (!this.alive) return;
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
      if (again) {
        const t = setTimeout(() => { this.timers.delete(t); tick(); }, POLL_MS);
        this.timers.add(t);
      }
    };
    const t = setTimeout(() => { this.timers.delete(t); tick(); }, POLL_MS);
    this.timers.add(t);
  }

  destroy() {
    this.alive = false;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const o of this.owned) {
      try {
        o.destroy();
      } catch (e) {
        console.error(e);
      }
    }
    this.owned = [];
  }
}

function parseRoute(hash) {
  const path = hash.replace(/^#/, '').replace(/^\/+/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (path[0] === 'sweeps' && path[1]) return { page: 'sweep', arg: path[1] };
  if (path[0] === 'trials' && path[1]) return { page: 'trial', arg: path[1] };
  return { page: 'sweeps', arg: null };
}

const PAGES = { sweeps: renderSweeps, sweep: renderSweep, trial: renderTrial };
let current = null;

async function route() {
  if (current) current.destroy();
  const ctx = new PageContext();
  current = ctx;
  const body = document.body;
  body.dataset.ready = '0';
  body.dataset.updates = '0';
  delete body.dataset.error;
  clearErrors();
  const { page, arg } = parseRoute(location.hash);
  for (const a of document.querySelectorAll('nav a[data-nav]')) a.classList.toggle('active', a.dataset.nav === page);
  const root = document.getElementById('app');
  root.replaceChildren();
  window.scrollTo(0, 0);
  try {
    await PAGES[page](root, arg, ctx);
  } catch (e) {
    if (!ctx.alive) return;
    if (!e.status) { // API errors are already in the banner
      console.error(e);
      showError(String(e.message || e));
    }
    body.dataset.error = String(e.message || e);
    const p = document.createElement('p');
    p.className = 'page-error';
    p.textContent = `This page could not be shown: ${e.message || e}`;
    root.append(p);
  }
  if (!ctx.alive) return;
  body.dataset.page = page;
  body.dataset.ready = '1';
}

// ?token=... has done its work once the page loaded (sweepd answered with the cookie):
// drop it from the address so it is not bookmarked or shared.
function dropTokenFromAddress() {
  const url = new URL(location.href);
  if (!url.searchParams.has('token')) return;
  url.searchParams.delete('token');
  history.replaceState(null, '', url.pathname + (url.search || '') + url.hash);
}

dropTokenFromAddress();
window.addEventListener('hashchange', route);
document.getElementById('banner')?.addEventListener('click', (e) => {
  if (e.target.classList.contains('close')) clearErrors();
});
route();
