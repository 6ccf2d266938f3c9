// The wprobe web UI: one ES module, no framework, no build step.
//
// The page is served without the token; it takes it from the URL fragment
// (`#token=…`, as `wprobe serve` prints it), keeps it in sessionStorage and
// sends it as the bearer header on every API call. Live events come as
// Server-Sent Events read through fetch (EventSource cannot send headers).
//
// Tables that update live are patched row by row, keyed by id, so that the
// keyboard focus and the checkboxes survive each refresh.

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- token & URL

const TOKEN_KEY = 'wprobe-token';
const VIEWS = ['targets', 'symbols', 'probes', 'plugins', 'events', 'aggregations'];

/** The view state that goes in the URL fragment: view=…&target=…&… */
const url = { view: 'targets', target: '', symbol: '', probe: '', plugin: '' };

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete('token');
  }
  for (const k of Object.keys(url)) url[k] = params.get(k) || (k === 'view' ? 'targets' : '');
  if (!VIEWS.includes(url.view)) url.view = 'targets';
  // The token leaves the visible URL (and the history entry) at once.
  if (token) writeFragment(true);
}

function writeFragment(replace = true) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(url)) if (v !== '' && v != null) params.set(k, v);
  const hash = '#' + params.toString();
  if (hash === location.hash) return;
  if (replace) history.replaceState(null, '', hash);
  else history.pushState(null, '', hash);
}

function setUrl(changes, push = false) {
  Object.assign(url, changes);
  writeFragment(!push);
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API; throws ApiError with the server's `error` text. */
async function api(method, path, body, { contentType, signal } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  let payload = body;
  if (body !== undefined && contentType === undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  } else if (contentType) {
    headers['Content-Type'] = contentType;
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `cannot reach the service (${e.message}); is wprobe serve still running?`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const msg = (json && json.error) || text || res.statusText;
    if (res.status === 401) showLogin();
    throw new ApiError(res.status, `${method} ${path.split('?')[0]}: ${msg}`);
  }
  return json;
}

// ---------------------------------------------------------------- messages

function showError(e) {
  if (e && e.name === 'AbortError') return;
  $('alert-text').textContent = e instanceof Error ? e.message : String(e);
  $('alert').hidden = false;
}

function clearError() {
  $('alert').hidden = true;
  $('alert-text').textContent = '';
}

let noticeTimer = 0;
function notice(text) {
  $('notice').textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($('notice').textContent = ''), 6000);
}

/** Runs an action; shows its failure in the alert region. */
async function act(fn) {
  try {
    const r = await fn();
    clearError();
    return r;
  } catch (e) {
    showError(e);
    return undefined;
  }
}

// ---------------------------------------------------------------- DOM helpers

/** el('td', {class: 'mono'}, 'text', child, …) */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}

function button(text, onclick, attrs = {}) {
  return el('button', { type: 'button', onclick, ...attrs }, text);
}

/**
 * Makes `tbody` show one row per item, in order, keyed by `key(item)`:
 * rows are created once by `create(item)` and then patched by
 * `update(tr, item)`, so focus and checkbox state survive.
 */
function syncRows(tbody, items, key, create, update) {
  const old = new Map();
  for (const tr of tbody.children) old.set(tr.dataset.key, tr);
  let prev = null;
  for (const item of items) {
    const k = String(key(item));
    let tr = old.get(k);
    if (tr) old.delete(k);
    else {
      tr = create(item);
      tr.dataset.key = k;
    }
    update(tr, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const tr of old.values()) tr.remove();
}

/** Sets a cell's text only when it changed (cheap, keeps selection). */
function setText(node, text) {
  const t = String(text);
  if (node.textContent !== t) node.textContent = t;
}

/** Refills a <select> keeping the chosen value when it is still offered. */
function fillSelect(select, options, keep = select.value) {
  const key = JSON.stringify(options);
  if (select.dataset.options === key) {
    if (keep !== undefined && [...select.options].some((o) => o.value === keep)) select.value = keep;
    return;
  }
  select.dataset.options = key;
  select.replaceChildren(...options.map(([v, label]) => el('option', { value: v }, label)));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function debounce(fn, ms) {
  let t = 0;
  return (...a) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...a), ms);
  };
}

const hex = (n) => (typeof n === 'bigint' || typeof n === 'number' ? '0x' + n.toString(16) : String(n));
const hexOff = (n) => '+0x' + n.toString(16);

/** A u64 as JSON may carry it: number, or (for ≥ 2^53, see parseEvent) a decimal string. */
function u64hex(v) {
  if (v == null) return '';
  try {
    return '0x' + BigInt(v).toString(16);
  } catch {
    return String(v);
  }
}

function fmtNs(ns) {
  if (ns < 1e3) return `${Math.round(ns)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(1)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

/** 1024 → 1K, as bpftrace labels its buckets. */
function short(n) {
  const units = ['', 'K', 'M', 'G', 'T', 'P', 'E'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && v % 1024 === 0 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v}${units[i]}`;
}

const fmtTime = (secs) => new Date(secs * 1000).toLocaleString();

/** Splits a command line on spaces, honouring "double" and 'single' quotes. */
function splitArgs(line) {
  const out = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(line))) out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2] ?? m[3]);
  return out;
}

/** Parses a JSON object typed by hand; returns [value, error text]. */
function parseConfig(text) {
  const t = text.trim();
  if (!t) return [{}, ''];
  try {
    const v = JSON.parse(t);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return [null, 'the configuration must be a JSON object, like {"key": 1}'];
    return [v, ''];
  } catch (e) {
    return [null, `invalid JSON: ${e.message}`];
  }
}

/** Wires a config textarea to its error line (and an optional button). */
function watchConfig(textarea, errorNode, submit) {
  const check = () => {
    const [, err] = parseConfig(textarea.value);
    errorNode.textContent = err;
    textarea.setAttribute('aria-invalid', err ? 'true' : 'false');
    if (submit) submit.disabled = !!err;
  };
  textarea.addEventListener('input', check);
  check();
}

// ---------------------------------------------------------------- shared data

