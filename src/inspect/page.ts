/** The inspector's pages: the offline one (no external resources) and the bridge to Stately's inspector. */

// A `\` ending a line inside these templates is a line continuation: the page gets that line whole, as one line.

const STYLE = `
*{box-sizing:border-box}body{font:13px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{display:flex;gap:16px;align-items:baseline;padding:10px 16px;background:#1d2330;color:#fff}
header h1{font-size:16px;margin:0}#conn{font-size:12px;opacity:.8}
main{display:grid;grid-template-columns:1fr;gap:12px;padding:12px 16px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 12px}
h2{font-size:14px;margin:0 0 8px}
.actor{border-top:1px solid #eef0f4;padding:8px 0}.actor h3{font-size:13px;margin:0 0 4px}
.actor .value{font-family:ui-monospace,monospace;color:#4a5568;margin-left:8px;font-weight:normal}
svg text{font:11px ui-monospace,monospace;fill:#1d2330}
.state rect{fill:#fff;stroke:#8a94a6;stroke-width:1;rx:6}
.state.compound>rect{fill:#f3f5f9}
.state.active>rect{fill:#ffe9a8;stroke:#c98a00;stroke-width:2}
.edge{fill:none;stroke:#9aa3b2;stroke-width:1;marker-end:url(#arrow)}
.step h3{font-size:13px;margin:6px 0}
.action.F{fill:#5b8def}.action.B{fill:#f08c4a}.action.W{fill:#49b37b}
.row-label{fill:#4a5568}.lane{fill:#f3f5f9}
table.stats{border-collapse:collapse}table.stats td,table.stats th{padding:3px 10px;border-bottom:1px solid #eef0f4;text-align:right}
.errors.has{color:#b42318;font-weight:600}.rejects{font-family:ui-monospace,monospace;font-size:12px;color:#6b7280}
`;

