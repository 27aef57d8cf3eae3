// The heatmap: an HTML table with one <td class="cell" data-x data-y> per (x, y) pair of the
// grid answer (every pair, empty ones included), coloured by value (the best value bright),
// with the value, the trial count and the diverged count in each cell.

import { ramp } from './charts.js';
import { num, param, shortKey } from './format.js';
import { el } from './table.js';

function textColour(rgb) {
  const m = rgb.match(/\d+/g).map(Number);
  const lum = 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2];
  return lum > 140 ? '#111' : '#fff';
}

// grid: the /grid answer; goal: 'minimize' | 'maximize'; onCell(cell) on click.
export function renderHeatmap(container, grid, goal, onCell) {
  const byKey = new Map();
  for (const c of grid.cells) byKey.set(`${c.x}|${c.y}`, c);
  const values = grid.cells.map((c) => c.value).filter((v) => v !== null && Number.isFinite(v));
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const best = goal === 'maximize' ? hi : lo;
  // t = 1 for the best value, 0 for the worst.
  const t = (v) => (hi > lo ? (goal === 'maximize' ? (v - lo) / (hi - lo) : (hi - v) / (hi - lo)) : 1);

  const head = el('tr', {}, el('th', { class: 'corner' }, `${shortKey(grid.y || '')} \\ ${shortKey(grid.x)}`),
    grid.xs.map((x) => el('th', {}, param(grid.x, x))));
  const rows = grid.ys.map((y) => el('tr', {},
    el('th', {}, y === null ? grid.metric : param(grid.y, y)),
    grid.xs.map((x) => {
      const c = byKey.get(`${x}|${y}`);
      const attrs = { class: 'cell', 'data-x': String(x), 'data-y': y === null ? '' : String(y) };
      if (!c || c.n === 0 && !c.diverged) return el('td', { ...attrs, class: 'cell empty' }, '');
      const has = c.value !== null && Number.isFinite(c.value);
      const bg = has ? ramp(0.1 + 0.9 * t(c.value)) : null;
      const td = el('td', {
        ...attrs,
        class: `cell${has ? '' : ' novalue'}${has && c.value === best ? ' best' : ''}${c.diverged ? ' has-diverged' : ''}`,
        style: bg ? `background:${bg};color:${textColour(bg)}` : null,
        title: `${shortKey(grid.x)}=${param(grid.x, x)}${grid.y ? `, ${shortKey(grid.y)}=${param(grid.y, y)}` : ''}\n` +
          `${grid.agg} ${grid.metric}: ${num(c.value, 6)} over ${c.n} trial(s)` +
          `${c.diverged ? `\n${c.diverged} diverged` : ''}\ntrials ${(c.trials || []).join(', ')}`,
      },
      el('div', { class: 'v' }, has ? num(c.value, 4) : 'diverged'),
      el('div', { class: 'n' }, `n=${c.n}${c.diverged ? ` · D${c.diverged}` : ''}`));
      if (onCell) td.addEventListener('click', () => onCell(c));
      return td;
    })));
  const table = el('table', { class: 'heatmap' }, el('thead', {}, head), el('tbody', {}, rows));
  container.replaceChildren(table);
  return table;
}
