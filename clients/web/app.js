/* nesf latent interpolation viewer.
 *
 * Talks to nesfd's JSON API (same origin unless an API URL is set):
 * GET /health, GET /models, POST /interpolate.  Rendering is 3Dmol.js
 * (vendor/3Dmol-min.js); everything else is plain DOM.
 * URL parameters preselect a run: ?from=ZnS&to=CdS&steps=6&quality=paper&run=1&api=URL&model=NAME
 * (aa=1|0 forces antialiasing on or off).
 * document.body.dataset.state is idle | running | done | error, for tests. */
'use strict';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);

// the paper's decoding algorithm instead of the daemon's default (fast
// decoding); same as nesf-client --paper
const PAPER_OPTIONS = { mode: 'paper' };

const state = {
  examples: [],         // [{name, description, structure}]
  input: { from: null, to: null },  // {label, payload, formula?}
  result: null,         // the /interpolate answer
  frames: [],
  current: 0,
  viewer: null,
  playing: null,
};

/* ---------- API ---------- */

class ApiError extends Error {
  constructor(message, detail) { super(message); this.detail = detail || {}; }
}

function apiBase() {
  return $('#api').value.trim().replace(/\/+$/, '');
}

async function api(path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = $('#token').value.trim();
  if (token) headers.Authorization = 'Bearer ' + token;
  const where = apiBase() || location.origin;
  let res;
  try {
    res = await fetch(apiBase() + path, {
      method: body === undefined ? 'GET' : 'POST',
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`cannot reach nesfd at ${where} (${e.message}); is the daemon running?`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const id = err.request_id || res.headers.get('X-Request-Id') || '';
    let msg = `${path}: HTTP ${res.status}` + (err.code ? ` ${err.code}` : '') +
              `: ${err.message || text.slice(0, 200) || res.statusText}`;
    if (res.status === 401) msg += ' (set the bearer token under "server")';
    throw new ApiError(msg + (id ? `\nrequest id ${id}` : ''), err);
  }
  if (data === null) throw new ApiError(`${path}: answer is not JSON`);
  return data;
}

/* ---------- structures ---------- */

function formulaOf(frame) {
  const s = frame.structure || {};
  const f = frame.formula ?? frame.reduced_formula ?? s.formula ?? s.reduced_formula;
  return typeof f === 'string' ? f : '';
}

function latticeMatrix(s) {
  const lat = s.lattice || {};
  return lat.matrix || s.matrix || null;
}

function inverse3(m) {
  const [a, b, c] = m;
  const det = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) +
              a[2] * (b[0] * c[1] - b[1] * c[0]);
  if (!isFinite(det) || Math.abs(det) < 1e-12) return null;
  const r = (x) => x / det;
  return [
    [r(b[1] * c[2] - b[2] * c[1]), r(a[2] * c[1] - a[1] * c[2]), r(a[1] * b[2] - a[2] * b[1])],
    [r(b[2] * c[0] - b[0] * c[2]), r(a[0] * c[2] - a[2] * c[0]), r(a[2] * b[0] - a[0] * b[2])],
    [r(b[0] * c[1] - b[1] * c[0]), r(a[1] * c[0] - a[0] * c[1]), r(a[0] * b[1] - a[1] * b[0])],
  ];
}

const fracToCart = (f, m) => [0, 1, 2].map((j) => f[0] * m[0][j] + f[1] * m[1][j] + f[2] * m[2][j]);

/* Sites as [{el, cart, frac}] from whichever coordinate set the JSON has. */
function sites(s) {
  const m = latticeMatrix(s);
  const species = s.species || [];
  const cart = s.cart_coords || s.cart;
  const frac = s.frac_coords || s.frac;
  const inv = m ? inverse3(m) : null;
  return species.map((sp, i) => {
    const el = typeof sp === 'string' ? sp : (sp.element || sp.symbol || String(sp));
    let c = cart && cart[i], f = frac && frac[i];
    if (!c && f && m) c = fracToCart(f, m);
    if (!f && c && inv) f = fracToCart(c, inv);
    return { el, cart: c, frac: f };
  }).filter((x) => x.cart);
}

/* Atoms on cell faces, edges and corners drawn again at the opposite side,
 * as a crystallographer expects to see a conventional cell. */
function boundaryImages(list, m, tol = 0.02) {
  const out = [];
  for (const s of list) {
    if (!s.frac) continue;
    // per axis, the positions of this atom's images that lie in the cell
    // (within tol of a face); decoded atoms may sit slightly outside it
    const axes = s.frac.map((x) => {
      const w = x - Math.floor(x);
      return [w, w + 1, w - 1].filter((c) => c >= -tol && c <= 1 + tol);
    });
    for (const a of axes[0]) for (const b of axes[1]) for (const c of axes[2]) {
      const f = [a, b, c];
      if (f.every((v, k) => Math.abs(v - s.frac[k]) < 1e-6)) continue; // the atom itself
      out.push({ el: s.el, cart: fracToCart(f, m), frac: f });
    }
  }
  return out;
}

function elementColor(el) {
  const table = ($3Dmol.elementColors && $3Dmol.elementColors.Jmol) || {};
  const c = table[el] ?? table[el.toUpperCase()] ?? 0xff1493;
  return '#' + c.toString(16).padStart(6, '0');
}

/* "BaTiO3" -> "BaTiO<sub>3</sub>" (text stays "BaTiO3") */
function formulaHTML(f) {
  if (!f) return '<span class="empty">no atoms</span>';
  return f.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/(\d+(\.\d+)?)/g, '<sub>$1</sub>');
}

