// The trial page (#/trials/ID): loss and val loss, lr, grad norm with its spikes, per-layer
// grad norms (grad_norm/*), the attention-logit and output-logit probes (probe/*) over
// steps; spikes; events; attempt errors; the log tail. Polls while the trial runs.

import { get } from '../api.js';
import { LineChart, color, ramp, spikeMarkers } from '../charts.js';
import { num, param, shortKey, time } from '../format.js';
import { el } from '../table.js';
import { stateBadge } from './sweeps.js';

const LIVE = ['running', 'leased', 'pending'];
const NAMES = ['loss/out', 'loss/val', 'optim/lr', 'optim/grad_norm', 'grad_norm/*', 'probe/*'];

function card(root, title, ...controls) {
  const body = el('div', { class: 'section-body' });
  root.append(el('section', { class: 'card' }, el('div', { class: 'section-head' }, el('h2', {}, title), el('div', { class: 'controls' }, ...controls)), body));
  return body;
}

function fact(label, value) {
  return el('div', { class: 'fact' }, el('span', { class: 'k' }, label), el('span', { class: 'v' }, value));
}

function line(s, c, extra = {}) {
  return { label: s.name, x: s.steps, y: s.values, color: c, ...extra };
}

// Per-layer grad norms in layer order: layers.<i>.* by i, then the rest by name.
function layerOrder(a, b) {
  const la = a.name.match(/layers\.(\d+)\./);
  const lb = b.name.match(/layers\.(\d+)\./);
  if (la && lb) return Number(la[1]) - Number(lb[1]) || a.name.localeCompare(b.name);
  if (la || lb) return la ? -1 : 1;
  return a.name.localeCompare(b.name);
}

