// Browser test of the web viewer (clients/web) served by a running nesfd.
//   node viewer.test.mjs            (env NESFD_URL, optional NESF_TOKEN,
//                                    NESF_WEB_OUT for screenshots, CHROMIUM)
// Drives Debian's chromium through playwright-core: picks two bundled
// examples, interpolates, compares the formulas shown with the API's own
// answer, uploads a CIF, downloads a frame's CIF, shows a server error, and
// checks the screenshot's 3-D canvas is not blank.  Ends "N passed, N failed".
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';

const here = dirname(fileURLToPath(import.meta.url));
const base = (process.env.NESFD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const token = process.env.NESF_TOKEN || '';
const outDir = process.env.NESF_WEB_OUT || join(here, 'out');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const examples = JSON.parse(readFileSync(join(here, '../../clients/web/examples/examples.json'), 'utf8')).examples;
const example = (name) => examples.find((e) => e.name === name).structure;
mkdirSync(outDir, { recursive: true });

const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
async function post(path, body) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...authHeaders },
    body: JSON.stringify(body),
  });
  const j = await res.json();
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${JSON.stringify(j)}`);
  return j;
}

// A request with the path sent byte for byte (fetch and browsers normalise "..").
function rawGet(path) {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path, method: 'GET', headers: authHeaders }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'] || '', body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const results = [];
async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

// Pixel statistics of a PNG, decoded by the browser itself.
async function pngStats(page, png) {
  return page.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let n = 0, sum = 0, sum2 = 0, nonWhite = 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      n++; sum += y; sum2 += y * y;
      if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) nonWhite++;
      colours.add((d[i] >> 4) << 8 | (d[i + 1] >> 4) << 4 | (d[i + 2] >> 4));
    }
    const mean = sum / n;
    return { width: c.width, height: c.height, std: Math.sqrt(sum2 / n - mean * mean),
             nonWhite: nonWhite / n, colours: colours.size };
  }, png.toString('base64'));
}

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--enable-unsafe-swiftshader'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 950 }, acceptDownloads: true });
const page = await context.newPage();
// software WebGL on a busy 2-core machine can be slow; the suite bounds the total
page.setDefaultTimeout(180000);
const consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
page.on('pageerror', (e) => consoleErrors.push(String(e)));
if (token) await context.addInitScript((t) => localStorage.setItem('nesf.token', t), token);

await check('static files: content types, index at /', async () => {
  const want = { '/': 'text/html', '/index.html': 'text/html', '/app.js': 'text/javascript', '/style.css': 'text/css',
                 '/vendor/3Dmol-min.js': 'text/javascript', '/examples/examples.json': 'application/json',
                 '/favicon.svg': 'image/svg+xml' };
  for (const [path, type] of Object.entries(want)) {
    const r = await rawGet(path);
    assert.equal(r.status, 200, path);
    assert.ok(r.type.startsWith(type), `${path}: content type ${r.type}, want ${type}`);
  }
});

await check('static files: no way out of the web root', async () => {
  for (const path of ['/../meson.build', '/..%2f..%2fmeson.build', '/%2e%2e/%2e%2e/meson.build',
                      '/vendor/../../../meson.build', '/%252e%252e/meson.build', '/.gitignore', '/nonexistent.js']) {
    const r = await rawGet(path);
    assert.ok(r.status >= 400 && r.status < 500, `${path}: HTTP ${r.status}`);
    assert.ok(!r.body.includes("project('nesf'"), `${path} leaked a file outside the root`);
  }
});

let shown = [];
let apiFrames = [];
await check('interpolate two bundled examples in the page', async () => {
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelectorAll('#from-example option').length > 2);
  await page.waitForSelector('#status.ok');
  await page.selectOption('#from-example', 'ZnS');
  await page.selectOption('#to-example', 'BaTiO3');
  await page.fill('#steps', '4');
  await page.selectOption('#quality', 'fast');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state));
  const msg = await page.textContent('#message');
  assert.equal(await page.getAttribute('body', 'data-state'), 'done', `page reports: ${msg}`);
  shown = await page.$$eval('#strip li', (lis) => lis.map((li) => ({
    t: Number(li.dataset.t), text: li.querySelector('.formula').textContent, formula: li.dataset.formula,
    cif: !!li.querySelector('a.cif') })));
  assert.equal(shown.length, 4);
});

await check('formulas shown match the API', async () => {
  assert.ok(shown.length, 'no frames shown');
  const api = await post('/interpolate', { from: example('ZnS'), to: example('BaTiO3'), steps: 4, format: ['json'], });
  apiFrames = api.frames;
  assert.equal(api.frames.length, shown.length);
  api.frames.forEach((f, i) => {
    assert.ok(Math.abs(f.t - shown[i].t) < 1e-9, `t of frame ${i}`);
    assert.equal(shown[i].formula, f.formula ?? '', `formula of frame ${i}`);
    // the visible text is the formula (digits as subscripts), "no atoms", or "–" for a failed step
    assert.equal(shown[i].text, f.error ? '–' : (f.formula || 'no atoms'), `visible formula of frame ${i}`);
    assert.equal(shown[i].cif, !f.error, `CIF link of frame ${i}`);
  });
  assert.ok(Math.abs(api.frames[0].t) < 1e-12 && Math.abs(api.frames.at(-1).t - 1) < 1e-12);
});

await check('3-D view, legend and screenshot', async () => {
  // the last step that decoded to atoms
  const k = apiFrames.findLastIndex((f) => !f.error && f.num_atoms > 0);
  assert.ok(k >= 0, 'the model decoded no step to atoms');
  await page.click(`#strip li:nth-child(${k + 1})`);
  const info = await page.textContent('#frame-info .formula');
  assert.equal(info, shown[k].text);
  // its confidence beside it, as the API gives it
  const conf = apiFrames[k].structure.confidence;
  if (conf && typeof conf.percentile === 'number')
    assert.equal((await page.textContent('#frame-info .confidence')).trim(),
                 `cycle-distance percentile${conf.percentile.toFixed(0)}`);
  const legend = await page.$$eval('#legend .el', (els) => els.map((e) => e.dataset.element));
  const species = (apiFrames[k].structure.species || []).map((x) => (typeof x === 'string' ? x : x.element));
  assert.deepEqual([...new Set(species)].sort(), [...legend].sort(), 'legend lists the frame\'s elements');
  await page.waitForTimeout(300);
  writeFileSync(join(outDir, 'viewer.png'), await page.screenshot());
  const canvas = await page.$('#viewer canvas');
  assert.ok(canvas, 'no canvas in the viewer');
  // the legend and buttons overlay the canvas: hide them so that only WebGL's pixels count
  await page.$$eval('#legend, #viewtools, #placeholder', (els) => els.forEach((e) => { e.style.visibility = 'hidden'; }));
  const png = await canvas.screenshot();
  await page.$$eval('#legend, #viewtools, #placeholder', (els) => els.forEach((e) => { e.style.visibility = ''; }));
  writeFileSync(join(outDir, 'viewer-canvas.png'), png);
  const st = await pngStats(page, png);
  console.log(`     canvas ${st.width}x${st.height}: luminance std ${st.std.toFixed(1)}, ` +
              `${(100 * st.nonWhite).toFixed(1)}% non-white, ${st.colours} colours`);
  assert.ok(st.width > 300 && st.height > 200, 'canvas too small');
  if (legend.length) {
    assert.ok(st.std > 5, 'canvas looks blank (flat luminance)');
    assert.ok(st.nonWhite > 0.005, 'canvas looks blank (almost all background)');
    assert.ok(st.colours > 20, 'canvas has too few colours for shaded spheres');
  } else {
    assert.ok(st.nonWhite > 0.001, 'not even the cell is drawn');
  }
});