/** The latest lists, shared by the views' selects. */
const data = { targets: [], probes: [], plugins: [] };

async function loadTargets() {
  data.targets = await api('GET', '/api/targets');
  const opts = data.targets.map((t) => [String(t.id), `#${t.id} ${t.cmdline.split(' ')[0].split('/').pop()} (pid ${t.pid}, ${t.state})`]);
  fillSelect($('sym-target'), opts, url.target || undefined);
  fillSelect($('probe-target'), opts, url.target || undefined);
  fillSelect($('probes-filter'), [['', 'all'], ...opts], url.target);
  return data.targets;
}

async function loadProbes() {
  data.probes = await api('GET', '/api/probes');
  const opts = data.probes.map((p) => [String(p.id), `#${p.id} ${p.spec}`]);
  fillSelect($('ev-probe'), [['', 'all probes'], ...opts], url.probe);
  fillSelect($('attach-probe'), opts);
  return data.probes;
}

async function loadPlugins() {
  data.plugins = await api('GET', '/api/plugins');
  const opts = [['', 'none'], ...data.plugins.map((p) => [String(p.id), `${p.name} (v${p.latest ? p.latest.version : '?'})`])];
  fillSelect($('sym-plugin'), opts);
  fillSelect($('probe-plugin'), opts);
  return data.plugins;
}

/** The plugins list of a new probe from a plugin select and config box. */
function chosenPlugins(select, textarea) {
  if (!select.value) return [];
  const [config, err] = parseConfig(textarea.value);
  if (err) throw new Error(`plugin configuration: ${err}`);
  return [{ plugin: Number(select.value), config }];
}

// ---------------------------------------------------------------- views & tabs

const views = {}; // name → {enter(), leave()}
let current = null;

function showView(name, { push = false, focusTab = false } = {}) {
  if (!VIEWS.includes(name)) name = 'targets';
  if (current && current !== name && views[current].leave) views[current].leave();
  for (const v of VIEWS) {
    const tab = $(`tab-${v}`);
    const on = v === name;
    tab.setAttribute('aria-selected', on ? 'true' : 'false');
    tab.tabIndex = on ? 0 : -1;
    $(`view-${v}`).hidden = !on;
  }
  if (focusTab) $(`tab-${name}`).focus();
  const entering = current !== name;
  current = name;
  setUrl({ view: name }, push && entering);
  document.title = `wprobe — ${name}`;
  if (entering && views[name].enter) views[name].enter();
}

function initTabs() {
  const tabs = VIEWS.map((v) => $(`tab-${v}`));
  for (const tab of tabs) {
    tab.addEventListener('click', () => showView(tab.dataset.view, { push: true }));
    tab.addEventListener('keydown', (e) => {
      const i = tabs.indexOf(tab);
      let j = null;
      if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
      else if (e.key === 'ArrowLeft') j = (i + tabs.length - 1) % tabs.length;
      else if (e.key === 'Home') j = 0;
      else if (e.key === 'End') j = tabs.length - 1;
      if (j === null) return;
      e.preventDefault();
      showView(tabs[j].dataset.view, { push: true, focusTab: true });
    });
  }
}

/** A poll that runs while its view is shown. */
function poller(fn, ms) {
  let timer = 0;
  let running = false;
  const tick = async () => {
    if (!running) return;
    try {
      await fn();
    } catch (e) {
      showError(e);
    }
    if (running) timer = setTimeout(tick, ms);
  };
  return {
    start() {
      if (running) return;
      running = true;
      tick();
    },
    stop() {
      running = false;
      clearTimeout(timer);
    },
  };
}

// ---------------------------------------------------------------- Targets

let processes = [];

function targetState(t) {
  if (t.state !== 'exited' || !t.exit) return t.state;
  if (t.exit.signal != null) return `exited (signal ${t.exit.signal})`;
  return `exited (code ${t.exit.code})`;
}

function renderTargets() {
  $('targets-empty').hidden = data.targets.length > 0;
  syncRows(
    $('targets-body'),
    data.targets,
    (t) => t.id,
    (t) => {
      const tr = el('tr', {},
        el('td', { class: 'mono' }, t.id),
        el('td', { class: 'mono' }, t.pid),
        el('td', {}, t.kind),
        el('td', { class: 'mono cmd', title: t.exe }, t.cmdline),
        el('td', { class: 'state' }),
        el('td', { class: 'actions' },
          button('Symbols', () => { setUrl({ target: String(t.id) }); showView('symbols', { push: true }); },
            { 'aria-label': `Symbols of target ${t.id}` }),
          button('Probes', () => { setUrl({ target: String(t.id) }); showView('probes', { push: true }); },
            { 'aria-label': `Probes of target ${t.id}` }),
          button('Detach', () => detachTarget(t), { 'aria-label': `Detach target ${t.id}` }),
          // Only a process the service started may be ended from here.
          t.kind === 'spawned' && t.state === 'running'
            ? button('Kill', () => detachTarget(t, true), { 'aria-label': `Kill target ${t.id}` })
            : null));
      return tr;
    },
    (tr, t) => {
      const s = tr.querySelector('.state');
      setText(s, targetState(t));
      s.dataset.state = t.state;
    });
}

async function detachTarget(t, kill = false) {
  await act(async () => {
    await api('DELETE', `/api/targets/${t.id}${kill ? '?kill=true' : ''}`);
    notice(`${kill ? 'Killed' : 'Detached'} target ${t.id} (pid ${t.pid}).`);
    await loadTargets();
    renderTargets();
  });
}

function renderProcesses() {
  const q = $('proc-search').value.trim().toLowerCase();
  const match = processes.filter((p) => !q || String(p.pid) === q || p.cmdline.toLowerCase().includes(q) || (p.user || '').toLowerCase().includes(q));
  const shown = match.slice(0, 100);
  $('proc-more').textContent = match.length > shown.length ? `${match.length - shown.length} more; refine the search` : `${match.length} processes`;
  syncRows(
    $('proc-body'),
    shown,
    (p) => p.pid,
    (p) => el('tr', {},
      el('td', { class: 'mono' }, p.pid),
      el('td', {}, p.user ?? p.uid),
      el('td', { class: 'mono cmd', title: p.cmdline }, p.cmdline),
      el('td', {}, button('Attach', () => attachProcess(p), { 'aria-label': `Attach to pid ${p.pid}` }))),
    () => {});
}