/* ---------- inputs ---------- */

function parseLatentText(text) {
  const nums = text.trim().split(/[\s,]+/).map(Number);
  if (!nums.length || nums.some((x) => !isFinite(x))) throw new Error('not a list of numbers');
  return nums;
}

/* A file becomes what /interpolate accepts as an endpoint: {cif}, a
 * structure JSON, or {latent: [...]}. */
async function readEndpointFile(file) {
  const text = await file.text();
  const name = file.name;
  if (/\.cif$/i.test(name) || /^\s*(data_|#)/.test(text))
    return { label: name, payload: { cif: text } };
  if (/\.json$/i.test(name) || /^\s*[[{]/.test(text)) {
    let j;
    try { j = JSON.parse(text); } catch (e) { throw new Error(`${name}: not valid JSON (${e.message})`); }
    if (Array.isArray(j) && j.every((x) => typeof x === 'number')) return { label: name, payload: { latent: j } };
    if (j && Array.isArray(j.latent)) return { label: name, payload: { latent: j.latent } };
    if (j && Array.isArray(j.latents) && j.latents.length) return { label: `${name} [first latent]`, payload: { latent: j.latents[0] } };
    if (j && Array.isArray(j.structures) && j.structures.length) {
      const s0 = j.structures[0];
      return { label: `${name} [first structure]`, payload: s0.structure || s0 };
    }
    if (j && (j.lattice || j.cif)) return { label: name, payload: j };
    throw new Error(`${name}: JSON is neither a structure, a {"cif"} object nor a latent`);
  }
  try {
    return { label: name, payload: { latent: parseLatentText(text) } };
  } catch (_) {
    throw new Error(`${name}: expected a CIF, a structure JSON or a latent vector`);
  }
}

function showPicked(side) {
  const p = state.input[side];
  const el = $(`#${side}-picked`);
  if (!p) { el.textContent = ''; return; }
  const kind = p.payload.latent ? `latent (${p.payload.latent.length} numbers)` :
               p.payload.cif ? 'CIF' : 'structure JSON';
  el.innerHTML = (p.formula ? `<span class="formula">${formulaHTML(p.formula)}</span> · ` : '') +
                 `${escapeHTML(p.label)} <span class="meta">(${kind})</span>`;
}

function escapeHTML(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));
}

function pickExample(side, name, preview = true) {
  const ex = state.examples.find((e) => e.name === name);
  if (!ex) return;
  state.input[side] = { label: ex.description, payload: ex.structure, formula: ex.name };
  $(`#${side}-example`).value = name;
  $(`#${side}-file`).value = '';
  showPicked(side);
  if (preview) previewInput(side);
}

/* Before the first interpolation the view shows the chosen input itself
 * (structure JSON only: a CIF or a latent is only known after decoding). */
function previewInput(side) {
  const p = state.input[side];
  if (state.frames.length || !p || !p.payload.lattice || typeof $3Dmol === 'undefined') return;
  render({ structure: p.payload }, true);
  $('#frame-info').innerHTML = `<span class="big formula">${formulaHTML(p.formula || '')}</span>` +
    `<span><span class="k">input</span>${side === 'from' ? 'A' : 'B'} · ${escapeHTML(p.label)}</span>`;
}

/* ---------- viewer ---------- */

/* Multisampling on a software WebGL (SwiftShader, llvmpipe: no GPU, or a
 * headless browser) makes the first frame take tens of seconds. */
function softwareGL() {
  try {
    const gl = document.createElement('canvas').getContext('webgl');
    if (!gl) return true;
    const ext = gl.getExtension('WEBGL_debug_renderer_info');
    const name = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    const lose = gl.getExtension('WEBGL_lose_context');
    if (lose) lose.loseContext();
    return /swiftshader|llvmpipe|softpipe|software/i.test(name);
  } catch (_) {
    return true;
  }
}

function ensureViewer() {
  if (state.viewer) return state.viewer;
  state.viewer = $3Dmol.createViewer($('#viewer'), {
    backgroundColor: 'white', orthographic: true,
    antialias: params.has('aa') ? params.get('aa') === '1' : !softwareGL(),
  });
  return state.viewer;
}

function render(frame, resetView) {
  const v = ensureViewer();
  const s = frame.structure || {};
  const m = latticeMatrix(s);
  v.removeAllModels();
  v.removeAllShapes();
  v.removeAllLabels();
  const main = sites(s);
  const toAtoms = (list) => list.map((x, i) => ({ elem: x.el, x: x.cart[0], y: x.cart[1], z: x.cart[2], serial: i }));
  const model = v.addModel();
  model.addAtoms(toAtoms(main));
  model.setStyle({}, { sphere: { colorscheme: 'Jmol', scale: 0.36 } });
  if (m && $('#images').checked) {
    const img = v.addModel();
    img.addAtoms(toAtoms(boundaryImages(main, m)));
    img.setStyle({}, { sphere: { colorscheme: 'Jmol', scale: 0.36, opacity: 0.7 } });
  }
  if (m) {
    // 3Dmol's matrix has the cell vectors as columns
    model.setCrystMatrix(new $3Dmol.Matrix3(m[0][0], m[1][0], m[2][0], m[0][1], m[1][1], m[2][1],
                                             m[0][2], m[1][2], m[2][2]));
    const axis = (color) => ({ color, radius: 0.07, midpos: -1 });
    const label = (color) => ({ fontColor: color, showBackground: false, alignment: 'center', inFront: true, fontSize: 15 });
    v.addUnitCell(model, {
      box: { color: '#59606e' },
      alabel: 'a', blabel: 'b', clabel: 'c',
      astyle: axis('#c0392b'), bstyle: axis('#1e8e4e'), cstyle: axis('#2f6fdb'),
      alabelstyle: label('#c0392b'), blabelstyle: label('#1e8e4e'), clabelstyle: label('#2f6fdb'),
    });
  }
  if (resetView) resetCamera(v);
  else if (m) centerOnCell(v, m);
  v.render();
  renderLegend(main);
  $('#placeholder').style.display = 'none';
}

/* Keeps rotation and zoom but moves the cell's centre to the middle of the
 * view, so frames of different cell sizes stay centred while stepping.
 * (3Dmol's view: [-centre x, y, z, zoom, quaternion x, y, z, w].) */
function centerOnCell(v, m) {
  const view = v.getView();
  for (let j = 0; j < 3; j++) view[j] = -0.5 * (m[0][j] + m[1][j] + m[2][j]);
  v.setView(view);
}

/* an oblique view shows all three cell axes at once */
function resetCamera(v) {
  const view = v.getView();
  view.splice(4, 4, 0, 0, 0, 1); // identity rotation: rotate() below accumulates
  v.setView(view);
  v.zoomTo();
  v.rotate(-62, 'x');
  v.rotate(-28, 'y');
  v.zoom(1.15);
}

function renderLegend(list) {
  const counts = new Map();
  for (const s of list) counts.set(s.el, (counts.get(s.el) || 0) + 1);
  $('#legend').innerHTML = [...counts].map(([el, n]) =>
    `<div class="el" data-element="${escapeHTML(el)}"><span class="sw" style="background:${elementColor(el)}"></span>` +
    `<span>${escapeHTML(el)}</span><span class="n">×${n}</span></div>`).join('');
}

/* ---------- frames ---------- */

function fmt(x, d = 3) { return typeof x === 'number' && isFinite(x) ? x.toFixed(d) : '–'; }

function latticeParams(s) {
  const l = s.lattice || {};
  if (typeof l.a === 'number') return l;
  const m = latticeMatrix(s);
  if (!m) return {};
  const len = (v) => Math.hypot(v[0], v[1], v[2]);
  const ang = (u, w) => Math.acos((u[0] * w[0] + u[1] * w[1] + u[2] * w[2]) / (len(u) * len(w))) * 180 / Math.PI;
  return { a: len(m[0]), b: len(m[1]), c: len(m[2]), alpha: ang(m[1], m[2]), beta: ang(m[0], m[2]), gamma: ang(m[0], m[1]) };
}

function volume(s) {
  const m = latticeMatrix(s);
  if (!m) return NaN;
  const [a, b, c] = m;
  return Math.abs(a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]));
}