const SCRIPT = `
const conn = document.getElementById('conn');
const actors = new Map();
window.__stateLog = [];
const steps = new Map();
const stats = new Map();

function activePaths(v, prefix) {
  if (v === null || v === undefined) return [];
  if (typeof v === 'string') return [prefix + v];
  const out = [];
  for (const [k, c] of Object.entries(v)) { out.push(prefix + k); out.push(...activePaths(c, prefix + k + '.')); }
  return out;
}
function leafPath(v) { const p = activePaths(v, ''); return p.filter((x) => !p.some((y) => y.startsWith(x + '.'))).join(','); }
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function targetsOf(node) {
  const out = [];
  const add = (t) => {
    if (!t) return;
    if (Array.isArray(t)) return t.forEach(add);
    if (typeof t === 'string') out.push(t);
    else if (t.target) add(t.target);
  };
  for (const [ev, t] of Object.entries(node.on || {})) add(t);
  add(node.always);
  const inv = Array.isArray(node.invoke) ? node.invoke : node.invoke ? [node.invoke] : [];
  for (const i of inv) { add(i.onDone); add(i.onError); }
  for (const t of Object.values(node.after || {})) add(t);
  return out;
}
function topOf(target, rootId) {
  if (target.startsWith('#')) { const parts = target.slice(1).split('.'); return parts[0] === rootId ? parts[1] : null; }
  if (target.startsWith('.')) return null;
  return target.split('.')[0];
}
function boxWidth(name) { return Math.max(70, name.length * 7 + 20); }

function diagram(def) {
  const states = Object.entries(def.states || {});
  const boxes = new Map();
  let x = 10, y = 14, rowH = 0; const maxW = 1100; let svg = '';
  for (const [name, node] of states) {
    const kids = Object.keys(node.states || {});
    const label = name + (node.type === 'final' ? ' (final)' : '');
    const w = kids.length ? Math.max(boxWidth(label), kids.reduce((n, k) => n + boxWidth(k) + 8, 8)) : boxWidth(label);
    const h = kids.length ? 62 : 28;
    if (x + w > maxW) { x = 10; y += rowH + 34; rowH = 0; }
    boxes.set(name, { x, y, w, h });
    svg += '<g class="state' + (kids.length ? ' compound' : '') + '" data-path="' + esc(name) + '"><rect x="' + x + '" y="' + y + '" width="' + w + \
'" height="' + h + '"/><text x="' + (x + 8) + '" y="' + (y + 17) + '">' + esc(label) + '</text></g>';
    let cx = x + 8;
    for (const k of kids) {
      const kw = boxWidth(k);
      svg += '<g class="state" data-path="' + esc(name + '.' + k) + '"><rect x="' + cx + '" y="' + (y + 26) + '" width="' + kw + \
'" height="26"/><text x="' + (cx + 8) + '" y="' + (y + 43) + '">' + esc(k) + '</text></g>';
      cx += kw + 8;
    }
    x += w + 40; rowH = Math.max(rowH, h);
  }
  let edges = '';
  for (const [name, node] of states) {
    const a = boxes.get(name);
    const seen = new Set();
    const all = targetsOf(node);
    for (const kid of Object.values(node.states || {})) all.push(...targetsOf(kid));
    for (const t of all) {
      const to = topOf(t, def.id);
      if (!to || to === name || seen.has(to) || !boxes.has(to)) continue;
      seen.add(to);
      const b = boxes.get(to);
      const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y + b.h;
      const bend = Math.min(44, Math.max(18, Math.abs(x2 - x1) / 6));
      edges += '<path class="edge" d="M' + x1 + ',' + y1 + ' C' + x1 + ',' + (Math.max(y1, y2) + bend) + ' ' + x2 + \
',' + (Math.max(y1, y2) + bend) + ' ' + x2 + ',' + (y2 + 2) + '"/>';
    }
  }
  const height = y + rowH + 60;
  return '<svg class="diagram" width="100%" viewBox="0 0 ' + maxW + ' ' + height + '" height="' + height + \
'"><defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto">\
<path d="M0,0 L8,4 L0,8 z" fill="#9aa3b2"/></marker></defs>' + edges + svg + '</svg>';
}

function drawActor(a) {
  let entry = actors.get(a.sessionId);
  if (!entry) {
    const el = document.createElement('div');
    el.className = 'actor';
    el.dataset.name = a.name;
    el.dataset.scope = a.scope;
    el.dataset.order = a.scope + '/' + a.name;
    el.dataset.session = a.sessionId;
    el.innerHTML = '<h3>' + esc(a.name) + (a.scope !== JOB ? ' <small>(' + esc(a.scope.slice(JOB.length + 1)) + ')</small>' : '') + \
'<span class="value"></span></h3>' + diagram(a.definition || {});
    const list = document.getElementById('actor-list');
    const after = [...list.children].find((c) => c.dataset.order > el.dataset.order);
    list.insertBefore(el, after || null);
    entry = { el, state: '' };
    actors.set(a.sessionId, entry);
  }
  const state = leafPath(a.value);
  const paths = new Set(activePaths(a.value, ''));
  for (const g of entry.el.querySelectorAll('g.state')) g.classList.toggle('active', paths.has(g.dataset.path));
  entry.el.dataset.state = state;
  entry.el.querySelector('.value').textContent = state + (a.lastEvent ? '  (last event ' + a.lastEvent + ')' : '');
  if (state !== entry.state) { entry.state = state; window.__stateLog.push({ name: a.name, state, at: Date.now() }); }
  document.getElementById('actor-count').textContent = String(actors.size);
}

function drawSteps() {
  const keys = [...steps.keys()].sort((a, b) => b - a).slice(0, 2);
  const html = keys.map((k, i) => {
    const s = steps.get(k);
    const W = 1000, left = 60, rowH = 24, scale = (W - left - 10) / s.span;
    let rows = '';
    for (let r = 0; r < s.stages; r++) rows += '<g class="row" data-rank="' + r + '"><rect class="lane" x="' + left + '" y="' + (r * rowH + 4) + \
'" width="' + (W - left - 10) + '" height="' + (rowH - 6) + '"/><text class="row-label" x="4" y="' + (r * rowH + 18) + '">stage ' + r + '</text></g>';
    const boxes = s.actions.map((a) => {
      const x = left + a.start * scale, w = Math.max(1, a.ms * scale), y = a.rank * rowH + 4;
      return '<rect class="action ' + a.action[0] + '" data-rank="' + a.rank + '" data-action="' + a.action + '" x="' + x.toFixed(1) + '" y="' + y + \
'" width="' + w.toFixed(1) + '" height="' + (rowH - 6) + '"><title>stage ' + a.rank + ' ' + a.action + ': ' + a.ms.toFixed(2) + \
' ms</title></rect>' + (w > 22 ? '<text x="' + (x + 3).toFixed(1) + '" y="' + (y + 13) + '" fill="#fff">' + a.action + '</text>' : '');
    }).join('');
    return '<div class="step" data-step="' + s.step + '"><h3>' + (i === 0 ? 'current' : 'last') + ' step ' + s.step + ': ' + s.span.toFixed(1) + \
' ms, bubble measured <span class="bubble-measured">' + (s.measuredBubble * 100).toFixed(1) + \
'%</span>, theoretical (p-1)/(m+p-1) <span class="bubble-theory">' + (s.theoreticalBubble * 100).toFixed(1) + '%</span> (p=' + s.stages + \
', m=' + s.microbatches + ')</h3><svg class="timeline" data-step="' + s.step + '" width="100%" viewBox="0 0 ' + W + ' ' + (s.stages * rowH + 8) + \
'">' + rows + boxes + '</svg></div>';
  }).join('');
  document.getElementById('steps').innerHTML = html || 'no step yet';
}

function drawStats() {
  const rows = [...stats.values()].sort((a, b) => (a.scope === b.scope ? a.rank - b.rank : a.scope < b.scope ? -1 : 1)).map((s) =>
    '<tr data-rank="' + s.rank + '" data-scope="' + esc(s.scope) + '"><td>' + (s.scope !== JOB ? esc(s.scope.slice(JOB.length + 1)) + \
' ' : '') + s.rank + '</td><td>' + s.step + '</td><td>' + (s.busyMs / 1000).toFixed(2) + '</td><td>' + (s.idleMs / 1000).toFixed(2) + \
'</td><td class="machine">' + (s.machineMs / 1000).toFixed(3) + '</td><td>' + (s.framesMs / 1000).toFixed(3) + '</td><td>' + s.forwards + \
'</td><td>' + s.backwards + '</td><td>' + s.peakHeld + '</td><td>' + (s.bytesIn / 1e6).toFixed(2) + '</td><td>' + (s.bytesOut / 1e6).toFixed(2) + \
'</td><td>' + s.tensors + '</td><td>' + s.rejected + '</td></tr>').join('');
  document.querySelector('table.stats tbody').innerHTML = rows;
}

function apply(u) {
  if (u.kind === 'actor') drawActor(u.actor);
  else if (u.kind === 'step') { steps.set(u.step.step, u.step); drawSteps(); }
  else if (u.kind === 'stats') { stats.set(u.stats.scope + '/' + u.stats.rank, u.stats); drawStats(); }
  else if (u.kind === 'error') {
    const e = document.querySelector('.errors');
    e.classList.add('has');
    e.innerHTML = 'first error: <code class="error-key">' + esc(u.error.key) + '</code> on stage ' + u.error.rank + ' (' + esc(u.error.code) + \
'): <span class="error-message">' + esc(u.error.message) + '</span> (' + u.count + ' in all)';
  } else if (u.kind === 'reject') {
    const r = document.querySelector('.rejects');
    r.innerHTML = u.count + ' frames refused; latest: stage ' + u.reject.rank + ' ' + esc(u.reject.code) + ': ' + esc(u.reject.message);
  }
}

const es = new EventSource('/events');
es.onopen = () => { conn.textContent = 'live'; };
es.onerror = () => { conn.textContent = 'disconnected, retrying'; };
es.onmessage = (m) => apply(JSON.parse(m.data));
`;