async function loadProcesses() {
  processes = await api('GET', '/api/processes');
  renderProcesses();
}

async function attachProcess(p) {
  await act(async () => {
    const t = await api('POST', '/api/targets', { pid: p.pid });
    notice(`Attached to pid ${t.pid}: target ${t.id}.`);
    setUrl({ target: String(t.id) });
    await loadTargets();
    renderTargets();
  });
}

const targetsPoll = poller(async () => {
  await loadTargets();
  renderTargets();
}, 2000);

function initTargets() {
  $('spawn-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      const argv = splitArgs($('spawn-cmd').value);
      if (!argv.length) throw new Error('type the command to spawn');
      const t = await api('POST', '/api/targets', { spawn: argv });
      notice(`Spawned ${argv[0]}: target ${t.id}, pid ${t.pid}.`);
      setUrl({ target: String(t.id) });
      await loadTargets();
      renderTargets();
    });
  });
  $('proc-search').addEventListener('input', renderProcesses);
  $('proc-refresh').addEventListener('click', () => act(loadProcesses));
  views.targets = {
    enter() {
      targetsPoll.start();
      act(loadProcesses);
    },
    leave() {
      targetsPoll.stop();
    },
  };
}

// ---------------------------------------------------------------- Symbols

let symbolsReq = null;

async function searchSymbols() {
  const id = $('sym-target').value;
  if (!id) {
    $('sym-status').textContent = 'Choose a target first (Targets view).';
    $('sym-body').replaceChildren();
    return;
  }
  if (symbolsReq) symbolsReq.abort();
  symbolsReq = new AbortController();
  const q = $('sym-search').value.trim();
  $('sym-status').textContent = 'Searching…';
  try {
    const list = await api('GET', `/api/targets/${id}/symbols?limit=300&q=${encodeURIComponent(q)}`, undefined, { signal: symbolsReq.signal });
    $('sym-status').textContent = list.length >= 300 ? 'The first 300 functions; refine the search.' : `${list.length} functions`;
    syncRows(
      $('sym-body'),
      list,
      (s) => `${s.module}:${s.name}:${s.address}`,
      (s) => el('tr', {},
        el('td', {}, button(s.demangled || s.name, () => openSymbol(s.module, s.name), { class: 'link mono', title: s.name })),
        el('td', { class: 'mono' }, hex(s.address)),
        el('td', { class: 'mono num' }, s.size),
        el('td', { class: 'mono cmd', title: s.module }, s.module.split('/').pop())),
      () => {});
    clearError();
  } catch (e) {
    if (e.name !== 'AbortError') {
      $('sym-status').textContent = '';
      showError(e);
    }
  }
}

/** The module part of a spec: a short stem for libraries, the path otherwise. */
function specModule(module) {
  return module;
}

async function openSymbol(module, name) {
  const id = $('sym-target').value;
  setUrl({ symbol: `${module}:${name}` });
  await act(async () => {
    const d = await api('GET', `/api/targets/${id}/disasm?count=32&symbol=${encodeURIComponent(`${module}:${name}`)}`);
    showDisasm(d, name);
  });
}

function showDisasm(d, name) {
  $('disasm-card').hidden = false;
  $('disasm-title').textContent = d.symbol;
  $('disasm-sub').textContent = `${d.module} · ${hex(d.address)} · ${d.size} bytes`;
  const mod = specModule(d.module);
  const rows = d.instructions.map((ins) => {
    const where = ins.offset === 0 ? `${mod}:${name}` : `${mod}:${name}+0x${ins.offset.toString(16)}`;
    const verdict = ins.probe
      ? el('span', { class: 'ok' }, `yes (${ins.decision})`)
      : el('span', { class: 'refused' }, `refused: ${ins.reason}`);
    const actions = el('td', { class: 'actions' });
    if (ins.probe) {
      actions.append(button('Entry probe', () => createFromSymbol(`uprobe:${where}`),
        { 'aria-label': `Entry probe at ${hexOff(ins.offset)}` }));
      if (ins.offset === 0) {
        actions.append(button('Return probe', () => createFromSymbol(`uretprobe:${where}` + ($('sym-ret-entry').checked ? ' entry' : '')),
          { 'aria-label': 'Return probe' }));
      }
    }
    return el('tr', { class: ins.probe ? '' : 'dim' },
      el('td', { class: 'mono' }, hexOff(ins.offset)),
      el('td', { class: 'mono' }, hex(ins.address)),
      el('td', { class: 'mono bytes' }, ins.bytes),
      el('td', { class: 'mono' }, ins.text),
      el('td', {}, verdict),
      actions);
  });
  $('disasm-body').replaceChildren(...rows);
}

async function createFromSymbol(spec) {
  await act(async () => {
    const plugins = chosenPlugins($('sym-plugin'), $('sym-config'));
    const p = await api('POST', '/api/probes', { target: Number($('sym-target').value), spec, plugins, enabled: true });
    notice(`Probe ${p.id} created: ${p.spec} (${p.state}).`);
    await loadProbes();
  });
}

function initSymbols() {
  const search = debounce(searchSymbols, 250);
  $('sym-search').addEventListener('input', search);
  $('sym-target').addEventListener('change', () => {
    setUrl({ target: $('sym-target').value, symbol: '' });
    $('disasm-card').hidden = true;
    searchSymbols();
  });
  watchConfig($('sym-config'), $('sym-config-err'));
  views.symbols = {
    async enter() {
      await act(() => Promise.all([loadTargets(), loadPlugins()]));
      await searchSymbols();
      if (url.symbol) {
        const i = url.symbol.lastIndexOf(':');
        if (i > 0) await openSymbol(url.symbol.slice(0, i), url.symbol.slice(i + 1));
      }
    },
  };
}

// ---------------------------------------------------------------- Probes