function spaceGroup(s) {
  const g = s.spacegroup ?? s.space_group;
  if (!g) return '–';
  if (typeof g === 'string') return g;
  if (typeof g === 'number') return `#${g}`;
  return [g.symbol, g.number ? `(#${g.number})` : ''].filter(Boolean).join(' ') || '–';
}

/* What the daemon says about how far to trust a frame: its confidence
 * (cycle distance as a percentile of the training set's; with the
 * self-check, whether E(D(z)) decodes to the same composition) and warnings. */
function trustHTML(s) {
  let h = '';
  const c = s.confidence;
  if (c && typeof c.percentile === 'number')
    h += `<span class="confidence" title="cycle distance |E(D(z)) − z| = ${fmt(c.cycle_distance, 2)}; ` +
      `higher percentiles of the training set's distances mean less trustworthy">` +
      `<span class="k">cycle-distance percentile</span>${fmt(c.percentile, 0)}</span>`;
  if (c && typeof c.self_consistent === 'boolean') // asked with "self-check"
    h += `<span class="self-check${c.self_consistent ? '' : ' failed'}" title="E(D(z)) decodes to ` +
      `${c.redecoded_atoms ?? 'no'} atoms: ${c.self_consistent ? 'the same' : 'not the same'} composition">` +
      `self-consistent: ${c.self_consistent ? 'yes' : 'no'}</span>`;
  for (const w of s.warnings || [])
    h += `<span class="warning" data-code="${escapeHTML(w.code || '')}">⚠ ${escapeHTML(w.message || w.code || '')}</span>`;
  return h;
}

