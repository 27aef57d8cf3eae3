// A table sorted by clicking a column header (again: the other direction). Missing values
// (null, NaN) sort last in both directions. update(rows) re-renders the body in the
// current order, so live updates keep the user's sort.
//
// columns: [{key, label, value(row) -> sortable value, render(row) -> Node|string,
//            cls, title, sortable (default true)}]
// rowAttrs(row) -> {attribute: value} for each <tr> (e.g. data-trial-id).

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function missing(v) {
  return v === null || v === undefined || (typeof v === 'number' && Number.isNaN(v));
}

export function compare(a, b) {
  if (missing(a) && missing(b)) return 0;
  if (missing(a)) return 1;
  if (missing(b)) return -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

export class SortableTable {
  constructor(container, { columns, rowAttrs, sort, cls }) {
    this.columns = columns;
    this.rowAttrs = rowAttrs || (() => ({}));
    this.sort = sort || { key: columns[0].key, dir: 1 };
    this.rows = [];
    this.table = el('table', { class: `table sortable ${cls || ''}` });
    this.thead = el('thead');
    this.tbody = el('tbody');
    this.table.append(this.thead, this.tbody);
    container.append(this.table);
    this.renderHead();
  }

  renderHead() {
    const tr = el('tr');
    for (const c of this.columns) {
      const sortable = c.sortable !== false;
      const active = this.sort.key === c.key;
      const th = el('th', {
        class: [c.cls, sortable ? 'sort' : '', active ? (this.sort.dir > 0 ? 'asc' : 'desc') : ''].filter(Boolean).join(' '),
        title: c.title,
        'data-key': c.key,
      }, c.label);
      if (sortable) {
        th.addEventListener('click', () => {
          this.sort = { key: c.key, dir: this.sort.key === c.key ? -this.sort.dir : 1 };
          this.renderHead();
          this.renderBody();
        });
      }
      tr.append(th);
    }
    this.thead.replaceChildren(tr);
  }

  update(rows) {
    this.rows = rows;
    this.renderBody();
  }

  sorted() {
    const col = this.columns.find((c) => c.key === this.sort.key) || this.columns[0];
    const value = col.value || ((r) => r[col.key]);
    const dir = this.sort.dir;
    return this.rows
      .map((r, i) => ({ r, i, v: value(r) }))
      .sort((a, b) => {
        if (missing(a.v) !== missing(b.v)) return missing(a.v) ? 1 : -1;
        return dir * compare(a.v, b.v) || a.i - b.i;
      })
      .map((x) => x.r);
  }

  renderBody() {
    const frag = document.createDocumentFragment();
    for (const r of this.sorted()) {
      const tr = el('tr', this.rowAttrs(r));
      for (const c of this.columns) {
        const v = c.render ? c.render(r) : (c.value ? c.value(r) : r[c.key]);
        tr.append(el('td', { class: c.cls }, v instanceof Node ? v : missing(v) ? '–' : String(v)));
      }
      frag.append(tr);
    }
    this.tbody.replaceChildren(frag);
  }
}