const selected = new Set();

function pluginSummary(p) {
  const div = el('div', { class: 'plugins' });
  for (const pl of p.plugins) {
    let text = `${pl.name} v${pl.version}: ${pl.calls} calls, ${pl.faults} faults`;
    if (pl.calls) text += `, ${fmtNs(pl.busy_ns / pl.calls)}/call`;
    const line = el('div', {}, text);
    if (pl.quarantined) line.append(el('div', { class: 'refused' }, `quarantined: ${pl.quarantined}`));
    else if (pl.last_fault) line.append(el('div', { class: 'warn' }, `last fault: ${pl.last_fault}`));
    div.append(line);
  }
  return div;
}

function renderProbes() {
  const filter = url.target;
  const list = data.probes.filter((p) => !filter || String(p.target) === filter);
  for (const id of [...selected]) if (!data.probes.some((p) => p.id === id)) selected.delete(id);
  $('probes-empty').hidden = list.length > 0;
  syncRows(
    $('probes-body'),
    list,
    (p) => p.id,
    (p) => {
      const box = el('input', { type: 'checkbox', 'aria-label': `Select probe ${p.id}` });
      box.addEventListener('change', () => {
        if (box.checked) selected.add(p.id);
        else selected.delete(p.id);
        updateSelection();
      });
      const toggle = button('', () => setEnabled([p.id], !toggle.dataset.enabled), { class: 'toggle' });
      return el('tr', {},
        el('td', {}, box),
        el('td', { class: 'mono' }, p.id),
        el('td', { class: 'mono' }, p.target),
        el('td', { class: 'mono spec' }, p.spec),
        el('td', { class: 'state' }),
        el('td', { class: 'mono num hits' }),
        el('td', { class: 'mono num nmissed' }),
        el('td', { class: 'mono num dropped' }),
        el('td', { class: 'plugins-cell' }),
        el('td', { class: 'actions' }, toggle,
          button('Delete', () => deleteProbes([p.id]), { 'aria-label': `Delete probe ${p.id}` })));
    },
    (tr, p) => {
      const state = tr.querySelector('.state');
      // How it is placed: a jump (no stop per hit) or int3, and why.
      const placed = p.state === 'armed' && p.placements.length ? ` (${p.placements[0].placement})` : '';
      setText(state, p.state + (p.reason ? `: ${p.reason}` : '') + placed);
      state.dataset.state = p.state;
      setText(tr.querySelector('.hits'), p.hits);
      setText(tr.querySelector('.nmissed'), p.nmissed);
      setText(tr.querySelector('.dropped'), p.dropped);
      const cell = tr.querySelector('.plugins-cell');
      const sum = pluginSummary(p);
      if (cell.dataset.html !== sum.innerHTML) {
        cell.dataset.html = sum.innerHTML;
        cell.replaceChildren(sum);
      }
      tr.querySelector('input[type=checkbox]').checked = selected.has(p.id);
      const toggle = tr.querySelector('.toggle');
      toggle.dataset.enabled = p.enabled ? '1' : '';
      setText(toggle, p.enabled ? 'Disable' : 'Enable');
      toggle.setAttribute('aria-label', `${p.enabled ? 'Disable' : 'Enable'} probe ${p.id}`);
    });
  updateSelection(list);
}

function updateSelection(list = data.probes.filter((p) => !url.target || String(p.target) === url.target)) {
  const n = selected.size;
  $('probes-selected').textContent = `${n} selected`;
  for (const b of ['probes-enable', 'probes-disable', 'probes-delete']) $(b).disabled = n === 0;
  const all = $('probes-all');
  all.checked = list.length > 0 && list.every((p) => selected.has(p.id));
  all.indeterminate = !all.checked && list.some((p) => selected.has(p.id));
}

async function setEnabled(ids, enabled) {
  await act(async () => {
    // One request per probe; the first refusal stops and is shown.
    for (const id of ids) await api('PATCH', `/api/probes/${id}`, { enabled });
    notice(`${enabled ? 'Enabled' : 'Disabled'} probe${ids.length > 1 ? 's' : ''} ${ids.join(', ')}.`);
    await loadProbes();
    renderProbes();
  });
}

async function deleteProbes(ids) {
  await act(async () => {
    for (const id of ids) {
      await api('DELETE', `/api/probes/${id}`);
      selected.delete(id);
    }
    notice(`Deleted probe${ids.length > 1 ? 's' : ''} ${ids.join(', ')}.`);
    await loadProbes();
    renderProbes();
  });
}

const probesPoll = poller(async () => {
  await loadProbes();
  renderProbes();
}, 1000);

let checkReq = null;
let checkSeq = 0;

/** The dry run of the spec being typed: where it would go, or the refusal. */
async function checkSpec() {
  const out = $('probe-check');
  const spec = $('probe-spec').value.trim();
  const target = $('probe-target').value;
  if (checkReq) checkReq.abort();
  if (!spec) {
    out.replaceChildren();
    out.dataset.state = '';
    return;
  }
  if (!target) {
    out.textContent = 'Choose a target first.';
    return;
  }
  checkReq = new AbortController();
  const seq = ++checkSeq;
  try {
    const r = await api('POST', '/api/probes?dry_run=true', { target: Number(target), spec }, { signal: checkReq.signal });
    if (seq !== checkSeq) return;
    const probe = r.probes[0];
    out.dataset.state = 'ok';
    out.replaceChildren(el('div', { class: 'ok' }, `would go to ${probe.placements.length} place${probe.placements.length === 1 ? '' : 's'}:`),
      ...probe.placements.map((pl) => el('div', {},
        `pid ${pl.pid} ${hex(pl.address)} ${pl.location}  ${pl.instruction ?? ''} (${pl.decision ?? ''})${pl.note ? ' — ' + pl.note : ''}`)));
  } catch (e) {
    if (e.name === 'AbortError' || seq !== checkSeq) return;
    out.dataset.state = 'refused';
    out.replaceChildren(el('div', { class: 'refused' }, `refused: ${e.message.replace(/^POST \/api\/probes: /, '')}`));
  }
}