function natoms(frame) {
  const s = frame.structure || {};
  return s.natoms ?? s.num_atoms ?? (s.species ? s.species.length : 0);
}

function cifOf(frame) {
  return frame.cif || (frame.structure && frame.structure.cif) || null;
}

function selectFrame(i, resetView) {
  if (!state.frames.length) return;
  i = Math.max(0, Math.min(state.frames.length - 1, i));
  state.current = i;
  const f = state.frames[i];
  const s = f.structure || {};
  const p = latticeParams(s);
  if (f.error) {
    $('#frame-info').innerHTML = `<span class="big">–</span><span><span class="k">t</span>${fmt(f.t, 3)}</span>` +
      `<span class="failed">this step did not decode: ${escapeHTML(f.error.message || f.error.code || '')}</span>`;
    $('#legend').innerHTML = '';
    if (state.viewer) {
      state.viewer.removeAllModels();
      state.viewer.removeAllShapes();
      state.viewer.removeAllLabels();
      state.viewer.render();
    }
  } else {
    render(f, resetView);
    $('#frame-info').innerHTML =
      `<span class="big formula">${formulaHTML(formulaOf(f))}</span>` +
      `<span><span class="k">t</span>${fmt(f.t, 3)}</span>` +
      `<span><span class="k">atoms</span>${natoms(f)}</span>` +
      `<span><span class="k">space group</span>${escapeHTML(spaceGroup(s))}</span>` +
      `<span><span class="k">a b c</span>${fmt(p.a, 3)} ${fmt(p.b, 3)} ${fmt(p.c, 3)} Å</span>` +
      `<span><span class="k">α β γ</span>${fmt(p.alpha, 1)} ${fmt(p.beta, 1)} ${fmt(p.gamma, 1)}°</span>` +
      `<span><span class="k">V</span>${fmt(volume(s), 1)} Å³</span>` + trustHTML(s);
  }
  document.querySelectorAll('#strip li').forEach((li, k) => li.classList.toggle('current', k === i));
  // scroll the strip only (scrollIntoView would scroll the page too)
  const cur = document.querySelector('#strip li.current');
  const strip = $('#strip');
  if (cur && (cur.offsetLeft < strip.scrollLeft || cur.offsetLeft + cur.offsetWidth > strip.scrollLeft + strip.clientWidth))
    strip.scrollLeft = cur.offsetLeft - (strip.clientWidth - cur.offsetWidth) / 2;
  $('#slider').value = String(i);
  $('#download-cif').disabled = !cifOf(f);
  $('#download-cif').title = cifOf(f) ? '' : 'the server sent no CIF for this frame';
}

