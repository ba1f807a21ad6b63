// The ferrocast web console: polls /api/v1 and shows the live paths (with charts and players),
// the sessions (with a kick button) and the recordings (a timeline that plays from a click).
// Plain script, no build step. Everything the server sends is shown with textContent, never
// parsed as HTML: path names and addresses come from publishers and clients.
'use strict';
(() => {
  const POLL_MS = 1000;
  const RECORDINGS_POLL_MS = 5000;
  const HISTORY_S = 300; // the charts show the last five minutes
  const TIMELINE_S = 24 * 3600; // the recordings timeline covers the last day
  // A busy server lists more than a page can redraw every second: the first ones are shown,
  // and a line says how many more there are (the API has them all).
  const MAX_CARDS = 100;
  const MAX_SESSION_ROWS = 500;
  const MAX_TIMELINES = 50;

  const libs = {
    'hls.js': typeof window.Hls !== 'undefined',
    'mpegts.js': typeof window.mpegts !== 'undefined',
    uPlot: typeof window.uPlot !== 'undefined',
  };
  const missing = Object.keys(libs).filter((k) => !libs[k]);
  const $ = (id) => document.getElementById(id);
  if (missing.length) {
    $('missing-list').textContent = missing.join(', ');
    $('missing').hidden = false;
  }

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  const pathUrl = (p) => '/' + p.split('/').map(encodeURIComponent).join('/');

  function fmtBits(b) {
    if (b == null) return '–';
    if (b >= 1e6) return (b / 1e6).toFixed(2) + ' Mb/s';
    if (b >= 1e3) return (b / 1e3).toFixed(0) + ' kb/s';
    return Math.round(b) + ' b/s';
  }
  function fmtBytes(n) {
    if (n == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + units[i];
  }
  function fmtDuration(s) {
    if (s == null) return '–';
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + 'h' : '') + (h || m ? String(m).padStart(h ? 2 : 1, '0') + 'm' : '') +
      String(sec).padStart(h || m ? 2 : 1, '0') + 's';
  }
  function fmtTrack(t) {
    let s = String(t.codec || '?');
    if (t.width && t.height) s += ' ' + t.width + '×' + t.height;
    if (t.sample_rate) s += ' ' + t.sample_rate + ' Hz';
    if (t.channels) s += ' ' + t.channels + ' ch';
    return s;
  }

  let errorTimer = null;
  function showError(text) {
    const e = $('error');
    e.textContent = text;
    e.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { e.hidden = true; }, 8000);
  }

  async function getJson(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      const err = new Error(url + ': ' + msg);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  // ---- paths -------------------------------------------------------------------------------

  const cards = new Map(); // path -> card

  function makeChart(card) {
    if (!libs.uPlot) {
      card.chartBox.append(el('p', { class: 'empty' }, 'Charts need uPlot (see above).'));
      return null;
    }
    const width = Math.max(280, card.chartBox.clientWidth || 420);
    const opts = {
      width,
      height: 150,
      legend: { live: false },
      cursor: { show: false },
      scales: { x: { time: true }, b: { range: (u, min, max) => [0, Math.max(max * 1.1, 1000)] },
        n: { range: (u, min, max) => [0, Math.max(max + 1, 2)] } },
      series: [
        {},
        { label: 'bitrate in', scale: 'b', stroke: '#2b8a3e', width: 2, points: { show: false }, fill: 'rgba(43,138,62,0.12)',
          value: (u, v) => fmtBits(v) },
        { label: 'viewers', scale: 'n', stroke: '#1c7ed6', width: 2, points: { show: false }, value: (u, v) => (v == null ? '–' : v) },
      ],
      axes: [
        {},
        { scale: 'b', values: (u, vals) => vals.map((v) => fmtBits(v).replace(' ', '')), size: 70 },
        { scale: 'n', side: 1, grid: { show: false }, size: 40 },
      ],
    };
    return new uPlot(opts, [card.t, card.b, card.n], card.chartBox);
  }

  function makeCard(path) {
    const card = { path, t: [], b: [], n: [], player: null };
    card.live = el('span', { class: 'badge' });
    card.rec = el('span', { class: 'badge rec', hidden: '' }, 'recording');
    card.codec = el('dd', { class: 'codec' }, '–');
    card.bitrate = el('dd', { class: 'bitrate' }, '–');
    card.viewers = el('dd', { class: 'viewers' }, '–');
    card.uptime = el('dd', { class: 'uptime' }, '–');
    card.source = el('dd', { class: 'source' }, '–');
    card.chartBox = el('div', { class: 'chart' });
    card.video = el('video', { muted: '', playsinline: '', controls: '', hidden: '' });
    card.video.muted = true;
    card.playerNote = el('span', { class: 'note' });
    const stopButton = el('button', { class: 'stop', type: 'button', onclick: () => stop(card) }, 'Stop');
    card.root = el('article', { class: 'card', 'data-path': path },
      el('h3', {}, el('span', { class: 'name' }, path), ' ', card.live, ' ', card.rec),
      el('dl', {},
        el('dt', {}, 'tracks'), card.codec,
        el('dt', {}, 'bitrate in'), card.bitrate,
        el('dt', {}, 'viewers'), card.viewers,
        el('dt', {}, 'uptime'), card.uptime,
        el('dt', {}, 'source'), card.source),
      card.chartBox,
      el('div', { class: 'player' },
        el('div', { class: 'buttons' },
          el('button', { class: 'play-flv', type: 'button', onclick: () => playFlv(card) }, 'Play HTTP-FLV'),
          el('button', { class: 'play-hls', type: 'button', onclick: () => playHls(card) }, 'Play HLS'),
          stopButton, card.playerNote),
        card.video));
    return card;
  }

  function stop(card) {
    if (card.player) {
      try { card.player.destroy(); } catch (_) { /* already gone */ }
      card.player = null;
    }
    card.video.pause();
    card.video.removeAttribute('src');
    card.video.load();
    card.video.hidden = true;
    card.video.removeAttribute('data-player');
    card.playerNote.textContent = '';
  }

  function startVideo(card, kind) {
    card.video.hidden = false;
    card.video.setAttribute('data-player', kind);
    const p = card.video.play();
    if (p && p.catch) p.catch((e) => { card.playerNote.textContent = 'play: ' + e.message; });
  }

  function playFlv(card) {
    stop(card);
    if (!libs['mpegts.js'] || !mpegts.getFeatureList().mseLivePlayback) {
      card.playerNote.textContent = libs['mpegts.js'] ? 'this browser cannot play HTTP-FLV (no MSE)'
        : 'HTTP-FLV needs mpegts.js (see above)';
      return;
    }
    const player = mpegts.createPlayer({ type: 'flv', isLive: true, url: pathUrl(card.path) + '.flv' },
      { enableStashBuffer: false, liveBufferLatencyChasing: true });
    player.on(mpegts.Events.ERROR, (type, detail) => { card.playerNote.textContent = 'error: ' + type + ' ' + detail; });
    player.attachMediaElement(card.video);
    player.load();
    card.player = player;
    card.playerNote.textContent = 'HTTP-FLV';
    startVideo(card, 'flv');
  }

  function playHls(card) {
    stop(card);
    const url = pathUrl(card.path) + '/index.m3u8';
    if (libs['hls.js'] && Hls.isSupported()) {
      const hls = new Hls({ liveDurationInfinity: true });
      hls.on(Hls.Events.ERROR, (_, d) => {
        if (d.fatal) card.playerNote.textContent = 'error: ' + d.type + ' ' + d.details;
      });
      hls.loadSource(url);
      hls.attachMedia(card.video);
      card.player = hls;
    } else if (card.video.canPlayType('application/vnd.apple.mpegurl')) {
      card.video.src = url; // Safari plays HLS itself
    } else {
      card.playerNote.textContent = 'HLS needs hls.js (see above)';
      return;
    }
    card.playerNote.textContent = 'HLS';
    startVideo(card, 'hls');
  }

  function updateCard(card, p, now) {
    const live = !!p.live;
    card.live.textContent = live ? 'live' : 'idle';
    card.live.className = 'badge ' + (live ? 'live' : 'idle');
    card.rec.hidden = !p.recording;
    const tracks = Array.isArray(p.tracks) ? p.tracks : [];
    card.codec.textContent = tracks.length ? tracks.map(fmtTrack).join(', ') : '–';
    const bitrate = typeof p.bitrate_in === 'number' ? p.bitrate_in
      : (p.source && typeof p.source.bitrate === 'number' ? p.source.bitrate : null);
    card.bitrate.textContent = fmtBits(bitrate);
    const by = p.readers_by_protocol && typeof p.readers_by_protocol === 'object'
      ? Object.entries(p.readers_by_protocol).filter(([, n]) => n > 0).map(([k, n]) => k + ' ' + n).join(', ')
      : '';
    const readers = typeof p.readers === 'number' ? p.readers : 0;
    card.viewers.textContent = readers + (by ? ' (' + by + ')' : '');
    card.uptime.textContent = typeof p.uptime === 'number' ? fmtDuration(p.uptime) : '–';
    let source = '–';
    if (p.publisher && typeof p.publisher === 'object') {
      source = 'published: ' + [p.publisher.protocol, p.publisher.remote_addr].filter(Boolean).join(' ');
    } else if (p.source && p.source.url) {
      source = 'pulled: ' + p.source.url + (p.source.state ? ' (' + p.source.state + ')' : '');
    }
    card.source.textContent = source;

    card.t.push(now);
    card.b.push(bitrate);
    card.n.push(readers);
    while (card.t.length && card.t[0] < now - HISTORY_S) { card.t.shift(); card.b.shift(); card.n.shift(); }
    if (card.chart === undefined) card.chart = makeChart(card);
    if (card.chart) card.chart.setData([card.t, card.b, card.n]);
  }

  function more(id, shown, total, what) {
    const e = $(id);
    e.hidden = total <= shown;
    e.textContent = total > shown ? (total - shown) + ' more ' + what + ' not shown (see the API)' : '';
  }

  function renderPaths(all) {
    const items = all.slice(0, MAX_CARDS);
    more('more-paths', items.length, all.length, 'paths');
    const now = Date.now() / 1000;
    const seen = new Set();
    const box = $('paths');
    for (const p of items) {
      if (typeof p.path !== 'string') continue;
      seen.add(p.path);
      let card = cards.get(p.path);
      if (!card) {
        card = makeCard(p.path);
        cards.set(p.path, card);
        box.append(card.root);
      }
      updateCard(card, p, now);
    }
    for (const [path, card] of cards) {
      if (!seen.has(path)) {
        stop(card);
        card.root.remove();
        cards.delete(path);
      }
    }
    $('no-paths').hidden = cards.size > 0;
  }

  // ---- sessions ----------------------------------------------------------------------------

  const rows = new Map(); // session id -> row

  async function kick(s, button) {
    if (!confirm('Kick the ' + s.protocol + ' ' + s.role + ' session ' + s.id + (s.path ? ' on ' + s.path : '') + '?')) {
      return;
    }
    button.disabled = true;
    try {
      const r = await fetch('/api/v1/sessions/' + encodeURIComponent(s.id), { method: 'DELETE' });
      if (!r.ok && r.status !== 404) {
        let msg = r.status + ' ' + r.statusText;
        try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
        throw new Error(msg);
      }
      const row = rows.get(s.id);
      if (row) row.classList.add('kicked');
      poll();
    } catch (e) {
      button.disabled = false;
      showError('kick ' + s.id + ': ' + e.message);
    }
  }

  function renderSessions(all) {
    const items = all.slice(0, MAX_SESSION_ROWS);
    more('more-sessions', items.length, all.length, 'sessions');
    const body = $('sessions').tBodies[0];
    const seen = new Set();
    for (const s of items) {
      if (typeof s.id !== 'string') continue;
      seen.add(s.id);
      let row = rows.get(s.id);
      if (!row) {
        const button = el('button', { class: 'kick', type: 'button' }, 'Kick');
        button.addEventListener('click', () => kick(row.session, button));
        row = el('tr', { 'data-id': s.id });
        for (let i = 0; i < 8; i++) row.append(el('td'));
        row.append(el('td', {}, button));
        rows.set(s.id, row);
        body.append(row);
      }
      row.session = s;
      row.setAttribute('data-role', s.role || '');
      row.setAttribute('data-path', s.path || '');
      const cells = [s.id, s.protocol, s.role, s.path, s.remote_addr, fmtBytes(s.bytes_in),
        fmtBytes(s.bytes_out), fmtDuration(s.duration)];
      cells.forEach((v, i) => { row.cells[i].textContent = v == null || v === '' ? '–' : String(v); });
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.remove(); rows.delete(id); }
    }
  }

  // ---- recordings --------------------------------------------------------------------------

  const timelines = new Map(); // path -> timeline

  function makeTimeline(path) {
    const tl = { path, spans: [], t0: 0, t1: 0, at: null };
    tl.bar = el('div', { class: 'timeline', title: 'click to play from there' });
    tl.marker = el('div', { class: 'marker', hidden: '' });
    tl.bar.append(tl.marker);
    tl.from = el('span', { class: 'from' });
    tl.to = el('span', { class: 'to' });
    tl.note = el('span', { class: 'note' });
    tl.video = el('video', { controls: '', playsinline: '', hidden: '' });
    tl.video.muted = true;
    tl.root = el('article', { class: 'recording', 'data-path': path },
      el('h3', {}, path),
      tl.bar,
      el('div', { class: 'range' }, tl.from, tl.note, tl.to),
      tl.video);
    tl.bar.addEventListener('mousemove', (ev) => {
      tl.bar.title = new Date(timeAt(tl, ev) * 1000).toLocaleString();
    });
    tl.bar.addEventListener('click', (ev) => playRecording(tl, timeAt(tl, ev)));
    tl.video.addEventListener('timeupdate', () => {
      if (tl.at != null) placeMarker(tl, tl.at + tl.video.currentTime);
    });
    return tl;
  }

  function timeAt(tl, ev) {
    const r = tl.bar.getBoundingClientRect();
    const frac = Math.min(1, Math.max(0, (ev.clientX - r.left) / Math.max(1, r.width)));
    return tl.t0 + frac * (tl.t1 - tl.t0);
  }

  function placeMarker(tl, t) {
    if (tl.t1 <= tl.t0) return;
    tl.marker.hidden = false;
    tl.marker.style.left = (100 * Math.min(1, Math.max(0, (t - tl.t0) / (tl.t1 - tl.t0)))) + '%';
  }

  // Plays from `t` (seconds since the epoch); a click in a gap plays from the next recording.
  function playRecording(tl, t) {
    const span = tl.spans.find((s) => t < s.end);
    if (!span) return;
    if (t < span.start) t = span.start;
    tl.at = t;
    const start = new Date(Math.floor(t * 1000)).toISOString();
    tl.video.hidden = false;
    tl.video.src = pathUrl(tl.path) + '/recording.mp4?start=' + encodeURIComponent(start);
    tl.video.setAttribute('data-start', start);
    tl.note.textContent = 'playing from ' + new Date(t * 1000).toLocaleString();
    placeMarker(tl, t);
    const p = tl.video.play();
    if (p && p.catch) p.catch((e) => { tl.note.textContent = 'play: ' + e.message; });
  }

  function renderTimeline(tl, listing) {
    const spans = (Array.isArray(listing.spans) ? listing.spans : [])
      .map((s) => ({ start: Date.parse(s.start) / 1000, end: Date.parse(s.start) / 1000 + (s.duration || 0) }))
      .filter((s) => Number.isFinite(s.start) && Number.isFinite(s.end));
    tl.spans = spans;
    for (const old of tl.bar.querySelectorAll('.span')) old.remove();
    if (!spans.length) { tl.from.textContent = ''; tl.to.textContent = 'no recordings in the last day'; return; }
    tl.t0 = spans[0].start;
    tl.t1 = Math.max(...spans.map((s) => s.end));
    const len = Math.max(1e-3, tl.t1 - tl.t0);
    for (const s of spans) {
      const d = el('div', { class: 'span' });
      d.style.left = (100 * (s.start - tl.t0) / len) + '%';
      d.style.width = Math.max(0.3, 100 * (s.end - s.start) / len) + '%';
      tl.bar.insertBefore(d, tl.marker);
    }
    tl.from.textContent = new Date(tl.t0 * 1000).toLocaleString();
    tl.to.textContent = new Date(tl.t1 * 1000).toLocaleString();
  }

  async function pollRecordings() {
    try {
      const list = await getJson('/api/v1/recordings');
      const all = (Array.isArray(list.paths) ? list.paths : []).map((p) => p.path).filter((p) => typeof p === 'string');
      const paths = all.slice(0, MAX_TIMELINES);
      more('more-recordings', paths.length, all.length, 'recorded paths');
      const since = new Date(Date.now() - TIMELINE_S * 1000).toISOString();
      for (const path of paths) {
        let tl = timelines.get(path);
        if (!tl) {
          tl = makeTimeline(path);
          timelines.set(path, tl);
          $('recordings').append(tl.root);
        }
        const listing = await getJson('/api/v1/recordings' + pathUrl(path) + '?start=' + encodeURIComponent(since));
        renderTimeline(tl, listing);
      }
      for (const [path, tl] of timelines) {
        if (!paths.includes(path)) { tl.root.remove(); timelines.delete(path); }
      }
      $('no-recordings').hidden = timelines.size > 0;
    } catch (e) {
      if (e.status !== 404) showError('recordings: ' + e.message);
    }
  }

  // ---- polling -----------------------------------------------------------------------------

  let polling = false;
  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const [paths, sessions] = await Promise.allSettled([getJson('/api/v1/paths'), getJson('/api/v1/sessions')]);
      if (paths.status === 'fulfilled') renderPaths(Array.isArray(paths.value.items) ? paths.value.items : []);
      if (sessions.status === 'fulfilled') renderSessions(Array.isArray(sessions.value.items) ? sessions.value.items : []);
      const failed = [paths, sessions].filter((r) => r.status === 'rejected');
      const status = $('status');
      if (failed.length) {
        status.textContent = 'API: ' + failed.map((r) => r.reason.message).join('; ');
        status.className = 'status bad';
      } else {
        status.textContent = 'updated ' + new Date().toLocaleTimeString();
        status.className = 'status ok';
      }
    } finally {
      polling = false;
    }
  }

  poll();
  pollRecordings();
  setInterval(poll, POLL_MS);
  setInterval(pollRecordings, RECORDINGS_POLL_MS);
})();