function initProbes() {
  $('probe-spec').addEventListener('input', debounce(checkSpec, 300));
  $('probe-target').addEventListener('change', checkSpec);
  $('probe-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      const plugins = chosenPlugins($('probe-plugin'), $('probe-config'));
      const body = { target: Number($('probe-target').value), spec: $('probe-spec').value.trim(), plugins, enabled: $('probe-enabled').checked };
      const p = await api('POST', '/api/probes', body);
      notice(`Probe ${p.id} created (${p.state}).`);
      await loadProbes();
      renderProbes();
    });
  });
  $('probes-filter').addEventListener('change', () => {
    setUrl({ target: $('probes-filter').value });
    renderProbes();
  });
  $('probes-all').addEventListener('change', () => {
    const list = data.probes.filter((p) => !url.target || String(p.target) === url.target);
    for (const p of list) {
      if ($('probes-all').checked) selected.add(p.id);
      else selected.delete(p.id);
    }
    renderProbes();
  });
  $('probes-enable').addEventListener('click', () => setEnabled([...selected], true));
  $('probes-disable').addEventListener('click', () => setEnabled([...selected], false));
  $('probes-delete').addEventListener('click', () => deleteProbes([...selected]));
  views.probes = {
    async enter() {
      await act(() => Promise.all([loadTargets(), loadPlugins()]));
      probesPoll.start();
    },
    leave() {
      probesPoll.stop();
    },
  };
}

// ---------------------------------------------------------------- Plugins

let pendingFile = null;

function nameFromFile(file) {
  // latency.c.wasm → latency
  return file.name.replace(/\.wasm$/, '').replace(/\.(c|rust|rs)$/, '').replace(/[^A-Za-z0-9_.-]/g, '_');
}

function chooseFile(file) {
  pendingFile = file;
  if (!$('upload-name').value) $('upload-name').value = nameFromFile(file);
  notice(`Chosen ${file.name} (${file.size} bytes); Upload stores it.`);
}

async function upload(file, name) {
  const bytes = await file.arrayBuffer();
  const r = await api('POST', `/api/plugins?name=${encodeURIComponent(name)}`, bytes, { contentType: 'application/wasm' });
  let text = `Uploaded ${r.name} version ${r.version.version} (plugin ${r.id}).`;
  if (r.replaced) text += ` Replaced on ${r.replaced} probe${r.replaced > 1 ? 's' : ''}.`;
  notice(text);
  if (r.replace_errors && r.replace_errors.length) showError(`the new version could not replace: ${r.replace_errors.join('; ')}`);
  await loadPlugins();
  renderPlugins();
  return r;
}

function renderPlugins() {
  $('plugins-empty').hidden = data.plugins.length > 0;
  syncRows(
    $('plugins-body'),
    data.plugins,
    (p) => p.id,
    (p) => el('tr', {},
      el('td', { class: 'mono' }, p.id),
      el('td', {}, button(p.name, () => openPlugin(p.id), { class: 'link', 'aria-label': `Details of plugin ${p.name}` })),
      el('td', { class: 'mono version' }),
      el('td', { class: 'mono sha' }),
      el('td', { class: 'mono num size' }),
      el('td', { class: 'state' }),
      el('td', { class: 'mono num faults' }),
      el('td', { class: 'actions' },
        button('New version', () => replacePlugin(p.name), { 'aria-label': `Upload a new version of ${p.name}` }),
        button('Delete', () => deletePlugin(p), { 'aria-label': `Delete plugin ${p.name}` }))),
    (tr, p) => {
      setText(tr.querySelector('.version'), p.latest ? `v${p.latest.version} of ${p.versions}` : '');
      setText(tr.querySelector('.sha'), p.latest ? p.latest.sha256.slice(0, 12) : '');
      setText(tr.querySelector('.size'), p.latest ? p.latest.size : '');
      const d = pluginDetails.get(p.id);
      setText(tr.querySelector('.state'), d ? d.state : '…');
      setText(tr.querySelector('.faults'), d ? d.faults : '');
    });
}

const pluginDetails = new Map();

let replacing = null;

function replacePlugin(name) {
  replacing = name;
  $('replace-file').value = '';
  $('replace-file').click();
}

async function deletePlugin(p) {
  await act(async () => {
    await api('DELETE', `/api/plugins/${p.id}`);
    notice(`Deleted plugin ${p.name}.`);
    if (url.plugin === String(p.id)) closePlugin();
    await loadPlugins();
    renderPlugins();
  });
}

function openPlugin(id) {
  setUrl({ plugin: String(id) });
  $('plugin-detail').hidden = false;
  refreshPluginDetail().then(() => $('plugin-detail').focus());
}

function closePlugin() {
  setUrl({ plugin: '' });
  $('plugin-detail').hidden = true;
}