/** The offline inspector page for `job`: everything inline, live through /events. */
export function inspectorPage(job: string): string {
  const j = job.replace(/[^A-Za-z0-9_-]/g, '');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>troupe inspect: ${j}</title><style>${STYLE}</style></head>
<body>
<header><h1>troupe inspect · job ${j}</h1><span id="conn">connecting…</span></header>
<main>
<section id="actors"><h2>Actors (<span id="actor-count">0</span>)</h2><div id="actor-list"></div></section>
<section id="timeline"><h2>Pipeline timeline</h2><div id="steps">no step yet</div></section>
<section id="stages"><h2>Stages</h2><table class="stats"><thead><tr><th>rank</th><th>step</th><th>busy s</th><th>idle s</th>\
<th title="the stage machine handling events">machine s</th><th title="judging and assembling frames">frames s</th><th>F</th><th>B</th>\
<th>peak in flight</th><th>in MB</th><th>out MB</th><th>tensors</th><th>refused</th></tr></thead><tbody></tbody></table></section>
<section id="errors"><h2>Errors</h2><div class="errors">none</div><div class="rejects"></div></section>
</main>
<script>const JOB = ${JSON.stringify(j)};${SCRIPT}</script>
</body></html>`;
}

/** A page that embeds Stately's inspector (online) and feeds it the events of /ws. */
export function statelyBridgePage(inspectorUrl = 'https://stately.ai/inspect'): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>troupe · Stately inspector</title>
<style>html,body{height:100%;margin:0}iframe{width:100%;height:100%;border:0}</style></head>
<body><iframe id="inspector" src="${inspectorUrl}"></iframe>
<script>
const frame = document.getElementById('inspector');
const buffer = [];
let connected = false;
window.addEventListener('message', (e) => {
  if (e.data && e.data.type === '@statelyai.connected') {
    connected = true;
    for (const ev of buffer.splice(0)) frame.contentWindow.postMessage(ev, '*');
  }
});
const ws = new WebSocket('ws://' + location.host + '/ws');
ws.onmessage = (m) => {
  const ev = JSON.parse(m.data);
  if (connected) frame.contentWindow.postMessage(ev, '*');
  else buffer.push(ev);
};
</script></body></html>`;
}