await check('download a frame as CIF', async () => {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#download-cif')]);
  const path = join(outDir, dl.suggestedFilename());
  await dl.saveAs(path);
  const cif = readFileSync(path, 'utf8');
  assert.match(dl.suggestedFilename(), /\.cif$/);
  assert.match(cif, /_cell_length_a/);
  assert.match(cif, /_atom_site_fract_x/);
});

await check('upload a CIF as an end point', async () => {
  // a CIF written by the API itself, uploaded as structure A
  const api = await post('/interpolate', { from: example('NaCl'), to: example('MgO'), steps: 2, format: ['cif'], });
  const f0 = api.frames.find((f) => !f.error && f.num_atoms > 0);
  assert.ok(f0, 'no step decoded to atoms');
  const cif = f0.cif || (f0.structure && f0.structure.cif);
  assert.ok(cif, 'API sent no CIF');
  const dir = mkdtempSync(join(tmpdir(), 'nesf-web-'));
  const file = join(dir, 'start.cif');
  writeFileSync(file, cif);
  await page.setInputFiles('#from-file', file);
  await page.waitForFunction(() => document.querySelector('#from-picked').textContent.includes('start.cif'));
  await page.selectOption('#to-example', 'MgO');
  await page.fill('#steps', '2');
  await page.click('#run');
  await page.waitForFunction(() => document.body.dataset.state !== 'running' &&
    document.querySelectorAll('#strip li').length === 2);
  assert.equal(await page.getAttribute('body', 'data-state'), 'done', await page.textContent('#message'));
  const want = await post('/interpolate', { from: { cif }, to: example('MgO'), steps: 2, });
  const got = await page.$$eval('#strip li', (lis) => lis.map((li) => li.dataset.formula));
  assert.deepEqual(got, want.frames.map((f) => f.formula ?? ''));
  rmSync(dir, { recursive: true });
});

