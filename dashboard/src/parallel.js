// Parallel coordinates in SVG: one vertical axis per swept parameter plus the metric, one
// <path class="pc-line"> per trial (every trial, unfinished and diverged ones included),
// coloured by the metric (best dark, worst light; no value: grey, dashed). A value that an
// axis does not have (a trial without the metric) sits on the "n/a" mark below the axis.

import { ramp } from './charts.js';
import { num, param, shortKey } from './format.js';

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// An axis maps a value to [0, 1] (1 = top) or null when it has no place on the axis.
function makeAxis(label, values, numeric, key) {
  const finite = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (numeric && finite.length) {
    const lo = Math.min(...finite);
    const hi = Math.max(...finite);
    const log = lo > 0 && hi / lo >= 10;
    const f = log ? Math.log10 : (v) => v;
    const a = f(lo);
    const b = f(hi);
    const pos = (v) => (typeof v === 'number' && Number.isFinite(v) && (!log || v > 0) ? (b > a ? (f(v) - a) / (b - a) : 0.5) : null);
    const distinct = [...new Set(finite)].sort((x, y) => x - y);
    const integer = finite.every((v) => Number.isInteger(v));
    let ticks = distinct.length <= 8 ? distinct : [0, 0.25, 0.5, 0.75, 1].map((t) => (log ? 10 ** (a + t * (b - a)) : a + t * (b - a)));
    if (integer) ticks = [...new Set(ticks.map(Math.round))];
    return { label, pos, ticks, fmt: (v) => param(key, v) };
  }
  const cats = [...new Set(values.filter((v) => v !== null && v !== undefined).map((v) => JSON.stringify(v)))];
  const pos = (v) => {
    const i = cats.indexOf(JSON.stringify(v));
    return i < 0 ? null : cats.length === 1 ? 0.5 : i / (cats.length - 1);
  };
  return { label, pos, ticks: cats.map((c) => JSON.parse(c)), fmt: (v) => param(key, v) };
}

// params: [{key, values, numeric}]; trials: the trial list; metric: {label, goal, value(trial)};
// onClick(trial).
export function renderParallel(container, params, trials, metric, onClick) {
  const width = Math.max(480, container.clientWidth || 900);
  const height = 300;
  const m = { top: 34, bottom: 40, left: 60, right: 70 };
  const axes = params.map((p) => ({ ...makeAxis(shortKey(p.key), p.values, p.numeric, p.key), get: (t) => t.params[p.key] }));
  const mvals = trials.map(metric.value).filter((v) => v !== null && Number.isFinite(v));
  const maxis = makeAxis(metric.label, mvals, true, metric.label);
  axes.push({ ...maxis, get: metric.value, metric: true });

  const n = axes.length;
  const x = (i) => m.left + (n === 1 ? 0 : (i * (width - m.left - m.right)) / (n - 1));
  const plotH = height - m.top - m.bottom;
  const y = (p) => (p === null ? height - m.bottom + 16 : m.top + (1 - p) * plotH);

  // Many lines: fainter, so where they bunch shows.
  const opacity = Math.max(0.15, Math.min(0.8, 6 / Math.sqrt(Math.max(1, trials.length))));
  const root = svg('svg', { class: 'parallel', width, height, viewBox: `0 0 ${width} ${height}`, style: `--pc-opacity:${opacity.toFixed(2)}` });
  const lo = Math.min(...mvals);
  const hi = Math.max(...mvals);
  const goodness = (v) => (hi > lo ? (metric.goal === 'maximize' ? (hi - v) / (hi - lo) : (v - lo) / (hi - lo)) : 0);

  // Lines: worst first so the best are drawn on top; no-value lines first of all.
  const order = trials.map((t) => ({ t, v: metric.value(t) }))
    .sort((a, b) => {
      const fa = a.v !== null && Number.isFinite(a.v);
      const fb = b.v !== null && Number.isFinite(b.v);
      if (fa !== fb) return fa ? 1 : -1;
      return fa ? goodness(b.v) - goodness(a.v) : 0;
    });
  const lines = svg('g', { class: 'pc-lines' });
  for (const { t, v } of order) {
    const has = v !== null && Number.isFinite(v);
    const d = axes.map((a, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(a.pos(a.get(t))).toFixed(1)}`).join('');
    const path = svg('path', {
      class: `pc-line${has ? '' : ' novalue'}`,
      d,
      stroke: has ? ramp(0.85 * goodness(v)) : '#b8b8b8',
      'data-trial-id': t.id,
    });
    path.append(svg('title', {}, `trial ${t.id} ${t.key} (${t.state}): ${metric.label} ${num(v, 5)}`));
    if (onClick) path.addEventListener('click', () => onClick(t));
    lines.append(path);
  }
  root.append(lines);

  axes.forEach((a, i) => {
    const g = svg('g', { class: `pc-axis${a.metric ? ' metric' : ''}` });
    g.append(svg('line', { x1: x(i), x2: x(i), y1: m.top, y2: m.top + plotH }));
    g.append(svg('text', { x: x(i), y: m.top - 14, class: 'pc-label', 'text-anchor': 'middle' }, a.label));
    for (const tv of a.ticks) {
      const p = a.pos(tv);
      if (p === null) continue;
      g.append(svg('line', { x1: x(i) - 3, x2: x(i) + 3, y1: y(p), y2: y(p) }));
      g.append(svg('text', { x: x(i) - 6, y: y(p) + 3.5, 'text-anchor': 'end', class: 'pc-tick' }, a.fmt(tv)));
    }
    g.append(svg('text', { x: x(i) - 6, y: y(null) + 3.5, 'text-anchor': 'end', class: 'pc-tick na' }, 'n/a'));
    root.append(g);
  });
  container.replaceChildren(root);
  return root;
}
