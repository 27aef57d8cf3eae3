// Number, time and duration formatting shared by the pages.

// A number with `digits` significant digits; very small or large ones in e-notation
// (learning rates read best as 3e-2). null/undefined/NaN -> "–".
export function num(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return v > 0 ? '∞' : '-∞';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 1e6) return String(v);
  if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(digits)));
  return sci(v, digits - 1);
}

// e-notation without the "+" and with trailing zeros removed: 1e-2, 3.16e-3, 1.5e9.
export function sci(v, digits = 2) {
  if (v === null || v === undefined || !Number.isFinite(v)) return num(v);
  const [m, e] = v.toExponential(digits).split('e');
  const mant = m.includes('.') ? m.replace(/\.?0+$/, '') : m;
  return `${mant}e${Number(e)}`;
}

// A learning rate: two significant digits, as the analysis prints them (1.3e-2).
export function lr(v) {
  return sci(v, 1);
}

// A parameter value as shown in tables and axis labels.
export function param(key, v) {
  if (typeof v === 'number' && /(^|\.)(lr|learning_rate|weight_decay|wd)$/.test(key)) return lr(v);
  if (typeof v === 'number') return num(v);
  if (v === null || v === undefined) return '–';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// The last part of a dotted key (model.n_layers -> n_layers).
export function shortKey(key) {
  const i = key.lastIndexOf('.');
  return i < 0 ? key : key.slice(i + 1);
}

// Seconds -> "1h 02m", "3m 10s", "12s".
export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '–';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

// Unix seconds -> "2024-05-01 13:04:05" in local time.
export function time(t) {
  if (t === null || t === undefined || !Number.isFinite(t)) return '–';
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// A large count with a metric suffix: 1.5M, 280k.
export function count(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e12) return `${num(v / 1e12, 3)}T`;
  if (a >= 1e9) return `${num(v / 1e9, 3)}B`;
  if (a >= 1e6) return `${num(v / 1e6, 3)}M`;
  if (a >= 1e4) return `${num(v / 1e3, 3)}k`;
  return num(v);
}
