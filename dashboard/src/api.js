// The JSON API (docs/dashboard.md): GET only, errors are {"error": "message"}.
// Every failure is shown in the banner at the top of the page and rethrown.

export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

const TIMEOUT_MS = 30000;

// GET /api/<path>?<params> -> parsed JSON. `params` values that are null/undefined are left
// out; arrays are joined with commas. The session cookie (sweep_token) rides along.
export async function get(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '') continue;
    q.set(k, Array.isArray(v) ? v.join(',') : String(v));
  }
  const url = `api/${path}${q.toString() ? `?${q}` : ''}`;
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
  let res;
  try {
    res = await fetch(url, { credentials: 'same-origin', signal: ctrl.signal, headers: { Accept: 'application/json' } });
  } catch (e) {
    const msg = e.name === 'AbortError' ? `${url}: no answer in ${TIMEOUT_MS / 1000} s` : `${url}: ${e.message} (is sweepd running?)`;
    throw report(new ApiError(0, msg, url));
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  const text = await res.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) {
    let msg = body && typeof body.error === 'string' ? body.error : `${res.status} ${res.statusText}`;
    if (res.status === 401 && !/token/i.test(msg)) msg += ' — open the dashboard once as /?token=TOKEN (the token sweepd was given)';
    throw report(new ApiError(res.status, msg, url));
  }
  if (body === null) throw report(new ApiError(res.status, `${url}: the answer is not JSON`, url));
  return body;
}

// ----- The error banner -------------------------------------------------------------------

function report(err) {
  showError(`${err.status ? `${err.status}: ` : ''}${err.message}`);
  return err;
}

export function showError(message) {
  const banner = document.getElementById('banner');
  if (!banner) return;
  // The same message twice (a failing poll) is shown once.
  for (const p of banner.querySelectorAll('.msg')) if (p.textContent === message) return;
  const p = document.createElement('div');
  p.className = 'msg';
  p.textContent = message;
  banner.append(p);
  banner.hidden = false;
}

export function clearErrors() {
  const banner = document.getElementById('banner');
  if (!banner) return;
  banner.querySelectorAll('.msg').forEach((m) => m.remove());
  banner.hidden = true;
}