function frameFileName(i, f) {
  const formula = formulaOf(f) || 'empty';
  return `nesf_${String(i).padStart(2, '0')}_t${fmt(f.t, 3)}_${formula}.cif`;
}

function download(name, text, type) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function renderStrip() {
  const strip = $('#strip');
  strip.innerHTML = '';
  const n = state.frames.length;
  state.frames.forEach((f, i) => {
    const li = document.createElement('li');
    const formula = formulaOf(f);
    li.dataset.index = String(i);
    li.dataset.formula = formula;
    li.dataset.t = String(f.t);
    if (i > 0 && formula !== formulaOf(state.frames[i - 1])) li.classList.add('changed');
    const t = typeof f.t === 'number' ? f.t : (n > 1 ? i / (n - 1) : 0);
    const bar = `linear-gradient(90deg, var(--a) ${(1 - t) * 100}%, var(--b) ${(1 - t) * 100}%)`;
    const meta = f.error ? `<span class="meta failed" title="${escapeHTML(f.error.message || '')}">` +
                           `${escapeHTML(f.error.code || 'decode failed')}</span>`
                         : `<span class="meta">${natoms(f)} atoms · ${escapeHTML(spaceGroup(f.structure || {}))}</span>`;
    li.innerHTML = `<span class="bar" style="background:${bar}"></span>` +
      `<span class="t">t = ${fmt(t, 2)}</span>` +
      `<span class="formula">${f.error ? '–' : formulaHTML(formula)}</span>` + meta;
    if (cifOf(f)) {
      const a = document.createElement('a');
      a.className = 'cif';
      a.href = '#';
      a.textContent = 'CIF ↓';
      a.title = frameFileName(i, f);
      a.addEventListener('click', (e) => {
        e.preventDefault();
        e.stopPropagation();
        download(frameFileName(i, f), cifOf(f), 'chemical/x-cif');
      });
      li.appendChild(a);
    }
    li.addEventListener('click', () => selectFrame(i));
    strip.appendChild(li);
  });
  $('#slider').max = String(Math.max(0, n - 1));
  $('#download-json').disabled = !n;
}