async function refreshPluginDetail() {
  if (!url.plugin) return;
  const d = await api('GET', `/api/plugins/${url.plugin}`);
  pluginDetails.set(d.id, d);
  $('plugin-detail').hidden = false;
  $('plugin-detail-h').textContent = `Plugin ${d.name} (#${d.id})`;
  $('plugin-detail-state').textContent = `State: ${d.state} · faults ${d.faults} · ${d.versions.length} version${d.versions.length === 1 ? '' : 's'}`;
  syncRows($('plugin-versions'), d.versions.slice().reverse(), (v) => v.version,
    (v) => el('tr', {},
      el('td', { class: 'mono' }, `v${v.version}`),
      el('td', { class: 'mono sha', title: v.sha256 }, v.sha256.slice(0, 16)),
      el('td', { class: 'mono num' }, v.size),
      el('td', { class: 'mono' }, v.manifest ? `${v.manifest.name} ${v.manifest.version}` : ''),
      el('td', {}, fmtTime(v.created))),
    () => {});
  syncRows($('plugin-attachments'), d.attachments, (a) => a.probe,
    (a) => el('tr', {},
      el('td', { class: 'mono' }, `#${a.probe}`),
      el('td', { class: 'mono v' }),
      el('td', { class: 'mono config' }),
      el('td', { class: 'mono num calls' }),
      el('td', { class: 'mono num faults' }),
      el('td', { class: 'why' }),
      el('td', {}, button('Detach', () => detachPlugin(a.probe, d.id), { 'aria-label': `Detach from probe ${a.probe}` }))),
    (tr, a) => {
      setText(tr.querySelector('.v'), `v${a.version}`);
      setText(tr.querySelector('.config'), JSON.stringify(a.config));
      setText(tr.querySelector('.calls'), a.calls);
      setText(tr.querySelector('.faults'), a.faults);
      setText(tr.querySelector('.why'), a.quarantined ? `quarantined: ${a.quarantined}` : a.last_fault || '');
    });
  const log = $('plugin-log');
  const text = d.log.length ? d.log.join('\n') : '(nothing logged)';
  if (log.textContent !== text) {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = text;
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
}

/** A probe's plugins as PATCH wants them. */
const patchList = (probe) => probe.plugins.map((pl) => ({ plugin: pl.plugin, config: pl.config }));

async function detachPlugin(probeId, pluginId) {
  await act(async () => {
    const probe = await api('GET', `/api/probes/${probeId}`);
    const plugins = patchList(probe).filter((pl) => pl.plugin !== pluginId);
    await api('PATCH', `/api/probes/${probeId}`, { plugins });
    notice(`Detached from probe ${probeId}.`);
    await refreshPluginDetail();
  });
}

const pluginsPoll = poller(async () => {
  await Promise.all([loadPlugins(), loadProbes()]);
  // Each plugin's state and faults come from its detail.
  const details = await Promise.all(data.plugins.map((p) => api('GET', `/api/plugins/${p.id}`)));
  for (const d of details) pluginDetails.set(d.id, d);
  renderPlugins();
  await refreshPluginDetail();
}, 2000);

function initPlugins() {
  $('upload-file').addEventListener('change', () => {
    const f = $('upload-file').files[0];
    if (f) chooseFile(f);
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (f) {
      chooseFile(f);
      $('upload-name').focus();
    }
  });
  $('upload-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      if (!pendingFile) throw new Error('choose a .wasm file first (or drop one on the box)');
      await upload(pendingFile, $('upload-name').value.trim());
      pendingFile = null;
      $('upload-file').value = '';
      $('upload-name').value = '';
    });
  });
  $('replace-file').addEventListener('change', () => {
    const f = $('replace-file').files[0];
    if (f && replacing) act(() => upload(f, replacing));
  });
  $('plugin-detail-close').addEventListener('click', closePlugin);
  $('plugin-detail').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closePlugin();
  });
  watchConfig($('attach-config'), $('attach-config-err'), $('attach-submit'));
  $('attach-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      const [config, err] = parseConfig($('attach-config').value);
      if (err) throw new Error(`configuration: ${err}`);
      const probeId = $('attach-probe').value;
      if (!probeId) throw new Error('there is no probe to attach to yet; create one in the Probes view');
      const probe = await api('GET', `/api/probes/${probeId}`);
      const plugins = patchList(probe).filter((pl) => pl.plugin !== Number(url.plugin));
      plugins.push({ plugin: Number(url.plugin), config });
      await api('PATCH', `/api/probes/${probeId}`, { plugins });
      notice(`Attached to probe ${probeId}.`);
      await refreshPluginDetail();
    });
  });
  views.plugins = {
    enter() {
      if (!url.plugin) $('plugin-detail').hidden = true;
      pluginsPoll.start();
    },
    leave() {
      pluginsPoll.stop();
    },
  };
}

// ---------------------------------------------------------------- Live events

// Every event is counted; a bounded ring keeps the newest raw lines, and
// only the newest rows matching the filter are drawn, a few times a second.
const RING = 5000;
const DRAWN = 60;
const ev = {
  ring: new Array(RING),
  head: 0, // next write
  size: 0,
  total: 0,
  lost: 0,
  lastLoss: '',
  paused: false,
  abort: null,
  rateBase: { t: 0, n: 0 },
  rate: 0,
  dirty: false,
  frame: 0,
  timer: 0,
  byKey: new Map(), // seq → parsed event, for the rows drawn
};

