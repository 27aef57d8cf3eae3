// The sweep page (#/sweeps/NAME): header with progress; heatmap over any two parameters;
// metric-vs-lr curves, one per value of another parameter; grad-norm and loss traces of the
// trials ticked in the table (default: the best trial of each group), spikes marked; the
// analysis (groups, power-law fit log-log against published lrs); parallel coordinates;
// the sortable trial table; events and the spec. Polls every 2 s while the sweep runs.

import { get } from '../api.js';
import { LineChart, color, spikeMarkers } from '../charts.js';
import { duration, num, param, shortKey, time } from '../format.js';
import { renderHeatmap } from '../heatmap.js';
import { renderParallel } from '../parallel.js';
import { el, SortableTable } from '../table.js';
import { doneCount, isLive, progressBar, stateBadge } from './sweeps.js';
import { AnalysisView } from './analysis.js';

const SEED_KEYS = ['seed', 'model.seed', 'data.seed'];
const LR_KEY = 'optim.lr';
const TRACE_NAMES = ['optim/grad_norm', 'loss/out'];
const LIVE_STATES = ['running', 'leased', 'pending'];
const DEFAULT_TRACES = 4;
const ANALYSIS_MIN_MS = 10000;

function section(root, title, ...extra) {
  const body = el('div', { class: 'section-body' });
  const head = el('div', { class: 'section-head' }, el('h2', {}, title), el('div', { class: 'controls' }, ...extra));
  root.append(el('section', { class: 'card' }, head, body));
  return body;
}

function select(label, control, options, value, onChange) {
  const s = el('select', { 'aria-label': label, 'data-control': control });
  for (const o of options) s.append(el('option', { value: o.value, selected: o.value === value }, o.label));
  s.addEventListener('change', () => onChange(s.value));
  return el('label', { class: 'ctl' }, `${label} `, s);
}

function checkbox(label, checked, onChange) {
  const c = el('input', { type: 'checkbox', checked });
  c.addEventListener('change', () => onChange(c.checked));
  return el('label', { class: 'ctl' }, c, ` ${label}`);
}

