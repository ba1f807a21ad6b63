// Drives the web console in headless Chromium for crates/server/tests/console.rs, with
// puppeteer-core from console/node_modules (a devDependency; scripts/test runs npm ci there).
//
//   node console.mjs MODE URL [PATH]
//
// Env: CONSOLE_DIR (where console/package.json is), CHROMIUM (default /usr/bin/chromium).
// It prints one JSON object per line on stdout ({"step": ...}) and reads commands from stdin,
// one per line, so the Rust test can act between steps (publish a stream, check a kick).
// Any failed check prints {"step": "error", "message"} and exits 1; the Rust test fails on
// that, on a non-zero exit, and on a step it did not expect.
//
// Modes:
//   live URL PATH     loaded -> (stdin "published") -> appeared -> played (FLV, then HLS)
//                     -> chart (two screenshots differ) -> kicked -> gone -> done
//   missing URL PATH  the page without libraries: the note that says how to get them, and the
//                     path listed all the same
//   timeline URL PATH a recorded path's timeline clicked at 50%: plays from there
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const [mode, url, streamPath] = process.argv.slice(2);
const consoleDir = process.env.CONSOLE_DIR;
const chromium = process.env.CHROMIUM || '/usr/bin/chromium';

const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// Before the browser starts: report and exit. After: throw, so the browser is closed first.
let browser = null;
function fail(message) {
  if (browser) throw new Error(message);
  emit({ step: 'error', message: String(message) });
  process.exit(1);
}
if (!consoleDir || !existsSync(path.join(consoleDir, 'package.json'))) fail('CONSOLE_DIR must name the console directory');
if (!existsSync(chromium)) fail(`${chromium} is missing: run ./scripts/test (it installs Debian's chromium)`);
const require = createRequire(path.join(consoleDir, 'package.json'));
let puppeteer;
try {
  puppeteer = require('puppeteer-core');
} catch (e) {
  fail('puppeteer-core is missing: run ./scripts/test (it runs npm ci in console/): ' + e.message);
}

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
const waiters = [];
lines.on('line', (l) => (waiters.length ? waiters.shift()(l) : pending.push(l)));
const nextLine = () => (pending.length ? Promise.resolve(pending.shift()) : new Promise((r) => waiters.push(r)));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const cssString = (s) => JSON.stringify(s); // a quoted CSS attribute value

browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
const pageErrors = [];
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1400 });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('dialog', (d) => d.accept()); // the kick button's confirm()
  await page.goto(url, { waitUntil: 'load' });
  const card = `article.card[data-path=${cssString(streamPath)}]`;

  if (mode === 'live') {
    const missing = await page.$eval('#missing', (e) => !e.hidden);
    if (missing) fail('the page says the libraries are missing: ' + (await page.$eval('#missing', (e) => e.textContent)));
    emit({ step: 'loaded' });
    const cmd = await nextLine();
    if (cmd !== 'published') fail('unexpected command ' + cmd);

    // It appears without a reload, with its tracks.
    await page.waitForSelector(card, { timeout: 30000 });
    await page.waitForFunction((sel) => {
      const c = document.querySelector(sel);
      return c && c.querySelector('.codec').textContent.includes('320×240') && c.querySelector('.bitrate').textContent !== '–';
    }, { timeout: 30000 }, card);
    const info = await page.$eval(card, (c) => ({
      codec: c.querySelector('.codec').textContent,
      bitrate: c.querySelector('.bitrate').textContent,
      viewers: c.querySelector('.viewers').textContent,
      live: c.querySelector('.badge').textContent,
    }));
    emit({ step: 'appeared', ...info });

    // Its players play: currentTime advances.
    for (const kind of ['flv', 'hls']) {
      await page.click(`${card} button.play-${kind}`);
      const first = await page.waitForFunction((sel) => {
        const v = document.querySelector(sel + ' video');
        return v.currentTime > 0 && v.currentTime;
      }, { timeout: 40000, polling: 100 }, card).then((h) => h.jsonValue());
      const now = await page.waitForFunction((sel, t) => {
        const v = document.querySelector(sel + ' video');
        return v.currentTime > t + 2 && v.currentTime;
      }, { timeout: 40000, polling: 100 }, card, first).then((h) => h.jsonValue());
      const player = await page.$eval(`${card} video`, (v) => v.getAttribute('data-player'));
      const width = await page.$eval(`${card} video`, (v) => v.videoWidth);
      emit({ step: 'played', player, first, now, width });
    }

    // The chart's pixels change between two screenshots taken seconds apart.
    const chart = await page.waitForSelector(`${card} .chart canvas`, { timeout: 10000 });
    const shot1 = Buffer.from(await chart.screenshot());
    const data1 = await chart.evaluate((c) => c.toDataURL());
    await sleep(3000);
    const shot2 = Buffer.from(await chart.screenshot());
    const data2 = await chart.evaluate((c) => c.toDataURL());
    emit({ step: 'chart', screenshots_differ: !shot1.equals(shot2), canvas_differs: data1 !== data2,
      bytes: [shot1.length, shot2.length] });
    if (shot1.equals(shot2)) fail('the chart did not change between two screenshots 3 s apart');

    // Kick the publisher from the page.
    const row = `#sessions tr[data-role="publisher"][data-path=${cssString(streamPath)}]`;
    await page.waitForSelector(row, { timeout: 20000 });
    const id = await page.$eval(row, (r) => r.getAttribute('data-id'));
    await page.click(`${row} button.kick`);
    emit({ step: 'kicked', id });
    await page.waitForFunction((i) => !document.querySelector(`#sessions tr[data-id="${i}"]`), { timeout: 20000 }, id);
    emit({ step: 'gone', id });
    const ok = await nextLine();
    if (ok !== 'checked') fail('unexpected command ' + ok);
  } else if (mode === 'missing') {
    await page.waitForSelector('#missing:not([hidden])', { timeout: 10000 });
    const text = await page.$eval('#missing', (e) => e.textContent.replace(/\s+/g, ' ').trim());
    // The rest of the page still works: the path is listed, and its player says what it needs.
    await page.waitForSelector(card, { timeout: 30000 });
    await page.click(`${card} button.play-flv`);
    const note = await page.$eval(`${card} .player .note`, (e) => e.textContent);
    const status = await page.$eval('#status', (e) => e.textContent);
    emit({ step: 'missing', text, note, status });
  } else if (mode === 'timeline') {
    const tl = `article.recording[data-path=${cssString(streamPath)}]`;
    await page.waitForSelector(`${tl} .timeline .span`, { timeout: 30000 });
    // Where the page's timeline starts and ends, from the same API listing it drew.
    const range = await page.evaluate(async (p) => {
      const r = await fetch('/api/v1/recordings/' + p);
      const spans = (await r.json()).spans.map((s) => [Date.parse(s.start) / 1000, Date.parse(s.start) / 1000 + s.duration]);
      return { t0: spans[0][0], t1: Math.max(...spans.map((s) => s[1])), spans: spans.length };
    }, streamPath);
    const box = await (await page.$(`${tl} .timeline`)).boundingBox();
    const frac = 0.5;
    await page.mouse.click(box.x + box.width * frac, box.y + box.height / 2);
    const start = await page.waitForFunction((sel) => document.querySelector(sel + ' video').getAttribute('data-start'),
      { timeout: 10000 }, tl).then((h) => h.jsonValue());
    const first = await page.waitForFunction((sel) => {
      const v = document.querySelector(sel + ' video');
      return v.currentTime > 0 && v.currentTime;
    }, { timeout: 40000, polling: 100 }, tl).then((h) => h.jsonValue());
    const now = await page.waitForFunction((sel, t) => {
      const v = document.querySelector(sel + ' video');
      return v.currentTime > t + 1 && v.currentTime;
    }, { timeout: 40000, polling: 100 }, tl, first).then((h) => h.jsonValue());
    const src = await page.$eval(`${tl} video`, (v) => v.getAttribute('src'));
    emit({ step: 'timeline', ...range, clicked: range.t0 + frac * (range.t1 - range.t0), start,
      start_s: Date.parse(start) / 1000, first, now, src });
  } else {
    fail('unknown mode ' + mode);
  }
  if (pageErrors.length) fail('errors in the page: ' + pageErrors.join('; '));
  emit({ step: 'done' });
} catch (e) {
  emit({ step: 'error', message: String(e && e.stack ? e.stack : e) });
  process.exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
process.exit(process.exitCode || 0);
