// edgeflow live map: hand-written, no library, no build step.
//
// Signs in with an operator token (POST /api/login: an HttpOnly session
// cookie), loads the geometry it may draw once (/api/geometry; again
// when the feed says the zones in force changed), then follows the
// node's changes (/api/feed, Server-Sent Events). The data
// model is `window.edgeflow` (tests read it): rows per kind, key and
// window, as the operator's subscription holds them.
"use strict";

(function () {
  const LEVELS = [
    ["free", "#2e7d32", "free flow (speed ratio >= 0.75)"],
    ["slow", "#f9a825", "slow (>= 0.5)"],
    ["heavy", "#ef6c00", "heavy (>= 0.25)"],
    ["jam", "#c62828", "jam (< 0.25)"],
  ];
  const NO_DATA = "#b7bec7";
  const LEVEL_COLOUR = Object.fromEntries(LEVELS.map(([l, c]) => [l, c]));

  const $ = (id) => document.getElementById(id);
  const model = {
    config: null,
    geometry: null,
    // kind -> key -> window_start_ms -> {status, value, name, revision}
    rows: { congestion: new Map(), charging: new Map(), zone: new Map() },
    progress: {},
    // null: follow the newest window; else the window start shown.
    shown: null,
    lagged: 0,
    updates: 0,
    frameTimes: [],
    frameIntervals: [],
    applyTimes: [],
    latencies: [],
    nextRetire: {},
    lastUpdateAt: 0,
    selected: null,
    ended: null,
    // The zone layer drawn ("named" zones or H3 "cells") and what shades it.
    zoneLayer: "named",
    zoneMeasure: "energy_wh",
  };
  window.edgeflow = model;

  // ---- time, as a person reads it -------------------------------------
  const pad = (n) => String(n).padStart(2, "0");
  const hm = (ms) => { const d = new Date(ms); return pad(d.getHours()) + ":" + pad(d.getMinutes()); };
  const hms = (ms) => { const d = new Date(ms); return hm(ms) + ":" + pad(d.getSeconds()); };
  const day = (ms) => { const d = new Date(ms); return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()); };

  // ---- the data model ---------------------------------------------------
  function apply(update) {
    const byKey = model.rows[update.kind];
    if (!byKey) return;
    for (const r of update.rows) {
      let windows = byKey.get(r.key);
      if (r.op === "retract") {
        if (windows) {
          windows.delete(r.window_start_ms);
          if (windows.size === 0) byKey.delete(r.key);
        }
        continue;
      }
      if (!windows) { windows = new Map(); byKey.set(r.key, windows); }
      windows.set(r.window_start_ms, { status: r.status, value: r.value || {}, name: r.name, revision: r.revision });
      if (r.window_start_ms < (model.nextRetire[update.kind] ?? Infinity)) {
        model.nextRetire[update.kind] = r.window_start_ms;
      }
    }
    if (update.progress) {
      const p = update.progress;
      model.progress[update.kind] = p;
      const cut = p.window_ms > 0 ? p.watermark_ms - p.window_ms - p.retention_ms : -Infinity;
      // Windows retire only when the cut passes a window start: most
      // markers retire nothing, and the rows are not walked then.
      if (cut >= (model.nextRetire[update.kind] ?? -Infinity)) {
        let next = Infinity;
        for (const [key, windows] of byKey) {
          for (const w of windows.keys()) if (w > cut && w < next) next = w;
        }
        model.nextRetire[update.kind] = next;
        for (const [key, windows] of byKey) {
          for (const w of windows.keys()) if (w <= cut) windows.delete(w);
          if (windows.size === 0) byKey.delete(key);
        }
      }
    }
    model.lagged += update.lagged || 0;
    model.updates += 1;
    model.lastUpdateAt = performance.now();
    // Publish-to-page latency of live changes (the node's clock and this
    // page's are the same machine's in tests and the demo).
    const p = update.progress;
    if (p && !p.snapshot && p.published_unix_us > 0 && update.rows.length > 0) {
      model.latencies.push(Date.now() - p.published_unix_us / 1000);
      if (model.latencies.length > 2000) model.latencies.splice(0, 1000);
    }
  }

  // Every row the page holds, flattened (for tests and the slider).
  model.rowsOf = function (kind) {
    const out = [];
    for (const [key, windows] of model.rows[kind] || []) {
      for (const [w, r] of windows) out.push({ key, window_start_ms: w, status: r.status, value: r.value });
    }
    return out;
  };

  function windowsHeld() {
    const all = new Set();
    for (const kind of Object.keys(model.rows)) {
      for (const windows of model.rows[kind].values()) for (const w of windows.keys()) all.add(w);
    }
    return Array.from(all).sort((a, b) => a - b);
  }

  function shownWindow() {
    const held = windowsHeld();
    if (held.length === 0) return null;
    if (model.shown !== null && held.includes(model.shown)) return model.shown;
    return held[held.length - 1];
  }
  model.shownWindow = shownWindow;

  const valueAt = (kind, key, w) => {
    const windows = model.rows[kind].get(key);
    return windows ? windows.get(w) : undefined;
  };

  // ---- the map: world coordinates, pan and zoom ------------------------
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const view = { scale: 1, x: 0, y: 0, k: 1 }; // screen = world * scale + (x, y)
  let world = null; // projected geometry
  let dirty = true;

  function project(lon, lat) { return [lon * view.k, -lat]; }

  function buildWorld(refit = true) {
    const g = model.geometry;
    let lat0 = 0, n = 0;
    for (const s of g.segments) for (const p of s.line) { lat0 += p[1]; n++; }
    for (const c of g.chargers) { lat0 += c.position[1]; n++; }
    view.k = Math.cos(((n ? lat0 / n : 0) * Math.PI) / 180);
    const box = [Infinity, Infinity, -Infinity, -Infinity];
    const grow = (p) => { box[0] = Math.min(box[0], p[0]); box[1] = Math.min(box[1], p[1]); box[2] = Math.max(box[2], p[0]); box[3] = Math.max(box[3], p[1]); };
    const segments = g.segments.map((s) => {
      const pts = s.line.map((p) => project(p[0], p[1]));
      pts.forEach(grow);
      const b = [Infinity, Infinity, -Infinity, -Infinity];
      for (const p of pts) { b[0] = Math.min(b[0], p[0]); b[1] = Math.min(b[1], p[1]); b[2] = Math.max(b[2], p[0]); b[3] = Math.max(b[3], p[1]); }
      return { id: s.id, name: s.name, pts, b };
    });
    const chargers = g.chargers.map((c) => {
      const p = project(c.position[0], c.position[1]);
      grow(p);
      return { id: c.id, name: c.name, p, max_kw: c.max_kw, connectors: c.connectors };
    });
    const zones = g.zones.map((z) => {
      const polys = z.polygons.map((poly) => poly.map((ring) => ring.map((p) => project(p[0], p[1]))));
      polys.forEach((poly) => poly.forEach((ring) => ring.forEach(grow)));
      return { id: z.id, name: z.name, polys };
    });
    const cells = (g.cells || []).map((c) => ({ id: c.id, name: "H3 cell " + c.id, polys: [[c.ring.map((p) => project(p[0], p[1]))]] }));
    world = { segments, chargers, zones, cells, box };
    if (zones.length === 0 && cells.length > 0) model.zoneLayer = "cells";
    if (refit) fit();
    dirty = true;
  }

  function fit() {
    if (!world || !isFinite(world.box[0])) return;
    const [x0, y0, x1, y1] = world.box;
    const w = canvas.clientWidth || 800, h = canvas.clientHeight || 600;
    view.scale = 0.92 * Math.min(w / Math.max(x1 - x0, 1e-9), h / Math.max(y1 - y0, 1e-9));
    view.x = w / 2 - view.scale * (x0 + x1) / 2;
    view.y = h / 2 - view.scale * (y0 + y1) / 2;
    dirty = true;
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(canvas.clientWidth * dpr);
    canvas.height = Math.round(canvas.clientHeight * dpr);
    dirty = true;
  }

  // ---- colours ----------------------------------------------------------
  function ramp(t, from, to) {
    t = Math.max(0, Math.min(1, t));
    const c = from.map((f, i) => Math.round(f + (to[i] - f) * t));
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }
  const occupancyColour = (t) => ramp(t, [46, 125, 50], [198, 40, 40]);
  const demandColour = (t) => ramp(t, [222, 235, 247], [8, 81, 156]);

  // ---- the optional basemap (Web Mercator tiles from [web] basemap) ----
  const tiles = new Map();
  function tile(z, x, y) {
    const url = model.config.basemap.replace("{z}", z).replace("{x}", x).replace("{y}", y);
    let img = tiles.get(url);
    if (!img) {
      if (tiles.size >= 256) tiles.delete(tiles.keys().next().value);
      img = new Image();
      img.onload = () => { dirty = true; };
      img.src = url;
      tiles.set(url, img);
    }
    return img;
  }
  const tileLon = (x, n) => (x / n) * 360 - 180;
  const tileLat = (y, n) => (180 / Math.PI) * Math.atan(Math.sinh(Math.PI - (2 * Math.PI * y) / n));
  // Tiles under the visible part of the map, at the zoom whose 256-pixel
  // tiles match the view's scale (city scale: the local projection and
  // Web Mercator agree to a fraction of a pixel).
  function drawBasemap() {
    if (!model.config || !model.config.basemap) return;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const lon0 = -view.x / view.scale / view.k, lon1 = (w - view.x) / view.scale / view.k;
    const latTop = Math.min(view.y / view.scale, 85), latBottom = Math.max((view.y - h) / view.scale, -85);
    const z = Math.max(0, Math.min(19, Math.round(Math.log2((360 * view.scale * view.k) / 256))));
    const n = 2 ** z;
    const tx = (lon) => Math.floor(((lon + 180) / 360) * n);
    const ty = (lat) => {
      const r = (lat * Math.PI) / 180;
      return Math.floor(((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n);
    };
    const x0 = Math.max(0, tx(lon0)), x1 = Math.min(n - 1, tx(lon1));
    const y0 = Math.max(0, ty(latTop)), y1 = Math.min(n - 1, ty(latBottom));
    if ((x1 - x0 + 1) * (y1 - y0 + 1) > 64) return;
    for (let x = x0; x <= x1; x++) {
      for (let y = y0; y <= y1; y++) {
        const img = tile(z, x, y);
        if (!img.complete || !img.naturalWidth) continue;
        const [ax, ay] = project(tileLon(x, n), tileLat(y, n));
        const [bx, by] = project(tileLon(x + 1, n), tileLat(y + 1, n));
        ctx.drawImage(img, ax, ay, bx - ax, by - ay);
      }
    }
  }

  // ---- drawing ------------------------------------------------------------
  function draw() {
    const started = performance.now();
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!world) return;
    const w = shownWindow();
    ctx.setTransform(dpr * view.scale, 0, 0, dpr * view.scale, dpr * view.x, dpr * view.y);
    const px = 1 / view.scale; // one screen pixel in world units
    drawBasemap();

    // Zones (named or H3 cells): a choropleth of charging demand in the
    // window, by energy or by EVs with low charge.
    const layer = zoneLayer();
    const measure = model.zoneMeasure;
    let maxDemand = 0;
    const zoneValues = layer.map((z) => {
      const r = w === null ? undefined : valueAt("zone", z.id, w);
      const e = r ? Number(r.value[measure]) || 0 : 0;
      maxDemand = Math.max(maxDemand, e);
      return r;
    });
    layer.forEach((z, i) => {
      const r = zoneValues[i];
      ctx.beginPath();
      for (const poly of z.polys) for (const ring of poly) {
        ring.forEach((p, j) => (j ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
        ctx.closePath();
      }
      ctx.globalAlpha = 0.45;
      ctx.fillStyle = r ? demandColour(maxDemand > 0 ? (Number(r.value[measure]) || 0) / maxDemand : 0) : "#e3e7ec";
      ctx.fill("evenodd");
      ctx.globalAlpha = 1;
      ctx.lineWidth = px;
      ctx.strokeStyle = "#8a96a3";
      ctx.stroke();
    });

    // Segments in view: one path per level.
    const vx0 = -view.x / view.scale, vy0 = -view.y / view.scale;
    const vx1 = vx0 + canvas.clientWidth / view.scale, vy1 = vy0 + canvas.clientHeight / view.scale;
    const paths = { none: new Path2D() };
    for (const [l] of LEVELS) paths[l] = new Path2D();
    let shown = 0;
    for (const s of world.segments) {
      if (s.b[2] < vx0 || s.b[0] > vx1 || s.b[3] < vy0 || s.b[1] > vy1) continue;
      shown++;
      const r = w === null ? undefined : valueAt("congestion", s.id, w);
      const path = (r && paths[r.value.level]) || paths.none;
      const pts = s.pts;
      path.moveTo(pts[0][0], pts[0][1]);
      for (let j = 1; j < pts.length; j++) path.lineTo(pts[j][0], pts[j][1]);
    }
    // Lines wider than a pixel are outlined and filled by the rasteriser,
    // which costs dearly over thousands of segments; lines of one pixel are
    // drawn as hairlines, far faster. So with more than 3,000 segments in
    // view (a city's scale, where nobody sees the difference) every line is
    // a pixel wide; zoomed in, they are wide with round ends and joins.
    const round = shown <= 3000;
    model.segmentsDrawn = shown;
    ctx.lineCap = round ? "round" : "butt";
    ctx.lineJoin = round ? "round" : "bevel";
    ctx.lineWidth = (round ? 1.5 : 1) * px;
    ctx.strokeStyle = NO_DATA;
    ctx.stroke(paths.none);
    ctx.lineWidth = (round ? 3 : 1) * px;
    for (const [l, c] of LEVELS) { ctx.strokeStyle = c; ctx.stroke(paths[l]); }

    // Chargers: sized by power, coloured by occupancy.
    for (const c of world.chargers) {
      const r = w === null ? undefined : valueAt("charging", c.id, w);
      const radius = (4 + 2.2 * Math.sqrt(Math.max(c.max_kw, 1) / 11)) * px;
      ctx.beginPath();
      ctx.arc(c.p[0], c.p[1], radius, 0, 2 * Math.PI);
      const occ = r ? Number(r.value.occupied) / Math.max(Number(r.value.connectors) || c.connectors || 1, 1) : null;
      ctx.fillStyle = occ === null ? "#ffffff" : occupancyColour(occ);
      ctx.fill();
      ctx.lineWidth = (r && Number(r.value.faulted) > 0 ? 3 : 1.5) * px;
      ctx.strokeStyle = r && Number(r.value.faulted) > 0 ? "#000000" : "#37474f";
      ctx.stroke();
    }

    // The selection.
    if (model.selected && model.selected.kind === "congestion") {
      const s = world.segments.find((x) => x.id === model.selected.id);
      if (s) {
        ctx.beginPath();
        s.pts.forEach((p, j) => (j ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
        ctx.lineWidth = 7 * px;
        ctx.strokeStyle = "rgba(33, 150, 243, 0.55)";
        ctx.stroke();
      }
    }
    const took = performance.now() - started;
    model.frameTimes.push(took);
    if (model.frameTimes.length > 2000) model.frameTimes.splice(0, 1000);
  }

  // Frame times while the map changes: from a frame that draws a change
  // to the next frame the browser can show, which includes everything a
  // person waits for: the drawing, the canvas's rasterisation and
  // compositing, and any update handled in between.
  let lastFrame = null;
  let drewLast = false;
  function frame(now) {
    if (drewLast && lastFrame !== null) {
      model.frameIntervals.push(now - lastFrame);
      if (model.frameIntervals.length > 4000) model.frameIntervals.splice(0, 2000);
    }
    drewLast = false;
    if (dirty) {
      dirty = false;
      draw();
      header();
      if (model.selected) panel();
      drewLast = model.updates > 0;
    }
    lastFrame = now;
    requestAnimationFrame(frame);
  }

  // ---- header, slider, legend, panel ----------------------------------
  function header() {
    const w = shownWindow();
    const wm = model.config ? model.config.window_ms : 60000;
    $("window").textContent = w === null ? "no data yet" :
      "window " + hm(w) + "\u2013" + hm(w + wm) + " (" + day(w) + ")" + (model.shown === null ? ", newest" : "");
    const marks = Object.values(model.progress).map((p) => p.watermark_ms).filter((x) => x > 0);
    $("watermark").textContent = marks.length ? "watermark " + hms(Math.max(...marks)) : "";
    const held = windowsHeld();
    const slider = $("slider");
    slider.max = String(Math.max(held.length - 1, 0));
    const at = w === null ? 0 : held.indexOf(w);
    slider.value = String(Math.max(at, 0));
    $("slider-label").textContent = held.length ? held.length + " windows in retention" : "";
    $("live").classList.toggle("on", model.shown === null);
  }

  function legend() {
    const kinds = model.config ? model.config.kinds : [];
    let html = "";
    if (kinds.includes("congestion")) {
      html += "<h3>road segments</h3>";
      for (const [, c, label] of LEVELS) html += '<div><span class="swatch" data-colour="' + c + '"></span>' + label + "</div>";
      html += '<div><span class="swatch" data-colour="' + NO_DATA + '"></span>no reports in the window</div>';
    }
    if (kinds.includes("charging")) {
      html += '<h3>chargers (size: power)</h3><div>free<span class="ramp" data-ramp="occupancy"></span>occupied</div>';
    }
    if (kinds.includes("zone") && world && (world.zones.length || world.cells.length)) {
      html += "<h3>zones</h3>";
      if (world.zones.length && world.cells.length) {
        html += '<div><label><input type="radio" name="zone-layer" value="named"> named zones</label> <label><input type="radio" name="zone-layer" value="cells"> H3 cells</label></div>';
      }
      html += '<div><label><input type="radio" name="zone-measure" value="energy_wh"> charging energy</label> <label><input type="radio" name="zone-measure" value="low_soc_evs"> EVs with low charge</label></div>';
      html += '<div>low<span class="ramp" data-ramp="demand"></span>high</div>';
    }
    if (model.config && model.config.basemap) {
      const host = model.config.basemap.split("/")[2] || "";
      html += "<h3>basemap</h3><div>tiles from " + host.replace(/[<>&"]/g, "") + "</div>";
    }
    const el = $("legend");
    el.innerHTML = html;
    el.querySelectorAll("[data-colour]").forEach((s) => { s.style.background = s.dataset.colour; });
    const choice = (name, key) => el.querySelectorAll('input[name="' + name + '"]').forEach((input) => {
      input.checked = input.value === model[key];
      input.addEventListener("change", () => { model[key] = input.value; if (model.selected) panel(); dirty = true; });
    });
    choice("zone-layer", "zoneLayer");
    choice("zone-measure", "zoneMeasure");
    el.querySelectorAll("[data-ramp]").forEach((s) => {
      const f = s.dataset.ramp === "occupancy" ? occupancyColour : demandColour;
      s.style.background = "linear-gradient(to right, " + f(0) + ", " + f(0.5) + ", " + f(1) + ")";
    });
  }

  const FIELDS = {
    congestion: [["level", "level"], ["mean_speed_mps", "mean speed, m/s"], ["speed_ratio", "speed ratio"], ["samples", "reports"], ["vehicles", "vehicles"]],
    charging: [["occupied", "occupied"], ["connectors", "connectors"], ["mean_power_kw", "mean power, kW"], ["energy_wh", "energy, Wh"], ["utilization", "utilization"], ["faulted", "faulted"]],
    zone: [["vehicles", "vehicles"], ["mean_speed_ratio", "mean speed ratio"], ["jammed_segments", "jammed segments"], ["energy_wh", "charging energy, Wh"], ["low_soc_evs", "EVs with low charge"]],
  };
  const CHART = { congestion: ["speed_ratio", "speed ratio"], charging: ["mean_power_kw", "mean power, kW"], zone: ["energy_wh", "charging energy, Wh"] };
  const ZONE_MEASURES = { energy_wh: "charging energy, Wh", low_soc_evs: "EVs with low charge" };
  const zoneLayer = () => (model.zoneLayer === "cells" ? world.cells : world.zones);

  function panel() {
    const s = model.selected;
    const el = $("panel");
    if (!s) { el.hidden = true; return; }
    el.hidden = false;
    $("panel-title").textContent = s.name || s.id;
    $("panel-sub").textContent = s.kind + " " + s.id;
    const w = shownWindow();
    const r = w === null ? undefined : valueAt(s.kind, s.id, w);
    const table = $("panel-values");
    table.textContent = "";
    const row = (a, b) => { const tr = table.insertRow(); tr.insertCell().textContent = a; tr.insertCell().textContent = b; };
    if (w !== null) row("window", hm(w) + "\u2013" + hm(w + model.config.window_ms));
    if (r) {
      row("status", r.status || "");
      for (const [f, label] of FIELDS[s.kind]) if (r.value[f] !== undefined) row(label, String(r.value[f]));
    } else {
      row("no value", "no reports in this window, or fewer vehicles than the privacy threshold");
    }
    chart(s);
  }

  function chart(s) {
    const c = $("chart");
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const windows = model.rows[s.kind].get(s.id);
    const [field, label] = s.kind === "zone" ? [model.zoneMeasure, ZONE_MEASURES[model.zoneMeasure]] : CHART[s.kind];
    $("chart-label").textContent = label + ", windows in retention";
    if (!windows) return;
    const pts = Array.from(windows.entries()).sort((a, b) => a[0] - b[0]).map(([w, r]) => [w, Number(r.value[field]) || 0]);
    if (pts.length === 0) return;
    const max = Math.max(...pts.map((p) => p[1]), 1e-9);
    const bw = c.width / Math.max(pts.length, 1);
    pts.forEach(([w, v], i) => {
      const h = (v / max) * (c.height - 14);
      g.fillStyle = w === shownWindow() ? "#1565c0" : "#90a4ae";
      g.fillRect(i * bw + 1, c.height - h, Math.max(bw - 2, 1), h);
    });
    g.fillStyle = "#37474f";
    g.font = "10px system-ui";
    g.fillText(hm(pts[0][0]), 2, 10);
    g.fillText("max " + (Math.round(max * 100) / 100), c.width - 70, 10);
  }

  // ---- picking --------------------------------------------------------
  function pick(sx, sy) {
    if (!world) return null;
    const x = (sx - view.x) / view.scale, y = (sy - view.y) / view.scale;
    const tol = 6 / view.scale;
    for (const c of world.chargers) {
      const radius = (4 + 2.2 * Math.sqrt(Math.max(c.max_kw, 1) / 11)) / view.scale;
      if (Math.hypot(c.p[0] - x, c.p[1] - y) <= Math.max(radius, tol)) return { kind: "charging", id: c.id, name: c.name };
    }
    let best = null, bestD = tol;
    for (const s of world.segments) {
      for (let i = 1; i < s.pts.length; i++) {
        const d = segDist(x, y, s.pts[i - 1], s.pts[i]);
        if (d < bestD) { bestD = d; best = s; }
      }
    }
    if (best) return { kind: "congestion", id: best.id, name: best.name };
    for (const z of zoneLayer()) {
      for (const poly of z.polys) if (inside(x, y, poly)) return { kind: "zone", id: z.id, name: z.name };
    }
    return null;
  }
  function segDist(x, y, a, b) {
    const dx = b[0] - a[0], dy = b[1] - a[1];
    const len = dx * dx + dy * dy;
    const t = len > 0 ? Math.max(0, Math.min(1, ((x - a[0]) * dx + (y - a[1]) * dy) / len)) : 0;
    return Math.hypot(x - (a[0] + t * dx), y - (a[1] + t * dy));
  }
  function inside(x, y, poly) {
    let c = false;
    for (const ring of poly) {
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const [xi, yi] = ring[i], [xj, yj] = ring[j];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) c = !c;
      }
    }
    return c;
  }

  // ---- input ----------------------------------------------------------
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; canvas.classList.add("dragging"); });
  window.addEventListener("mouseup", (e) => {
    canvas.classList.remove("dragging");
    if (drag && !drag.moved) {
      const r = canvas.getBoundingClientRect();
      model.selected = pick(e.clientX - r.left, e.clientY - r.top);
      panel();
      dirty = true;
    }
    drag = null;
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    view.x += dx; view.y += dy;
    drag.x = e.clientX; drag.y = e.clientY;
    dirty = true;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    const sx = e.clientX - r.left, sy = e.clientY - r.top;
    const f = Math.exp(-e.deltaY * 0.0015);
    view.x = sx - (sx - view.x) * f;
    view.y = sy - (sy - view.y) * f;
    view.scale *= f;
    dirty = true;
  }, { passive: false });
  window.addEventListener("resize", () => { resize(); });
  $("close").addEventListener("click", () => { model.selected = null; panel(); dirty = true; });
  $("slider").addEventListener("input", (e) => {
    const held = windowsHeld();
    const i = Number(e.target.value);
    model.shown = i >= held.length - 1 ? null : held[i];
    dirty = true;
  });
  $("live").addEventListener("click", () => { model.shown = null; dirty = true; });

  // ---- the node -------------------------------------------------------
  function status(text) { $("status").textContent = text; }

  async function start() {
    const config = await (await fetch("/api/config", { credentials: "same-origin" })).json();
    model.config = config;
    $("node").textContent = config.node;
    legend();
    const g = await fetch("/api/geometry", { credentials: "same-origin" });
    model.geometry = await g.json();
    resize();
    buildWorld();
    legend();
    follow();
  }

  let zonesWanted = null, reloading = false;
  async function reloadGeometry() {
    if (reloading || !model.geometry || zonesWanted === model.geometry.zones_generation) return;
    reloading = true;
    try {
      const g = await fetch("/api/geometry", { credentials: "same-origin" });
      if (g.ok) {
        model.geometry = await g.json();
        buildWorld(false);
        legend();
      }
    } finally {
      reloading = false;
    }
    // Another change may have come meanwhile; a failed load waits for the next event.
    if (model.geometry && zonesWanted !== model.geometry.zones_generation && !model.ended) setTimeout(reloadGeometry, 1000);
  }

  function follow() {
    const es = new EventSource("/api/feed");
    model.feed = es;
    let following = [];
    const ends = [];
    es.addEventListener("kinds", (e) => { following = JSON.parse(e.data); status("live"); });
    // The named zones in force changed (a reloaded zone file): the
    // geometry is loaded again, the view kept.
    es.addEventListener("geometry", (e) => {
      zonesWanted = JSON.parse(e.data).zones_generation;
      reloadGeometry();
    });
    es.addEventListener("update", (e) => {
      const t = performance.now();
      apply(JSON.parse(e.data));
      model.applyTimes.push(performance.now() - t);
      if (model.applyTimes.length > 4000) model.applyTimes.splice(0, 2000);
      dirty = true;
    });
    // Each kind's feed ends on its own (the node stopping, a scope
    // changed): the page stops following once every kind has ended.
    es.addEventListener("end", (e) => {
      ends.push(JSON.parse(e.data));
      if (ends.length < following.length) return;
      model.ended = ends[0];
      status("feed ended: " + model.ended.message);
      es.close();
    });
    es.onerror = () => { if (!model.ended) status("reconnecting"); };
  }

  async function login(token) {
    const r = await fetch("/api/login", { method: "POST", body: token, credentials: "same-origin" });
    if (!r.ok) throw new Error((await r.text()).trim());
  }

  async function main() {
    // A token in the address's fragment (#token=...), which never reaches
    // the server, signs in at once (the demo prints such an address).
    const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      history.replaceState(null, "", location.pathname);
      try { await login(decodeURIComponent(m[1])); } catch (e) { $("login-error").textContent = e.message; }
    }
    const probe = await fetch("/api/config", { credentials: "same-origin" });
    if (!probe.ok) {
      $("login").hidden = false;
      status("signed out");
      $("login").addEventListener("submit", async (e) => {
        e.preventDefault();
        try {
          await login($("token").value);
          $("login").hidden = true;
          await start();
        } catch (err) {
          $("login-error").textContent = err.message;
        }
      });
      return;
    }
    await start();
  }

  requestAnimationFrame(frame);
  main().catch((e) => status("error: " + e.message));
})();