/* ---------- actions ---------- */

function setMessage(text, isError) {
  const m = $('#message');
  m.textContent = text || '';
  m.classList.toggle('error', !!isError);
}

function setBusy(busy) {
  $('#run').disabled = busy;
  $('#run').textContent = busy ? 'Interpolating…' : 'Interpolate';
  document.body.dataset.state = busy ? 'running' : document.body.dataset.state;
  // decoding on a CPU server takes a while: show that the page is waiting
  clearInterval(state.busyTimer);
  if (busy) {
    const t0 = performance.now();
    state.busyTimer = setInterval(() => {
      setMessage(`decoding on the server… ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }, 1000);
  }
}

async function interpolate() {
  stopPlaying();
  const { from, to } = state.input;
  if (!from || !to) { setMessage('Choose both a start (A) and an end (B) structure.', true); return; }
  const steps = parseInt($('#steps').value, 10);
  if (!(steps >= 2 && steps <= 64)) { setMessage('steps must be between 2 and 64', true); return; }
  const body = { from: from.payload, to: to.payload, steps, format: ['json', 'cif'] };
  if ($('#quality').value === 'paper') body.options = { ...PAPER_OPTIONS };
  if ($('#symmetrize').checked) {
    const symprec = parseFloat($('#symprec').value);
    if (!(symprec > 0 && symprec <= 1)) { setMessage('symprec must be in (0, 1] Å', true); return; }
    body.options = { ...(body.options || {}), symmetrize: true, symprec };
  }
  if ($('#self-check').checked) body.self_check = true;
  const model = $('#model').value;
  if (model) body.model = model;
  setBusy(true);
  setMessage('');
  const t0 = performance.now();
  try {
    const res = await api('/interpolate', body);
    const frames = res.frames || [];
    if (!frames.length) throw new ApiError('/interpolate answered no frames');
    state.result = res;
    state.frames = frames;
    renderStrip();
    selectFrame(0, true);
    const ms = performance.now() - t0;
    // the ends the model was not trained for (outside its training domain)
    const ends = Object.entries(res.warnings || {}).flatMap(([end, list]) =>
      (list || []).map((w) => `${end === 'from' ? 'A' : 'B'}: ${w.message || w.code}`));
    setMessage(`${frames.length} frames in ${(ms / 1000).toFixed(2)} s` +
               (res.model ? ` · model ${res.model}` : '') +
               (res.request_id ? ` · request ${res.request_id}` : '') +
               (ends.length ? ` · ⚠ outside the training domain: ${ends.join('; ')}` : ''));
    document.body.dataset.state = 'done';
  } catch (e) {
    setMessage(e.message, true);
    document.body.dataset.state = 'error';
  } finally {
    setBusy(false);
  }
}

function stopPlaying() {
  if (state.playing) clearInterval(state.playing);
  state.playing = null;
  $('#play').textContent = '▶ play';
}

function togglePlay() {
  if (state.playing) { stopPlaying(); return; }
  if (state.frames.length < 2) return;
  $('#play').textContent = '❚❚ pause';
  state.playing = setInterval(() => selectFrame((state.current + 1) % state.frames.length), 700);
}

async function checkHealth() {
  const el = $('#status');
  try {
    await api('/health');
    el.textContent = 'server ok';
    el.className = 'status ok';
  } catch (e) {
    el.textContent = 'server unreachable';
    el.className = 'status down';
    el.title = e.message;
  }
}

async function loadModels() {
  const sel = $('#model');
  try {
    const res = await api('/models');
    const list = Array.isArray(res) ? res : (res.models || []);
    sel.innerHTML = '';
    for (const m of list) {
      const name = typeof m === 'string' ? m : m.name;
      const o = document.createElement('option');
      o.value = name;
      o.textContent = name + (m.default ? ' (default)' : '');
      if (m.default || name === res.default) o.selected = true;
      sel.appendChild(o);
    }
    if (params.get('model')) sel.value = params.get('model');
  } catch (e) {
    sel.innerHTML = '<option value="">default</option>';
  }
}

async function loadExamples() {
  const res = await fetch('examples/examples.json');
  const j = await res.json();
  state.examples = j.examples || [];
  for (const side of ['from', 'to']) {
    const sel = $(`#${side}-example`);
    sel.innerHTML = '<option value="">example…</option>' + state.examples.map((e) =>
      `<option value="${escapeHTML(e.name)}">${escapeHTML(e.name)} — ${escapeHTML(e.description)}</option>`).join('');
  }
}

function wire() {
  for (const side of ['from', 'to']) {
    $(`#${side}-example`).addEventListener('change', (e) => pickExample(side, e.target.value));
    $(`#${side}-file`).addEventListener('change', async (e) => {
      const file = e.target.files[0];
      if (!file) return;
      try {
        state.input[side] = await readEndpointFile(file);
        $(`#${side}-example`).value = '';
        showPicked(side);
        previewInput(side);
        setMessage('');
      } catch (err) {
        setMessage(err.message, true);
      }
    });
  }
  $('#run').addEventListener('click', interpolate);
  $('#swap').addEventListener('click', () => {
    [state.input.from, state.input.to] = [state.input.to, state.input.from];
    const a = $('#from-example').value;
    $('#from-example').value = $('#to-example').value;
    $('#to-example').value = a;
    showPicked('from');
    showPicked('to');
  });
  $('#slider').addEventListener('input', (e) => { stopPlaying(); selectFrame(parseInt(e.target.value, 10)); });
  $('#play').addEventListener('click', togglePlay);
  $('#images').addEventListener('change', () => selectFrame(state.current));
  $('#reset-view').addEventListener('click', () => { if (state.viewer) { resetCamera(state.viewer); state.viewer.render(); } });
  $('#download-cif').addEventListener('click', () => {
    const f = state.frames[state.current];
    if (f && cifOf(f)) download(frameFileName(state.current, f), cifOf(f), 'chemical/x-cif');
  });
  $('#download-json').addEventListener('click', () => {
    if (state.result) download('nesf_interpolation.json', JSON.stringify(state.result, null, 1), 'application/json');
  });
  document.addEventListener('keydown', (e) => {
    if (e.target.matches('input, select, textarea')) return;
    if (e.key === 'ArrowRight') selectFrame(state.current + 1);
    if (e.key === 'ArrowLeft') selectFrame(state.current - 1);
  });
  for (const id of ['api', 'token']) {
    const el = $('#' + id);
    // a token never comes from the URL (it would end up in history and logs)
    el.value = (id === 'api' && params.get('api')) || localStorage.getItem('nesf.' + id) || '';
    el.addEventListener('change', () => {
      localStorage.setItem('nesf.' + id, el.value.trim());
      checkHealth();
      loadModels();
    });
  }
  window.addEventListener('resize', () => { if (state.viewer) state.viewer.resize(); });
}

async function main() {
  document.body.dataset.state = 'idle';
  wire();
  if (typeof $3Dmol === 'undefined') {
    setMessage('vendor/3Dmol-min.js did not load: the 3-D view is unavailable', true);
  }
  try {
    await loadExamples();
  } catch (e) {
    setMessage('could not load the bundled examples: ' + e.message, true);
  }
  pickExample('from', params.get('from') || 'ZnS', false);
  pickExample('to', params.get('to') || 'CdS', false);
  previewInput('from');
  if (params.get('steps')) $('#steps').value = params.get('steps');
  if (['fast', 'paper'].includes(params.get('quality'))) $('#quality').value = params.get('quality');
  await Promise.all([checkHealth(), loadModels()]);
  if (params.get('run') === '1') interpolate();
}

main();