await check('a server error is shown with its request id', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nesf-web-'));
  const file = join(dir, 'broken.cif');
  writeFileSync(file, 'data_broken\n_cell_length_a 4.0\n_cell_length_b oops\nloop_\n_atom_site_label\n');
  await page.setInputFiles('#to-file', file);
  await page.click('#run');
  await page.waitForFunction(() => document.body.dataset.state === 'error');
  const msg = await page.textContent('#message');
  assert.match(msg, /HTTP 4\d\d/);
  assert.match(msg, /request id \S+/);
  rmSync(dir, { recursive: true });
});

await check('symmetrized frames show their space group', async () => {
  // ZnS to itself, refined at 0.5 Å: the shipped model's ZnS comes back as F-43m (docs/trust.md)
  await page.selectOption('#from-example', 'ZnS');
  await page.selectOption('#to-example', 'ZnS');
  await page.fill('#steps', '2');
  await page.check('#symmetrize');
  await page.fill('#symprec', '0.5');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state) && !document.querySelector('#run').disabled);
  assert.equal(await page.getAttribute('body', 'data-state'), 'done', await page.textContent('#message'));
  const api = await post('/interpolate', { from: example('ZnS'), to: example('ZnS'), steps: 2,
                                           options: { symmetrize: true, symprec: 0.5 } });
  const sg = api.frames[0].structure.spacegroup;
  assert.ok((await page.textContent('#frame-info')).includes(`${sg.symbol} (#${sg.number})`), 'space group shown');
  if (api.frames[0].structure.num_atoms === 8) assert.equal(sg.symbol, 'F-43m');
  await page.uncheck('#symmetrize');
});

await check('self-check: each frame says whether it is self-consistent', async () => {
  await page.selectOption('#from-example', 'ZnS');
  await page.selectOption('#to-example', 'BaTiO3');
  await page.fill('#steps', '3');
  await page.check('#self-check');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state) && !document.querySelector('#run').disabled);
  assert.equal(await page.getAttribute('body', 'data-state'), 'done', await page.textContent('#message'));
  const api = await post('/interpolate', { from: example('ZnS'), to: example('BaTiO3'), steps: 3, self_check: true });
  let seen = 0;
  for (const [i, f] of api.frames.entries()) {
    const c = f.structure && f.structure.confidence;
    if (!c || typeof c.self_consistent !== 'boolean') continue;
    await page.click(`#strip li:nth-child(${i + 1})`);
    assert.equal((await page.textContent('#frame-info .self-check')).trim(),
                 `self-consistent: ${c.self_consistent ? 'yes' : 'no'}`, `frame ${i}`);
    seen++;
  }
  assert.ok(seen > 0, 'no frame was checked');
  await page.uncheck('#self-check');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state) && !document.querySelector('#run').disabled);
  assert.equal(await page.$('#frame-info .self-check'), null, 'self-consistency shown without the self-check');
});

await check('no script errors in the page', async () => {
  // the failed request above logs a resource error; anything else is a bug
  const real = consoleErrors.filter((e) => !/Failed to load resource: the server responded with a status of 4\d\d/.test(e));
  assert.deepEqual(real, []);
});

await browser.close();
const passed = results.filter((r) => r[1]).length;
console.log(`screenshots in ${outDir}`);
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(passed === results.length ? 0 : 1);
