// The analysis block of the sweep page: `sweepctl analyze --json`'s object
// (docs/analysis.md, analysis/report.cc ToJson) as a table of groups, the power-law fit of
// the optimal (or maximum stable) lr drawn log-log with the per-group points, the fitted
// line (dashed where it extrapolates; its interval band when the answer has one), and the
// published lrs of the extrapolation targets; then the targets, verdicts and notes.

import { LineChart } from '../charts.js';
import { count, lr, num, sci } from '../format.js';
import { el, SortableTable } from '../table.js';

const PUBLISHED_COLOURS = ['#2ca02c', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];
const VARIABLE_LABEL = { N: 'non-embedding parameters N', depth: 'layers', C: 'compute C = 6ND (FLOPs)' };

function fitLabel(f) {
  return `${f.quantity} ~ ${f.variable}`;
}

function finite(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

function groupX(g, variable) {
  if (variable === 'N') return g.non_embedding_params;
  if (variable === 'depth') return g.shape ? g.shape.n_layers : null;
  return g.compute;
}

function targetX(e, variable) {
  if (variable === 'N') return e.non_embedding_params;
  if (variable === 'depth') return e.n_layers;
  return e.compute;
}

function groupY(g, quantity) {
  return quantity === 'max stable lr' ? g.max_stable?.lr : g.optimum?.lr;
}

function interval(ci) {
  if (!ci) return '–';
  const [a, b] = ci;
  return `${a === null ? '−∞' : lr(a)} – ${b === null ? '∞' : lr(b)}`;
}

function logspace(a, b, n) {
  const la = Math.log10(a);
  const lb = Math.log10(b);
  return Array.from({ length: n }, (_, i) => 10 ** (la + ((lb - la) * i) / (n - 1)));
}

export class AnalysisView {
  constructor(container) {
    this.root = container;
    this.fitKey = null;
    this.summary = el('p', { class: 'muted small' });
    this.groupsBox = el('div', { class: 'scroll-x' });
    this.fitSelect = el('select', { 'aria-label': 'fit', 'data-control': 'fit' });
    this.fitSelect.addEventListener('change', () => { this.fitKey = this.fitSelect.value; this.drawFit(); });
    this.fitInfo = el('p', { class: 'small' });
    const fitEl = el('div');
    this.targets = el('div', { class: 'scroll-x' });
    this.verdicts = el('div');
    this.chart = new LineChart(fitEl, { id: 'fit', xLabel: 'N', yLabel: 'learning rate', logX: true, logY: true, height: 300 });
    this.groups = new SortableTable(this.groupsBox, {
      cls: 'groups',
      sort: { key: 'n', dir: 1 },
      columns: [
        { key: 'label', label: 'group', value: (g) => g.label },
        { key: 'n', label: 'N', value: (g) => g.non_embedding_params, render: (g) => count(g.non_embedding_params), cls: 'num' },
        { key: 'best', label: 'best lr', value: (g) => g.optimum?.lr, render: (g) => el('span', { title: g.optimum?.note || '' }, g.optimum?.lr === null ? '–' : lr(g.optimum.lr), ' ', el('span', { class: 'muted small' }, g.optimum?.kind || '')), cls: 'num' },
        { key: 'ci', label: 'CI', title: 'interval of the best lr', value: (g) => g.optimum?.ci?.[0], render: (g) => interval(g.optimum?.ci), cls: 'num' },
        { key: 'band', label: 'near-optimal', value: (g) => g.near_optimal_band?.[0], render: (g) => (g.near_optimal_band ? `${lr(g.near_optimal_band[0])} – ${lr(g.near_optimal_band[1])}` : '–'), cls: 'num' },
        { key: 'stable', label: 'max stable', value: (g) => g.max_stable?.lr, render: (g) => el('span', { title: g.max_stable?.note || '' }, `${g.max_stable?.kind === 'above_grid' ? '≥ ' : ''}${g.max_stable?.lr === null ? '–' : lr(g.max_stable.lr)}`, ' ', el('span', { class: 'muted small' }, g.max_stable?.kind || '')), cls: 'num' },
        { key: 'unstable', label: 'first unstable', value: (g) => g.max_stable?.first_unstable_lr, render: (g) => (g.max_stable?.first_unstable_lr === null || g.max_stable?.first_unstable_lr === undefined ? '–' : `${lr(g.max_stable.first_unstable_lr)} (${g.max_stable.first_unstable_why})`) },
        { key: 'sens', label: 'LR sens.', title: 'Wortsman et al. 2023', value: (g) => g.lr_sensitivity, render: (g) => num(g.lr_sensitivity, 3), cls: 'num' },
        { key: 'tau', label: 'τ/run', title: '1/(lr·wd) as a fraction of the run, at the best lr', value: (g) => g.tau_fraction, render: (g) => num(g.tau_fraction, 2), cls: 'num' },
        { key: 'gns', label: 'B_noise', title: 'gradient noise scale B_simple in tokens (data-parallel trials): the critical batch size', value: (g) => g.noise_scale, render: (g) => count(g.noise_scale), cls: 'num' },
      ],
    });
    container.append(this.summary, this.groupsBox,
      el('div', { class: 'section-head sub' }, el('h3', {}, 'Power law'), el('div', { class: 'controls' }, el('label', { class: 'ctl' }, 'fit ', this.fitSelect))),
      this.fitInfo, fitEl, el('h3', {}, 'Extrapolation'), this.targets, this.verdicts);
  }

  failed(message) {
    this.summary.textContent = `No analysis: ${message}`;
  }

  update(ans) {
    this.ans = ans;
    const r = ans.result || {};
    this.summary.textContent = `${ans.source === 'stored' ? 'Stored' : 'Computed on the fly'}` +
      `${ans.created_at ? ` at ${new Date(ans.created_at * 1000).toLocaleString()}` : ''}; ` +
      `${r.trials ?? '?'} trials, metric ${r.metric} (${r.goal}), grouped by ${(r.group_by || []).join(', ') || 'nothing'}; ` +
      `intervals at ${Math.round((r.confidence || 0.9) * 100)} %; spikes from ${r.spike_source || '?'}.`;
    this.groups.update(r.groups || []);
    const fits = r.scaling || [];
    if (!this.fitKey || !fits.some((f) => fitLabel(f) === this.fitKey)) {
      const pick = fits.find((f) => f.ok && f.quantity === 'optimal lr' && f.variable === 'N') || fits.find((f) => f.ok) || fits[0];
      this.fitKey = pick ? fitLabel(pick) : null;
    }
    this.fitSelect.replaceChildren(...fits.map((f) => el('option', { value: fitLabel(f), selected: fitLabel(f) === this.fitKey }, `${fitLabel(f)}${f.ok ? '' : ' (no fit)'}`)));
    this.drawFit();
    this.drawTargets();
    this.drawVerdicts();
  }

  drawFit() {
    const r = this.ans?.result || {};
    const fit = (r.scaling || []).find((f) => fitLabel(f) === this.fitKey);
    if (!fit) {
      this.fitInfo.textContent = 'No power law: the analysis has no scaling fits.';
      this.chart.update([], 'no fit');
      return;
    }
    const v = fit.variable;
    const series = [];
    const targets = (r.extrapolations || []).map((e) => ({ e, x: targetX(e, v) })).filter((t) => finite(t.x) && t.x > 0);
    if (fit.ok && finite(fit.prefactor) && finite(fit.exponent) && fit.x_range && finite(fit.x_range[0]) && finite(fit.x_range[1])) {
      const f = (x) => fit.prefactor * x ** fit.exponent;
      const [x0, x1] = fit.x_range;
      const inside = logspace(x0, x1, 24);
      series.push({ label: `fit ${sci(fit.prefactor, 2)}·${v}^${num(fit.exponent, 3)}`, x: inside, y: inside.map(f), color: '#1f77b4', width: 2 });
      const xmax = Math.max(x1, ...targets.map((t) => t.x));
      if (xmax > x1 * 1.0001) {
        const beyond = logspace(x1, xmax, 48);
        series.push({ label: 'extrapolated', x: beyond, y: beyond.map(f), color: '#1f77b4', dash: [6, 4], width: 1.5 });
      }
      if (Array.isArray(fit.band) && fit.band.length) {
        const b = fit.band.filter((p) => finite(p.x) && p.x > 0);
        series.push({ label: 'interval lo', kind: 'band', bandOf: 'lo', x: b.map((p) => p.x), y: b.map((p) => (finite(p.lo) ? p.lo : null)), color: '#1f77b4', spanGaps: true });
        series.push({ label: 'interval hi', kind: 'band', bandOf: 'hi', x: b.map((p) => p.x), y: b.map((p) => (finite(p.hi) ? p.hi : null)), color: '#1f77b4', spanGaps: true });
      }
    }
    const groups = (r.groups || []).map((g) => ({ g, x: groupX(g, v), y: groupY(g, fit.quantity) })).filter((p) => finite(p.x) && finite(p.y));
    if (groups.length) series.push({ label: `${fit.quantity} per group`, kind: 'points', x: groups.map((p) => p.x), y: groups.map((p) => p.y), color: '#d62728', size: 9 });
    // Published lrs, one point set per source family (the source without its size).
    const families = new Map();
    for (const t of targets) {
      for (const p of t.e.published || []) {
        if (!finite(p.lr)) continue;
        const fam = p.source.replace(/\s+\S+$/, '') || p.source;
        if (!families.has(fam)) families.set(fam, []);
        families.get(fam).push({ x: t.x, y: p.lr });
      }
    }
    [...families].forEach(([fam, pts], i) => {
      const c = PUBLISHED_COLOURS[i % PUBLISHED_COLOURS.length];
      series.push({ label: fam, kind: 'points', x: pts.map((p) => p.x), y: pts.map((p) => p.y), color: c, fill: '#fff', size: 8 });
    });
    const ds = targets.filter((t) => finite(t.e.deepseek_lr));
    if (ds.length) series.push({ label: 'DeepSeek η = 0.3118·C^−0.125', kind: 'points', x: ds.map((t) => t.x), y: ds.map((t) => t.e.deepseek_lr), color: '#9467bd', size: 8 });
    this.chart.opts.xLabel = VARIABLE_LABEL[v] || v;
    this.chart.opts.yLabel = fit.quantity;
    this.chart.update(series, 'nothing to draw');
    this.fitInfo.replaceChildren(fit.ok
      ? el('span', {}, `${fit.quantity} = ${sci(fit.prefactor, 2)} · ${v}^`, el('b', {}, num(fit.exponent, 3)),
        ` (exponent ${interval2(fit.exponent_ci)}, se ${num(fit.exponent_se, 2)}, R² ${num(fit.r2, 3)}, ${fit.n} groups: ${(fit.groups_used || []).join(', ')})`,
        fit.left_out?.length ? el('span', { class: 'muted' }, `; left out: ${fit.left_out.join('; ')}`) : '',
        fit.caveat ? el('span', { class: 'warn' }, ` ${fit.caveat}`) : '',
        fit.band ? '' : el('span', { class: 'muted' }, ' No interval band in the answer: intervals at the targets below.'))
      : el('span', { class: 'muted' }, `No fit: ${fit.status}${fit.left_out?.length ? `; left out: ${fit.left_out.join('; ')}` : ''}`));
  }

  drawTargets() {
    const r = this.ans?.result || {};
    const rows = [];
    for (const e of r.extrapolations || []) {
      const preds = (e.predictions || []).filter((p) => p.ok);
      const published = (e.published || []).map((p) => `${p.source} ${lr(p.lr)}`).join(', ');
      rows.push(el('tr', { class: 'target' },
        el('td', { rowspan: Math.max(1, preds.length) }, el('b', {}, e.target), el('div', { class: 'small muted' }, `N ${count(e.non_embedding_params)}, ${e.n_layers} layers, C ${sci(e.compute, 1)}`),
          el('div', { class: 'small' }, `DeepSeek formula ${lr(e.deepseek_lr)}`), el('div', { class: 'small' }, `published: ${published || '–'}`)),
        ...predCells(preds[0])));
      for (const p of preds.slice(1)) rows.push(el('tr', {}, ...predCells(p)));
    }
    this.targets.replaceChildren(rows.length
      ? el('table', { class: 'table compact' }, el('thead', {}, el('tr', {}, ['target', 'fit', 'x', 'lr', 'interval', ''].map((h) => el('th', {}, h)))), el('tbody', {}, rows))
      : el('p', { class: 'muted' }, 'No extrapolation targets.'));
    const warnings = (r.extrapolations || []).flatMap((e) => (e.warnings || []).map((w) => `${e.target}: ${w}`));
    if (warnings.length) this.targets.append(el('ul', { class: 'small warnings' }, warnings.map((w) => el('li', {}, w))));
  }

  drawVerdicts() {
    const r = this.ans?.result || {};
    const verdicts = (r.groups || []).map((g) => g.verdict).filter(Boolean);
    const notes = [...(r.notes || []), ...(r.groups || []).flatMap((g) => (g.notes || []).map((n) => `${g.label}: ${n}`))];
    this.verdicts.replaceChildren(
      el('h3', {}, 'Verdicts'), verdicts.length ? el('ul', { class: 'verdicts' }, verdicts.map((v) => el('li', {}, v))) : el('p', { class: 'muted' }, 'none'),
      notes.length ? el('details', {}, el('summary', {}, `notes (${notes.length})`), el('ul', { class: 'small' }, notes.map((n) => el('li', {}, n)))) : '');
  }

  destroy() {
    this.chart.destroy();
  }
}

function interval2(ci) {
  if (!ci) return '–';
  return `${ci[0] === null ? '−∞' : num(ci[0], 3)} … ${ci[1] === null ? '∞' : num(ci[1], 3)}`;
}

function predCells(p) {
  if (!p) return [el('td', { colspan: 5, class: 'muted' }, 'no fit')];
  return [el('td', {}, p.fit), el('td', { class: 'num' }, sci(p.x, 2)), el('td', { class: 'num' }, el('b', {}, lr(p.lr))),
    el('td', { class: 'num' }, interval(p.ci)), el('td', {}, p.warning ? el('span', { class: 'warn', title: 'beyond the swept range' }, '!') : '')];
}
