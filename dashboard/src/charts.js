// uPlot wrappers. One LineChart per chart container; update() redraws in place with
// setData() when the set of series is unchanged (live polling) and rebuilds otherwise.
//
// A series is {label, x: [...], y: [...], kind, color, dash, width}:
//   kind 'line'   (default) a line; null y values are gaps (non-finite values) unless
//                 spanGaps; showPoints also draws its points
//   kind 'points' points only (per-group optima, published lrs): counted as a data series
//   kind 'marker' points only, drawn on top (spike markers): not counted in data-series,
//                 their finite points are counted in data-spikes
//   kind 'band'   an interval edge: give two, {bandOf: 'lo'|'hi'}, filled between; not counted
// The container gets data-chart (its id), data-series and, with markers, data-spikes.

import uPlot from 'uplot';
import { sci, num } from './format.js';

export const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
  '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

// Viridis-like ramp, t in [0, 1] -> css colour (for sequential series such as layers).
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export function ramp(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const f = t * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(f));
  const u = f - i;
  const c = RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * u));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

const NULL_RETAIN = 1;

// Log-axis tick labels: 1, 2 and 5 per decade over a short range, powers of ten otherwise.
function logValues(u, splits, axisIdx) {
  const scale = u.scales[u.axes[axisIdx].scale];
  const decades = Math.log10(scale.max / scale.min);
  return splits.map((v) => {
    if (!(v > 0)) return '';
    const m = v / 10 ** Math.floor(Math.log10(v) + 1e-9);
    const keep = decades < 0.7 || Math.abs(m - 1) < 1e-6 || (decades < 2.5 && (Math.abs(m - 2) < 1e-6 || Math.abs(m - 5) < 1e-6));
    if (!keep) return '';
    return v >= 0.1 && v < 1e4 ? num(v, 3) : sci(v, 0);
  });
}

// uPlot's own filter drops log ticks other than powers of ten; logValues chooses instead.
function keepAll(u, splits) {
  return splits;
}

// Log ticks at 1..9 x 10^k inside the scale (uPlot's own start at the scale's minimum, which
// is not a round number once the range is fitted to the data).
function logSplits(u, axisIdx, min, max) {
  const out = [];
  if (!(min > 0 && max > min)) return out;
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (let m = 1; m < 10; m++) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) out.push(v);
    }
  }
  return out;
}

function linValues(u, splits) {
  return splits.map((v) => (v === null ? '' : Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? sci(v, 1) : num(v, 4)));
}