/** Quotes integers too large for a double (registers, return values) before parsing. */
function parseEvent(raw) {
  return JSON.parse(raw.replace(/([:,[]\s*)(\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
}

function pushEvent(raw) {
  ev.ring[ev.head] = raw;
  ev.head = (ev.head + 1) % RING;
  if (ev.size < RING) ev.size++;
  ev.total++;
  ev.dirty = true;
}

async function streamEvents() {
  stopEvents();
  const ctl = new AbortController();
  ev.abort = ctl;
  const probe = $('ev-probe').value;
  const path = '/api/events' + (probe ? `?probe=${probe}` : '');
  while (!ctl.signal.aborted) {
    try {
      const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, signal: ctl.signal });
      if (!res.ok) {
        let msg = res.statusText;
        try {
          msg = (await res.json()).error;
        } catch {}
        throw new ApiError(res.status, `GET /api/events: ${msg}`);
      }
      setStreamState('connected');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        // Whole records only (they end with a blank line); the rest waits
        // for the next chunk. A record is kept as it came: its data is
        // taken out only if it is drawn.
        let start = 0;
        let end;
        while ((end = buf.indexOf('\n\n', start)) >= 0) {
          dispatch(buf.slice(start, end));
          start = end + 2;
        }
        buf = buf.slice(start);
      }
      setStreamState('stream ended; reconnecting');
    } catch (e) {
      if (ctl.signal.aborted) return;
      showError(e);
      setStreamState('disconnected; retrying');
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

let streamState = '';
function setStreamState(s) {
  streamState = s;
  ev.dirty = true;
}

/** The data of an SSE record (its `data:` lines joined). */
function recordData(record) {
  const out = [];
  for (const line of record.split('\n')) {
    if (line.startsWith('data:')) out.push(line.slice(line[5] === ' ' ? 6 : 5).replace(/\r$/, ''));
  }
  return out.join('\n');
}

function dispatch(record) {
  if (record.startsWith('event: hit') || record.startsWith('event:hit')) pushEvent(record);
  else if (record.startsWith('event: loss') || record.startsWith('event:loss')) {
    try {
      const l = JSON.parse(recordData(record));
      ev.lost += l.lost || 0;
      ev.lastLoss = l.reason || '';
    } catch {}
    ev.dirty = true;
  }
  // Comments (keep-alives) and other records are ignored.
}

function stopEvents() {
  if (ev.abort) ev.abort.abort();
  ev.abort = null;
}

/** The newest `n` raw events matching the thread filter, newest first. */
function newest(n) {
  const tid = $('ev-tid').value.trim();
  const re = tid ? new RegExp(`"tid":${tid.replace(/\D/g, '')}[,}]`) : null;
  const out = [];
  for (let i = 0; i < ev.size && out.length < n; i++) {
    const raw = ev.ring[(ev.head - 1 - i + RING) % RING];
    if (!re || re.test(raw)) out.push(raw);
  }
  return out;
}

function drawEvents() {
  ev.frame = 0;
  const now = performance.now();
  if (now - ev.rateBase.t >= 1000) {
    ev.rate = ((ev.total - ev.rateBase.n) * 1000) / (now - ev.rateBase.t || 1);
    ev.rateBase = { t: now, n: ev.total };
  }
  $('ev-stats').textContent = `${ev.total} received · ${Math.round(ev.rate)}/s · ${ev.lost} lost · ${streamState}${ev.paused ? ' · paused' : ''}`;
  const loss = $('ev-loss');
  loss.hidden = ev.lost === 0;
  if (ev.lost) setText(loss, `${ev.lost} events lost${ev.lastLoss ? ` (${ev.lastLoss})` : ''}; the counts above include only those received.`);
  if (ev.paused || !ev.dirty) return;
  ev.dirty = false;
  const shown = newest(DRAWN).map((r) => {
    const seq = /"seq":(\d+)/.exec(r);
    return (seq && ev.byKey.get(seq[1])) || parseEvent(recordData(r));
  });
  ev.byKey = new Map(shown.map((e) => [String(e.seq), e]));
  syncRows(
    $('ev-body'),
    shown,
    (e) => e.seq,
    (e) => {
      const ret = e.ret ? `${u64hex(e.ret.value)}${e.ret.latency_ns != null ? ` in ${fmtNs(Number(e.ret.latency_ns))}` : ''}` : '';
      return el('tr', {},
        el('td', {}, button(String(e.seq), () => openEvent(e.seq), { class: 'link mono', 'aria-label': `Event ${e.seq} details` })),
        el('td', { class: 'mono' }, (Number(e.time_ns) / 1e9).toFixed(6)),
        el('td', { class: 'mono' }, e.probe),
        el('td', {}, e.kind),
        el('td', { class: 'mono' }, `${e.pid}/${e.tid}`),
        el('td', { class: 'mono cmd', title: e.symbol || '' }, (e.symbol || hex(e.address)).split('/').pop()),
        el('td', { class: 'mono' }, (e.args || []).slice(0, 3).map(u64hex).join(' ')),
        el('td', { class: 'mono' }, ret));
    },
    () => {});
}

function scheduleDraw() {
  // Four frames a second: enough to look live, cheap at any rate.
  clearInterval(ev.timer);
  ev.timer = setInterval(() => {
    if (!ev.frame) ev.frame = requestAnimationFrame(drawEvents);
  }, 250);
}

const openEvents = new Map(); // seq → event shown in the detail pane

function kv(title, obj, fmt = u64hex) {
  const rows = Object.entries(obj || {});
  if (!rows.length) return null;
  return el('div', {},
    el('h4', {}, title),
    el('table', { class: 'grid kv', 'aria-label': title },
      el('tbody', {}, ...rows.map(([k, v]) => el('tr', {}, el('th', { class: 'mono' }, k),
        el('td', { class: 'mono' }, typeof v === 'object' && v !== null ? JSON.stringify(v) : fmt(v)),
        typeof v === 'object' || typeof fmt(v) !== 'string' || !/^0x/.test(fmt(v)) ? null : el('td', { class: 'mono muted' }, String(v)))))));
}

function openEvent(seq) {
  const e = ev.byKey.get(String(seq)) || openEvents.get(String(seq));
  if (!e) return;
  openEvents.clear();
  openEvents.set(String(seq), e);
  const body = $('ev-detail-body');
  const args = {};
  (e.args || []).forEach((a, i) => (args[`arg${i + 1}`] = a));
  body.replaceChildren(...[
    el('p', { class: 'mono' }, `probe ${e.probe} · ${e.kind} · pid ${e.pid} tid ${e.tid} · ${e.symbol || ''} · ${hex(e.address)}`),
    e.ret ? kv('Return', { value: e.ret.value, latency_ns: e.ret.latency_ns, entry_time_ns: e.ret.entry_time_ns, return_address: e.ret.return_address }) : null,
    kv('Captures', e.captures, (v) => (typeof v === 'string' ? JSON.stringify(v) : u64hex(v))),
    kv('Arguments', args),
    kv('Registers', e.regs),
    e.records && e.records.length ? el('div', {}, el('h4', {}, 'Plugin records'), el('pre', { class: 'log' }, e.records.map((r) => JSON.stringify(r)).join('\n'))) : null,
  ].filter(Boolean));
  $('ev-detail-h').textContent = `Event ${e.seq}`;
  $('ev-detail').hidden = false;
  $('ev-detail').focus();
}

function closeEvent() {
  $('ev-detail').hidden = true;
  openEvents.clear();
}

function initEvents() {
  $('ev-pause').addEventListener('click', () => {
    ev.paused = !ev.paused;
    $('ev-pause').textContent = ev.paused ? 'Resume' : 'Pause';
    ev.dirty = true;
  });
  $('ev-clear').addEventListener('click', () => {
    ev.head = ev.size = ev.total = ev.lost = 0;
    ev.rateBase = { t: performance.now(), n: 0 };
    ev.dirty = true;
    $('ev-body').replaceChildren();
  });
  $('ev-probe').addEventListener('change', () => {
    setUrl({ probe: $('ev-probe').value });
    ev.dirty = true;
    streamEvents();
  });
  $('ev-tid').addEventListener('input', () => (ev.dirty = true));
  $('ev-detail-close').addEventListener('click', closeEvent);
  views.events = {
    enter() {
      // The stream starts at once; the probe list (for the filter) follows.
      if (url.probe) fillSelect($('ev-probe'), [['', 'all probes'], [url.probe, `#${url.probe}`]], url.probe);
      streamEvents();
      scheduleDraw();
      act(loadProbes);
    },
    leave() {
      stopEvents();
      clearInterval(ev.timer);
    },
  };
}

// ---------------------------------------------------------------- Aggregations

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

/** A bpftrace-style histogram: one horizontal bar per [low, high) bucket. */
function histogram(title, buckets) {
  const rowH = 18;
  const labelW = 150;
  const barW = 320;
  const countW = 80;
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const total = buckets.reduce((s, b) => s + b.count, 0);
  const h = rowH * buckets.length + 4;
  const s = svg('svg', { width: labelW + barW + countW, height: h, viewBox: `0 0 ${labelW + barW + countW} ${h}`, role: 'img', 'aria-label': `${title}: ${total} values in ${buckets.length} buckets`, class: 'hist' });
  buckets.forEach((b, i) => {
    const y = i * rowH + 2;
    s.append(
      svg('text', { x: labelW - 8, y: y + rowH - 5, 'text-anchor': 'end', class: 'label' }, `[${short(b.low)}, ${short(b.high)})`),
      svg('rect', { x: labelW, y: y + 2, width: Math.max(b.count ? 1 : 0, (b.count / max) * barW), height: rowH - 5, class: 'bar' }),
      svg('text', { x: labelW + barW + 6, y: y + rowH - 5, class: 'count' }, String(b.count)));
  });
  return s;
}

function mapView(name, map) {
  const box = el('div', { class: 'map' }, el('h4', { class: 'mono' }, `${name} `, el('span', { class: 'muted' }, `(${map.kind})`)));
  const hist = map.kind === 'hist' || map.kind === 'lhist';
  if (hist) {
    for (const { key, value } of map.values) {
      const label = key == null ? name : `${name}[${key}]`;
      if (key != null) box.append(el('div', { class: 'mono muted' }, `key ${key}`));
      box.append(histogram(label, value));
    }
  } else {
    const values = map.values.slice().sort((a, b) => Number(b.value) - Number(a.value));
    box.append(el('table', { class: 'grid kv', 'aria-label': name },
      el('thead', {}, el('tr', {}, el('th', {}, 'key'), el('th', { class: 'num' }, map.kind))),
      el('tbody', {}, ...values.slice(0, 50).map((v) => el('tr', {},
        el('td', { class: 'mono' }, v.key == null ? '(all)' : typeof v.key === 'object' ? JSON.stringify(v.key) : v.key),
        el('td', { class: 'mono num' }, typeof v.value === 'number' && !Number.isInteger(v.value) ? v.value.toFixed(2) : v.value))))));
    if (values.length > 50) box.append(el('p', { class: 'muted' }, `and ${values.length - 50} more keys`));
  }
  return box;
}

async function refreshAggregations() {
  const [aggs] = await Promise.all([api('GET', '/api/aggregations'), loadProbes()]);
  $('agg-empty').hidden = aggs.length > 0;
  const body = $('agg-body');
  const seen = new Set();
  for (const a of aggs) {
    const key = `${a.probe}:${a.plugin}`;
    seen.add(key);
    let card = body.querySelector(`[data-key="${key}"]`);
    if (!card) {
      card = el('section', { class: 'card agg', 'data-key': key, 'aria-label': `probe ${a.probe} ${a.name}` });
      body.append(card);
    }
    const probe = data.probes.find((p) => p.id === a.probe);
    const perCall = a.calls ? fmtNs(a.busy_ns / a.calls) : '–';
    card.replaceChildren(
      el('h3', {}, `Probe ${a.probe} · ${a.name} v${a.version}`),
      el('p', { class: 'mono spec' }, probe ? probe.spec : ''),
      el('p', { class: 'overhead' },
        `hits ${probe ? probe.hits : '?'} · calls ${a.calls} · faults ${a.faults} · plugin CPU ${fmtNs(a.busy_ns)} · overhead ${perCall}/call`),
      ...Object.entries(a.maps).map(([name, map]) => mapView(name, map)));
  }
  for (const card of [...body.children]) if (!seen.has(card.dataset.key)) card.remove();
}

const aggPoll = poller(refreshAggregations, 1000);

function initAggregations() {
  views.aggregations = {
    enter() {
      aggPoll.start();
    },
    leave() {
      aggPoll.stop();
    },
  };
}

// ---------------------------------------------------------------- start

function showLogin() {
  $('login').hidden = false;
  $('tabs').hidden = true;
  for (const v of VIEWS) $(`view-${v}`).hidden = true;
  if (current && views[current].leave) views[current].leave();
  current = null;
  $('login-token').focus();
}

async function start() {
  $('login').hidden = true;
  $('tabs').hidden = false;
  showView(url.view);
}

function init() {
  readFragment();
  initTabs();
  initTargets();
  initSymbols();
  initProbes();
  initPlugins();
  initEvents();
  initAggregations();
  $('alert-close').addEventListener('click', clearError);
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('login-token').value.trim());
    $('login-token').value = '';
    start();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('ev-detail').hidden) closeEvent();
    else if (!$('plugin-detail').hidden) closePlugin();
  });
  // Back/forward, or a fragment edited by hand.
  window.addEventListener('hashchange', () => {
    const before = url.view;
    readFragment();
    if (!token()) return showLogin();
    if (url.view !== before || current === null) showView(url.view);
    else if (views[current] && views[current].enter) views[current].enter();
  });
  fetch('/api/health').then((r) => r.json()).then((h) => ($('version').textContent = `v${h.version}`)).catch(() => {});
  if (!token()) showLogin();
  else start();
}

init();