function isFiniteNum(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

function better(goal) {
  return goal === 'maximize' ? (a, b) => a > b : (a, b) => a < b;
}

function paramsText(params, keys) {
  return keys.filter((k) => k in params).map((k) => `${shortKey(k)}=${param(k, params[k])}`).join(' ');
}

export async function renderSweep(root, name, ctx) {
  const enc = encodeURIComponent(name);
  let [sweep, trialsAns] = await Promise.all([get(`sweeps/${enc}`), get(`sweeps/${enc}/trials`)]);
  if (!ctx.alive) return;
  const params = sweep.params || [];
  const keys = params.map((p) => p.key);
  const numericKeys = params.filter((p) => p.numeric).map((p) => p.key);
  const lrKey = keys.includes(LR_KEY) ? LR_KEY : numericKeys[0] || keys[0] || null;
  const groupCandidates = keys.filter((k) => k !== lrKey && !SEED_KEYS.includes(k));
  const metricNames = sweep.metrics || [];

  // User choices (kept across live refreshes).
  const state = {
    hx: lrKey,
    hy: groupCandidates[0] || keys.find((k) => k !== lrKey) || '',
    hmetric: '',
    agg: 'mean',
    group: groupCandidates[0] || '',
    cmetric: '',
    gradLog: true,
    lossLog: false,
    selected: null, // Set of trial ids once chosen
  };

  // ----- Header -----
  const header = el('div', { class: 'page-head' });
  root.append(header);
  function renderHeader() {
    const c = sweep.counts || {};
    const best = sweep.best;
    header.replaceChildren(
      el('div', { class: 'crumbs' }, el('a', { href: '#/' }, 'sweeps'), ' / '),
      el('h1', {}, sweep.name, ' ', stateBadge(sweep.state)),
      el('div', { class: 'facts' },
        fact('method', sweep.method),
        fact('metric', `${sweep.metric} (${sweep.goal})`),
        fact('trials', `${doneCount(c)} of ${sweep.trials} finished`),
        fact('best', best ? el('span', {}, el('b', {}, num(best.value, 5)), ' ', el('a', { href: `#/trials/${best.trial_id}` }, `#${best.trial_id}`), ' ', el('span', { class: 'muted' }, paramsText(best.params || {}, Object.keys(best.params || {})))) : '–'),
        fact('started', time(sweep.started_at ?? sweep.created_at)),
        fact('elapsed', duration(sweep.elapsed_s)),
        fact('ETA', sweep.eta_s === null || sweep.eta_s === undefined ? '–' : duration(sweep.eta_s))),
      el('div', { class: 'progress-wide' }, progressBar(c, sweep.trials),
        el('div', { class: 'legend small' }, Object.entries(c).filter(([, v]) => v).map(([k, v]) => el('span', { class: 'lg' }, el('i', { class: `sw st-${k}` }), `${k} ${v}`)))),
    );
  }
  renderHeader();

  const metricOptions = [{ value: '', label: `${sweep.metric} (final)` }, ...metricNames.map((m) => ({ value: m, label: `${m} (last)` }))];
  const keyOptions = keys.map((k) => ({ value: k, label: k }));

  // ----- Heatmap -----
  const heatBody = section(root, 'Heatmap',
    select('x', 'heat-x', keyOptions, state.hx, (v) => { state.hx = v; refreshHeatmap(); }),
    select('y', 'heat-y', [{ value: '', label: '(none)' }, ...keyOptions], state.hy, (v) => { state.hy = v; refreshHeatmap(); }),
    select('metric', 'heat-metric', metricOptions, state.hmetric, (v) => { state.hmetric = v; refreshHeatmap(); }),
    select('agg', 'heat-agg', ['mean', 'median', 'min', 'max'].map((a) => ({ value: a, label: a })), state.agg, (v) => { state.agg = v; refreshHeatmap(); }));
  heatBody.classList.add('scroll-x');
  let heatSeq = 0; // a newer request wins over a slower older one
  async function refreshHeatmap() {
    if (!state.hx) { heatBody.textContent = 'No parameter varies in this sweep.'; return; }
    const seq = ++heatSeq;
    const grid = await get(`sweeps/${enc}/grid`, { x: state.hx, y: state.hy === state.hx ? '' : state.hy, metric: state.hmetric, agg: state.agg });
    if (!ctx.alive || seq !== heatSeq) return;
    const goal = state.hmetric && state.hmetric !== sweep.metric ? 'minimize' : sweep.goal;
    renderHeatmap(heatBody, grid, goal, (cell) => {
      if (cell.trials && cell.trials.length) selectTrials(cell.trials);
    });
  }

  // ----- Metric vs lr curves -----
  const curvesBody = section(root, `Metric vs ${lrKey ? shortKey(lrKey) : 'lr'}`,
    select('one curve per', 'curve-group', [{ value: '', label: '(none)' }, ...groupCandidates.concat(keys.filter((k) => SEED_KEYS.includes(k))).map((k) => ({ value: k, label: k }))], state.group,
      (v) => { state.group = v; refreshCurves(); }),
    select('metric', 'curve-metric', metricOptions, state.cmetric, (v) => { state.cmetric = v; refreshCurves(); }));
  const curvesEl = el('div');
  curvesBody.append(curvesEl);
  const curves = ctx.own(new LineChart(curvesEl, { id: 'curves', xLabel: lrKey || '', yLabel: '', logX: lrKey ? numericKeys.includes(lrKey) && allPositive(params.find((p) => p.key === lrKey)) : false, height: 260 }));
  let curvesSeq = 0;
  async function refreshCurves() {
    if (!lrKey) { curves.update([], 'No parameter varies in this sweep.'); return; }
    const seq = ++curvesSeq;
    const grid = await get(`sweeps/${enc}/grid`, { x: lrKey, y: state.group, metric: state.cmetric });
    if (!ctx.alive || seq !== curvesSeq) return;
    curves.opts.yLabel = grid.metric;
    const byKey = new Map(grid.cells.map((c) => [`${c.x}|${c.y}`, c]));
    const series = grid.ys.map((y, i) => ({
      label: y === null ? grid.metric : `${shortKey(grid.y)}=${param(grid.y, y)}`,
      x: grid.xs,
      y: grid.xs.map((x) => { const c = byKey.get(`${x}|${y}`); return c && isFiniteNum(c.value) ? c.value : null; }),
      color: color(i),
      showPoints: true,
      width: 2,
    }));
    const any = series.some((c) => c.y.some((v) => v !== null));
    curves.update(any ? series : [], 'no trial has a value yet');
  }

  // ----- Traces -----
  const tracesBody = section(root, 'Traces of the selected trials',
    checkbox('log grad norm', state.gradLog, (v) => { state.gradLog = v; gradChart.opts.logY = v; drawTraces(); }),
    checkbox('log loss', state.lossLog, (v) => { state.lossLog = v; lossChart.opts.logY = v; drawTraces(); }));
  const tracesNote = el('p', { class: 'muted small' });
  const gradEl = el('div');
  const lossEl = el('div');
  tracesBody.append(tracesNote, el('div', { class: 'grid2' }, gradEl, lossEl));
  const gradChart = ctx.own(new LineChart(gradEl, { id: 'traces-grad', title: 'optim/grad_norm (● spikes)', xLabel: 'step', logY: state.gradLog, markers: true, height: 260 }));
  const lossChart = ctx.own(new LineChart(lossEl, { id: 'traces-loss', title: 'loss/out', xLabel: 'step', logY: state.lossLog, markers: true, height: 260 }));
  const seriesCache = new Map(); // trial id -> {state, last_step, series}

  async function fetchTraces() {
    const ids = [...state.selected];
    await Promise.all(ids.map(async (id) => {
      const t = trialById(id);
      const cached = seriesCache.get(id);
      if (cached && t && cached.state === t.state && cached.last_step === t.last_step && !LIVE_STATES.includes(t.state)) return;
      try {
        const ans = await get(`trials/${id}/series`, { names: TRACE_NAMES });
        seriesCache.set(id, { state: t?.state, last_step: t?.last_step, series: ans.series });
      } catch (e) {
        console.error(e); // in the banner; the other trials still draw
      }
    }));
  }

  function drawTraces() {
    const ids = [...state.selected].filter((id) => seriesCache.has(id));
    const grad = [];
    const loss = [];
    const groupKeys = keys.filter((k) => !SEED_KEYS.includes(k));
    ids.forEach((id, i) => {
      const t = trialById(id);
      const label = `#${id} ${t ? paramsText(t.params, groupKeys) : ''}`.trim();
      const series = seriesCache.get(id).series;
      for (const [name, out] of [['optim/grad_norm', grad], ['loss/out', loss]]) {
        const s = series.find((x) => x.name === name);
        if (!s) continue;
        out.push({ label, x: s.steps, y: s.values, color: color(i) });
        out.push(spikeMarkers(`#${id} spikes`, s.spikes, color(i))); // empty ones too: see charts.js
      }
    });
    gradEl.dataset.trials = ids.join(',');
    lossEl.dataset.trials = ids.join(',');
    gradChart.update(grad, ids.length ? 'no grad norm logged' : 'tick trials in the table below');
    lossChart.update(loss, ids.length ? 'no loss logged' : 'tick trials in the table below');
    tracesNote.textContent = ids.length
      ? `${ids.length} trial(s) overlaid: tick or untick them in the trial table, or click a heatmap cell to show its trials.`
      : 'No trial selected: tick trials in the trial table below.';
  }

  let tracesSeq = 0;
  async function refreshTraces() {
    const seq = ++tracesSeq;
    await fetchTraces();
    if (ctx.alive && seq === tracesSeq) drawTraces();
  }

  function selectTrials(ids) {
    state.selected = new Set(ids);
    table.renderBody();
    refreshTraces();
  }

  // ----- Analysis -----
  const analysisBody = section(root, 'Analysis');
  const analysis = ctx.own(new AnalysisView(analysisBody));
  // Recomputed only when more trials finished, and at most every 10 s while the sweep runs
  // (sweepd computes it on the fly until it is stored).
  let analysisDone = -1;
  let analysisAt = 0;
  async function refreshAnalysis() {
    const finished = doneCount(sweep.counts || {});
    if (finished === analysisDone) return;
    if (isLive(sweep) && Date.now() - analysisAt < ANALYSIS_MIN_MS) return;
    analysisDone = finished;
    analysisAt = Date.now();
    let ans;
    try {
      ans = await get(`sweeps/${enc}/analysis`);
    } catch (e) {
      analysis.failed(e.message);
      return;
    }
    if (!ctx.alive) return;
    analysis.update(ans);
  }

  // ----- Parallel coordinates -----
  const pcBody = section(root, 'Parallel coordinates');
  pcBody.classList.add('scroll-x');
  function drawParallel() {
    renderParallel(pcBody, params, trialsAns.trials, { label: sweep.metric, goal: sweep.goal, value: (t) => metricOf(t, 'final') },
      (t) => { location.hash = `#/trials/${t.id}`; });
  }

  // ----- Trial table -----
  const tableBody = section(root, 'Trials');
  tableBody.classList.add('scroll-x');
  const goalSign = sweep.goal === 'maximize' ? -1 : 1;
  const table = new SortableTable(tableBody, {
    cls: 'trials',
    sort: { key: 'final', dir: goalSign },
    rowAttrs: (t) => ({ 'data-trial-id': t.id, class: state.selected?.has(t.id) ? 'selected' : null }),
    columns: [
      { key: 'sel', label: '', sortable: false, title: 'overlay in the traces',
        render: (t) => {
          const c = el('input', { type: 'checkbox', class: 'select', checked: state.selected?.has(t.id), 'aria-label': `select trial ${t.id}` });
          c.addEventListener('change', () => {
            if (c.checked) state.selected.add(t.id); else state.selected.delete(t.id);
            c.closest('tr').classList.toggle('selected', c.checked);
            refreshTraces();
          });
          return c;
        } },
      { key: 'id', label: 'id', value: (t) => t.id, render: (t) => el('a', { href: `#/trials/${t.id}` }, `#${t.id}`), cls: 'num' },
      ...keys.map((k) => ({ key: `p:${k}`, label: shortKey(k), title: k, value: (t) => t.params[k], render: (t) => param(k, t.params[k]), cls: 'num' })),
      { key: 'state', label: 'state', value: (t) => t.state, render: (t) => stateBadge(t.state) },
      { key: 'final', label: `${sweep.metric}`, value: (t) => metricOf(t, 'final'), render: (t) => metricCell(t, 'final'), cls: 'num' },
      { key: 'best', label: 'best', value: (t) => metricOf(t, 'best'), render: (t) => metricCell(t, 'best'), cls: 'num' },
      { key: 'last_step', label: 'step', value: (t) => t.last_step, cls: 'num' },
      { key: 'spikes', label: 'spikes', value: (t) => t.spikes, render: (t) => (t.spikes ? el('span', { class: 'warn' }, String(t.spikes)) : '0'), cls: 'num' },
      { key: 'diverged', label: 'diverged at', value: (t) => t.diverged_step, render: (t) => (t.diverged_step === null || t.diverged_step === undefined ? '–' : el('span', { class: 'bad', title: t.divergence_reason || '' }, String(t.diverged_step))), cls: 'num' },
      { key: 'attempt', label: 'att.', value: (t) => t.attempt, cls: 'num' },
      { key: 'duration', label: 'time', value: (t) => dur(t), render: (t) => duration(dur(t)), cls: 'num' },
      { key: 'note', label: 'note', value: (t) => t.error || t.stop_reason || t.divergence_reason || '', render: (t) => el('span', { class: 'small muted ellipsis', title: t.error || t.stop_reason || t.divergence_reason || '' }, t.error || t.stop_reason || t.divergence_reason || '') },
    ],
  });

  // ----- Events and spec -----
  const eventsBody = section(root, 'Events (latest 50)');
  function drawEvents() {
    const rows = (sweep.events || []).map((e) => el('tr', {},
      el('td', { class: 'nowrap' }, time(e.time)), el('td', {}, e.kind),
      el('td', {}, e.trial_id ? el('a', { href: `#/trials/${e.trial_id}` }, `#${e.trial_id}`) : ''),
      el('td', { class: 'small' }, e.detail || '')));
    eventsBody.classList.add('scroll-y');
    eventsBody.replaceChildren(rows.length
      ? el('table', { class: 'table compact' }, el('thead', {}, el('tr', {}, el('th', {}, 'time'), el('th', {}, 'kind'), el('th', {}, 'trial'), el('th', {}, 'detail'))), el('tbody', {}, rows))
      : el('p', { class: 'muted' }, 'No events.'));
  }
  const specBody = section(root, 'Spec');
  specBody.append(el('details', {}, el('summary', {}, 'spec text'), el('pre', { class: 'code' }, sweep.spec || '')));

  // ----- Wiring -----
  function trialById(id) {
    return trialsAns.trials.find((t) => t.id === id);
  }

  function defaultSelection() {
    const trials = trialsAns.trials;
    const isBetter = better(sweep.goal);
    const best = new Map();
    for (const t of trials) {
      if (t.state !== 'completed' || !isFiniteNum(t.final)) continue;
      const g = state.group ? JSON.stringify(t.params[state.group]) : '';
      if (!best.has(g) || isBetter(t.final, best.get(g).final)) best.set(g, t);
    }
    if (best.size) return new Set([...best.values()].sort((a, b) => a.id - b.id).map((t) => t.id));
    const started = trials.filter((t) => t.last_step !== null && t.last_step !== undefined);
    return new Set((started.length ? started : trials).slice(0, DEFAULT_TRACES).map((t) => t.id));
  }

  state.selected = defaultSelection();
  renderHeader();
  drawParallel();
  table.update(trialsAns.trials);
  drawEvents();
  await Promise.all([refreshHeatmap(), refreshCurves(), refreshTraces(), refreshAnalysis()]);

  let trialsSignature = JSON.stringify(trialsAns.trials);
  if (isLive(sweep)) {
    ctx.poll(async () => {
      [sweep, trialsAns] = await Promise.all([get(`sweeps/${enc}`), get(`sweeps/${enc}/trials`)]);
      if (!ctx.alive) return false;
      renderHeader();
      // The table and the parallel coordinates are the costly redraws (thousands of rows and
      // paths): only when a trial changed.
      const signature = JSON.stringify(trialsAns.trials);
      if (signature !== trialsSignature) {
        trialsSignature = signature;
        drawParallel();
        table.update(trialsAns.trials);
      }
      drawEvents();
      await Promise.all([refreshHeatmap(), refreshCurves(), refreshTraces(), refreshAnalysis()]);
      return isLive(sweep);
    });
  }
}

// A diverged trial's metric is never compared (docs/analysis.md): it sorts last and shows grey.
function diverged(t) {
  return t.state === 'diverged' || (t.diverged_step !== null && t.diverged_step !== undefined);
}

function metricOf(t, field) {
  return !diverged(t) && isFiniteNum(t[field]) ? t[field] : null;
}

function metricCell(t, field) {
  if (!diverged(t)) return num(t[field], 5);
  return el('span', { class: 'muted', title: 'diverged: its value is not compared' }, num(t[field], 5));
}

function fact(label, value) {
  return el('div', { class: 'fact' }, el('span', { class: 'k' }, label), el('span', { class: 'v' }, value));
}

function dur(t) {
  if (!isFiniteNum(t.started_at)) return null;
  const end = isFiniteNum(t.finished_at) ? t.finished_at : Date.now() / 1000;
  return end - t.started_at;
}

function allPositive(p) {
  return !!p && p.values.every((v) => typeof v === 'number' && v > 0);
}