export class LineChart {
  // opts: {id, title, xLabel, yLabel, logX, logY, height, legend (default true)}
  constructor(container, opts) {
    this.el = container;
    this.opts = opts;
    this.plot = null;
    this.signature = '';
    container.classList.add('chart');
    container.dataset.chart = opts.id;
    container.dataset.series = '0';
    container.innerHTML = '';
    if (opts.title) {
      const h = document.createElement('div');
      h.className = 'chart-title';
      h.textContent = opts.title;
      container.append(h);
    }
    this.body = document.createElement('div');
    this.body.className = 'chart-body';
    container.append(this.body);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize(this.size());
    });
    this.resize.observe(container);
  }

  size() {
    return { width: Math.max(200, this.el.clientWidth - 8), height: this.opts.height || 220 };
  }

  // Draws `series` (see the top of this file). `note` replaces the chart when nothing is drawn.
  update(series, note = 'no data') {
    const o = this.opts;
    // Log axes cannot show values <= 0: those points become gaps.
    const clean = series.map((s) => {
      const xs = [];
      const ys = [];
      for (let i = 0; i < s.x.length; i++) {
        const x = s.x[i];
        if (x === null || !Number.isFinite(x) || (o.logX && x <= 0)) continue;
        let y = s.y[i];
        if (y !== null && (!Number.isFinite(y) || (o.logY && y <= 0))) y = null;
        xs.push(x);
        ys.push(y);
      }
      // uPlot.join wants strictly increasing x per table.
      const idx = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
      const sx = [];
      const sy = [];
      const rawX = idx.map((i) => xs[i]);
      const rawY = idx.map((i) => ys[i]);
      for (const i of idx) {
        if (sx.length && sx[sx.length - 1] === xs[i]) {
          sy[sy.length - 1] = sy[sy.length - 1] ?? ys[i];
          continue;
        }
        sx.push(xs[i]);
        sy.push(ys[i]);
      }
      return { ...s, x: sx, y: sy, rawX, rawY, kind: s.kind || 'line' };
    });
    // A points or marker series may have several points at one x (published lrs of one
    // target, spikes of two trials): uPlot's aligned data holds one y per x and series, so
    // such a series is drawn as several (the extra ones without a legend entry).
    const expanded = [];
    for (const s of clean) {
      if (s.kind !== 'points' && s.kind !== 'marker') {
        expanded.push(s);
        continue;
      }
      const layers = [];
      const seen = new Map();
      s.rawX.forEach((x, i) => {
        const k = seen.get(x) || 0;
        seen.set(x, k + 1);
        if (!layers[k]) layers[k] = { ...s, x: [], y: [], hideLegend: k > 0 };
        layers[k].x.push(x);
        layers[k].y.push(s.rawY[i]);
      });
      if (!layers.length) layers.push({ ...s, x: [], y: [] });
      expanded.push(...layers);
    }
    const counted = clean.filter((s) => s.kind === 'line' || s.kind === 'points');
    const markers = clean.filter((s) => s.kind === 'marker');
    this.el.dataset.series = String(counted.length);
    if (markers.length || o.markers) {
      this.el.dataset.spikes = String(markers.reduce((n, s) => n + s.rawY.filter((v) => v !== null).length, 0));
    }
    // Empty series stay (as gaps) while something else is drawn, so a trace that gains its
    // first spike during a live refresh is redrawn in place instead of rebuilt.
    const drawable = expanded.some((s) => s.x.length > 0) ? expanded : [];
    if (drawable.length === 0) {
      this.destroyPlot();
      this.body.innerHTML = '';
      const p = document.createElement('div');
      p.className = 'chart-empty';
      p.textContent = note;
      this.body.append(p);
      return;
    }
    const data = uPlot.join(drawable.map((s) => [s.x, s.y]), drawable.map(() => [null, NULL_RETAIN]));
    const signature = JSON.stringify([drawable.map((s) => [s.label, s.kind, s.color, s.fill, s.dash, s.showPoints, s.spanGaps, s.bandOf, s.hideLegend]), o.logX, o.logY, o.xLabel, o.yLabel]);
    if (this.plot && signature === this.signature) {
      this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    this.body.innerHTML = '';
    this.signature = signature;
    this.plot = new uPlot(this.options(drawable), data, this.body);
    // Band edges, spike markers and the extra layers of a points series have no legend entry.
    const rows = this.plot.root.querySelectorAll('.u-legend .u-series');
    drawable.forEach((s, i) => {
      if ((s.kind === 'band' || s.kind === 'marker' || s.hideLegend) && rows[i + 1]) rows[i + 1].style.display = 'none';
    });
  }

  options(series) {
    const o = this.opts;
    const useries = [{ label: o.xLabel || 'step', value: (u, v) => (v === null ? '–' : o.logX ? sci(v, 2) : num(v, 6)) }];
    const bands = [];
    let lo = -1;
    let hi = -1;
    series.forEach((s, i) => {
      const c = s.color || color(i);
      const base = { label: s.label, stroke: c, value: (u, v) => (v === null || v === undefined ? '–' : num(v, 4)) };
      if (s.kind === 'line') {
        useries.push({ ...base, width: s.width || 1.25, dash: s.dash, spanGaps: !!s.spanGaps, points: s.showPoints ? { show: true, size: 5, fill: c } : { show: false } });
      } else if (s.kind === 'band') {
        useries.push({ ...base, stroke: 'transparent', width: 0, points: { show: false } });
        if (s.bandOf === 'lo') lo = i + 1;
        if (s.bandOf === 'hi') hi = i + 1;
      } else {
        const marker = s.kind === 'marker';
        useries.push({
          ...base,
          stroke: s.color || (marker ? '#d62728' : c),
          width: 0,
          paths: () => null,
          points: { show: true, size: s.size || (marker ? 8 : 7), width: 1.5, fill: s.fill || (marker ? 'rgba(214,39,40,0.35)' : c), stroke: s.color || (marker ? '#d62728' : c) },
        });
      }
    });
    if (lo > 0 && hi > 0) bands.push({ series: [hi, lo], fill: 'rgba(31,119,180,0.15)' });
    return {
      ...this.size(),
      series: useries,
      bands,
      legend: { show: o.legend !== false, live: true },
      cursor: { drag: { x: true, y: false }, points: { size: 6 } },
      scales: {
        // A log x axis spans the data (uPlot would round out to whole decades).
        x: o.logX
          ? { time: false, distr: 3, range: (u, min, max) => (min > 0 && max > 0 ? [min / 1.25, max * 1.25] : [1, 10]) }
          : { time: false, distr: 1 },
        y: { distr: o.logY ? 3 : 1 },
      },
      axes: [
        { label: o.xLabel, labelSize: 18, size: 36, values: o.logX ? logValues : linValues, splits: o.logX ? logSplits : undefined, filter: o.logX ? keepAll : undefined, stroke: '#444', grid: { stroke: '#eee' }, ticks: { stroke: '#ddd' } },
        { label: o.yLabel, labelSize: 18, size: 56, values: o.logY ? logValues : linValues, splits: o.logY ? logSplits : undefined, filter: o.logY ? keepAll : undefined, stroke: '#444', grid: { stroke: '#eee' }, ticks: { stroke: '#ddd' } },
      ],
    };
  }

  destroyPlot() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.signature = '';
  }

  destroy() {
    this.resize.disconnect();
    this.destroyPlot();
  }
}

// Spike markers for a trace: the series' `spikes` ({step, value}) as a marker series.
export function spikeMarkers(label, spikes, colorOverride) {
  const pts = (spikes || []).filter((s) => s.value !== null && Number.isFinite(s.value));
  return { label, kind: 'marker', x: pts.map((s) => s.step), y: pts.map((s) => s.value), color: colorOverride };
}
