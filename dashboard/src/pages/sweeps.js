// The sweeps page (#/): every sweep with a progress bar by trial state, the best trial,
// started, elapsed and ETA. Polls while a sweep is running.

import { get } from '../api.js';
import { duration, num, param, shortKey, time } from '../format.js';
import { el, SortableTable } from '../table.js';

export const STATES = ['completed', 'running', 'leased', 'pending', 'diverged', 'failed', 'stopped', 'cancelled'];
const DONE = ['completed', 'diverged', 'failed', 'stopped', 'cancelled'];

export function stateBadge(state) {
  return el('span', { class: `badge st-${state}` }, state);
}

// A bar with one segment per trial state (widths by count), and a legend in its title.
export function progressBar(counts, total) {
  const n = total || STATES.reduce((s, k) => s + (counts[k] || 0), 0) || 1;
  const bar = el('div', { class: 'progress', title: STATES.filter((k) => counts[k]).map((k) => `${k}: ${counts[k]}`).join('\n') });
  for (const k of STATES) {
    if (!counts[k]) continue;
    bar.append(el('div', { class: `seg st-${k}`, style: `width:${(100 * counts[k]) / n}%` }));
  }
  return bar;
}

export function doneCount(counts) {
  return DONE.reduce((s, k) => s + (counts[k] || 0), 0);
}

export function isLive(sweep) {
  const c = sweep.counts || {};
  return sweep.state === 'running' || (c.running || 0) + (c.leased || 0) > 0;
}

function bestCell(s) {
  if (!s.best) return el('span', { class: 'muted' }, '–');
  const params = Object.entries(s.best.params || {}).map(([k, v]) => `${shortKey(k)}=${param(k, v)}`).join(' ');
  return el('span', {}, el('b', {}, num(s.best.value, 5)), ' ',
    el('a', { href: `#/trials/${s.best.trial_id}` }, `#${s.best.trial_id}`), ' ',
    el('span', { class: 'muted small' }, params));
}

export async function renderSweeps(root, _arg, ctx) {
  root.append(el('h1', {}, 'Sweeps'));
  const summary = el('p', { class: 'muted' });
  const box = el('div', { class: 'card' });
  root.append(summary, box);
  const table = new SortableTable(box, {
    cls: 'sweeps',
    sort: { key: 'created', dir: -1 },
    rowAttrs: (s) => ({ 'data-sweep': s.name }),
    columns: [
      { key: 'name', label: 'sweep', value: (s) => s.name, render: (s) => el('a', { href: `#/sweeps/${encodeURIComponent(s.name)}` }, s.name) },
      { key: 'state', label: 'state', value: (s) => s.state, render: (s) => stateBadge(s.state) },
      { key: 'progress', label: 'progress', value: (s) => doneCount(s.counts || {}) / (s.trials || 1),
        render: (s) => el('div', { class: 'progress-cell' }, progressBar(s.counts || {}, s.trials),
          el('span', { class: 'small nowrap' }, `${doneCount(s.counts || {})}/${s.trials}`,
            ...['running', 'diverged', 'failed'].filter((k) => s.counts?.[k]).map((k) => el('span', { class: `cnt-${k}` }, ` · ${s.counts[k]} ${k}`)))) },
      { key: 'method', label: 'method', value: (s) => s.method },
      { key: 'metric', label: 'metric', value: (s) => `${s.metric} (${s.goal === 'maximize' ? 'max' : 'min'})` },
      { key: 'best', label: 'best', value: (s) => s.best?.value ?? null, render: bestCell },
      { key: 'created', label: 'started', value: (s) => s.started_at ?? s.created_at, render: (s) => time(s.started_at ?? s.created_at) },
      { key: 'elapsed', label: 'elapsed', value: (s) => s.elapsed_s, render: (s) => duration(s.elapsed_s), cls: 'num' },
      { key: 'eta', label: 'ETA', value: (s) => s.eta_s, render: (s) => (s.eta_s === null || s.eta_s === undefined ? '–' : duration(s.eta_s)), cls: 'num' },
    ],
  });

  const refresh = async () => {
    const { sweeps } = await get('sweeps');
    if (!ctx.alive) return false;
    summary.textContent = sweeps.length
      ? `${sweeps.length} sweep(s), ${sweeps.filter(isLive).length} running`
      : 'No sweeps yet: submit one with sweepctl submit SPEC (or sweepctl run SPEC).';
    table.update(sweeps);
    return sweeps.some(isLive);
  };
  if (await refresh()) ctx.poll(refresh);
}