export async function renderTrial(root, id, ctx) {
  if (!/^\d+$/.test(id)) throw new Error(`"${id}" is not a trial id`);
  let trial = await get(`trials/${id}`);
  if (!ctx.alive) return;

  const header = el('div', { class: 'page-head' });
  root.append(header);
  function renderHeader() {
    const t = trial;
    header.replaceChildren(
      el('div', { class: 'crumbs' }, el('a', { href: '#/' }, 'sweeps'), ' / ', el('a', { href: `#/sweeps/${encodeURIComponent(t.sweep)}` }, t.sweep), ' / '),
      el('h1', {}, `Trial #${t.id} `, stateBadge(t.state)),
      el('div', { class: 'facts' },
        ...Object.entries(t.params || {}).map(([k, v]) => fact(shortKey(k), param(k, v))),
        fact('attempt', String(t.attempt)),
        fact('step', num(t.last_step)),
        fact('final', t.state === 'diverged' ? el('span', { class: 'muted', title: 'diverged: its value is not compared' }, num(t.final, 5)) : num(t.final, 5)),
        fact('best', num(t.best, 5)),
        fact('checkpoint', t.checkpoint_step === null || t.checkpoint_step === undefined ? '–' : `step ${t.checkpoint_step}`),
        t.divergence_step !== null && t.divergence_step !== undefined ? fact('diverged', el('span', { class: 'bad' }, `step ${t.divergence_step}${t.divergence_reason ? `: ${t.divergence_reason}` : ''}`)) : '',
        t.stop_reason ? fact('stopped', t.stop_reason) : '',
        t.error ? fact('error', el('span', { class: 'bad' }, t.error)) : ''),
      el('div', { class: 'muted small' }, `key ${t.key}`));
  }
  renderHeader();

  // ----- Charts -----
  const chartsBody = card(root, 'Metrics');
  const boxes = {};
  for (const k of ['loss', 'lr', 'grad', 'layers', 'probes']) boxes[k] = el('div');
  chartsBody.append(el('div', { class: 'grid2' }, boxes.loss, boxes.lr, boxes.grad, boxes.layers), boxes.probes);
  const charts = {
    loss: ctx.own(new LineChart(boxes.loss, { id: 'trial-loss', title: 'loss (● spikes)', xLabel: 'step', markers: true, height: 240 })),
    lr: ctx.own(new LineChart(boxes.lr, { id: 'trial-lr', title: 'learning rate', xLabel: 'step', height: 240 })),
    grad: ctx.own(new LineChart(boxes.grad, { id: 'trial-grad', title: 'grad norm (● spikes)', xLabel: 'step', logY: true, markers: true, height: 240 })),
    layers: ctx.own(new LineChart(boxes.layers, { id: 'trial-layers', title: 'per-layer grad norms', xLabel: 'step', logY: true, height: 240 })),
    probes: ctx.own(new LineChart(boxes.probes, { id: 'trial-probes', title: 'probes: attention-logit max per layer, output log-sum-exp', xLabel: 'step', height: 240 })),
  };
  const nonfiniteNote = el('p', { class: 'small warn' });
  chartsBody.append(nonfiniteNote);

  async function refreshCharts() {
    const ans = await get(`trials/${id}/series`, { names: NAMES });
    if (!ctx.alive) return;
    const by = new Map(ans.series.map((s) => [s.name, s]));
    const pick = (n) => by.get(n);
    const loss = [pick('loss/out'), pick('loss/val')].filter(Boolean).map((s, i) => line(s, color(i), s.name === 'loss/val' ? { showPoints: s.steps.length < 200, spanGaps: true } : {}));
    for (const s of [pick('loss/out'), pick('loss/val')]) if (s) loss.push(spikeMarkers(`${s.name} spikes`, s.spikes));
    charts.loss.update(loss, 'no loss logged');
    charts.lr.update(pick('optim/lr') ? [line(pick('optim/lr'), color(0))] : [], 'no lr logged');
    const g = pick('optim/grad_norm');
    charts.grad.update(g ? [line(g, color(0)), spikeMarkers('spikes', g.spikes)] : [], 'no grad norm logged');
    const layers = ans.series.filter((s) => s.name.startsWith('grad_norm/')).sort(layerOrder);
    charts.layers.update(layers.map((s, i) => line(s, ramp(layers.length > 1 ? i / (layers.length - 1) : 0),
      { label: s.name.slice('grad_norm/'.length), dash: /feed_forward/.test(s.name) ? [4, 3] : undefined })), 'no per-layer grad norms logged');
    const probes = ans.series.filter((s) => s.name.startsWith('probe/')).sort(layerOrder);
    charts.probes.update(probes.map((s, i) => line(s, s.name.includes('output') ? '#d62728' : ramp(probes.length > 1 ? i / (probes.length - 1) : 0),
      { label: s.name.slice('probe/'.length), showPoints: s.steps.length < 100, spanGaps: true })), 'no probes logged (the trainer\'s probe_freq is 0)');
    const nonfinite = ans.series.filter((s) => s.nonfinite && s.nonfinite.length).map((s) => {
      const kinds = [...new Set(s.nonfinite.map((n) => n.kind))].join('/');
      return `${s.name}: ${s.nonfinite.length} ${kinds} from step ${s.nonfinite[0].step}`;
    });
    nonfiniteNote.textContent = nonfinite.length ? `Non-finite values (gaps in the lines): ${nonfinite.slice(0, 6).join('; ')}${nonfinite.length > 6 ? `; ${nonfinite.length - 6} more series` : ''}` : '';
  }

  // ----- Spikes, events, errors -----
  const spikesBody = card(root, 'Spikes');
  const eventsBody = card(root, 'Events');
  const errorsBody = card(root, 'Attempt errors');
  function renderTables() {
    const spikes = trial.spikes || [];
    spikesBody.replaceChildren(spikes.length
      ? el('table', { class: 'table compact' },
        el('thead', {}, el('tr', {}, ['metric', 'step', 'value', 'z', 'window mean', 'in warmup'].map((h) => el('th', {}, h)))),
        el('tbody', {}, spikes.map((s) => el('tr', { class: s.in_warmup ? 'muted' : '' },
          el('td', {}, s.name), el('td', { class: 'num' }, String(s.step)), el('td', { class: 'num' }, num(s.value, 4)),
          el('td', { class: 'num' }, num(s.z, 3)), el('td', { class: 'num' }, num(s.mean, 4)), el('td', {}, s.in_warmup ? 'yes' : 'no')))))
      : el('p', { class: 'muted' }, 'No spikes.'));
    const events = trial.events || [];
    eventsBody.replaceChildren(events.length
      ? el('table', { class: 'table compact' },
        el('thead', {}, el('tr', {}, ['time', 'kind', 'worker', 'detail'].map((h) => el('th', {}, h)))),
        el('tbody', {}, events.map((e) => el('tr', {}, el('td', { class: 'nowrap' }, time(e.time)), el('td', {}, e.kind),
          el('td', {}, e.worker === null || e.worker === undefined ? '' : String(e.worker)), el('td', { class: 'small' }, e.detail || '')))))
      : el('p', { class: 'muted' }, 'No events.'));
    const errs = trial.attempt_errors || [];
    errorsBody.replaceChildren(errs.length
      ? el('ol', { class: 'errors' }, errs.map((e) => el('li', {}, el('pre', { class: 'code small' }, typeof e === 'string' ? e : JSON.stringify(e, null, 1)))))
      : el('p', { class: 'muted' }, 'No failed attempts.'));
  }
  renderTables();

  // ----- Config and log -----
  const configBody = card(root, 'Config');
  configBody.append(el('details', {}, el('summary', {}, 'trainer config'), el('pre', { class: 'code' }, typeof trial.config === 'string' ? trial.config : JSON.stringify(trial.config, null, 2))));
  let logFile = 'stderr';
  const logSelect = el('select', { 'aria-label': 'log file' }, ['stderr', 'stdout'].map((f) => el('option', { value: f }, f)));
  logSelect.addEventListener('change', () => { logFile = logSelect.value; refreshLog(); });
  const logBody = card(root, 'Log tail', el('label', { class: 'ctl' }, 'file ', logSelect));
  const logPre = el('pre', { class: 'code log' });
  const logInfo = el('p', { class: 'muted small' });
  logBody.append(logInfo, logPre);
  async function refreshLog() {
    let ans;
    try {
      ans = await get(`trials/${id}/log`, { file: logFile, bytes: 32768 });
    } catch (e) {
      logInfo.textContent = `No log: ${e.message}`;
      return;
    }
    if (!ctx.alive) return;
    logPre.hidden = !ans.available;
    if (!ans.available) {
      logInfo.textContent = `Not available: ${ans.reason || 'no reason given'}`;
      logPre.textContent = '';
      return;
    }
    logInfo.textContent = `${ans.path || ''}${ans.truncated ? ' (the end of it)' : ''}`;
    const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
    logPre.textContent = ans.text || '(empty)';
    if (atEnd) logPre.scrollTop = logPre.scrollHeight;
  }

  await Promise.all([refreshCharts(), refreshLog()]);

  if (LIVE.includes(trial.state)) {
    ctx.poll(async () => {
      trial = await get(`trials/${id}`);
      if (!ctx.alive) return false;
      renderHeader();
      renderTables();
      await Promise.all([refreshCharts(), refreshLog()]);
      return LIVE.includes(trial.state);
    });
  }
}
