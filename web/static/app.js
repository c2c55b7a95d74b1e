// The rbee queen's live view. It reads one server-sent event stream
// (v1/events): a snapshot, then updates and registry events. Every string
// from the registry goes into the DOM through textContent, never as markup.
"use strict";

(function () {
  const MAX_EVENTS = 200;
  const STATUSES = ["starting", "ready", "busy", "draining", "stopping", "stopped"];

  const state = {
    workers: new Map(), // "<hive>.<worker>" -> entry
    hives: new Map(),   // hive_id -> entry
    queens: new Map(),  // queen_id -> entry
    events: [],         // newest first
    offsetMs: 0,        // queen clock minus browser clock
    rows: new Map(),    // worker key -> <tr>
  };

  const $ = (id) => document.getElementById(id);

  // el builds an element; text children become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else e.setAttribute(k, v);
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  // cls keeps only a known token as a class name.
  function cls(v) {
    return /^[a-z_]{1,20}$/.test(v || "") ? v : "";
  }

  function bytes(n) {
    if (n === undefined || n === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
  }

  function num(v, unit, digits) {
    if (v === undefined || v === null) return "–";
    return v.toFixed(digits === undefined ? 0 : digits) + unit;
  }

  function now() { return Date.now() + state.offsetMs; }

  function ago(ms) {
    if (!ms) return "–";
    let s = Math.max(0, Math.round((now() - ms) / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function liveness(e) { return e.liveness || "alive"; }
  function workerKey(w) { return w.hive_id + "." + w.worker_id; }

  // ---- order: problems first, names in natural order (package fleet) ----

  // natural compares with runs of digits as numbers: sim-2 before sim-10.
  function natural(a, b) {
    const ra = String(a || "").match(/\d+|\D+/g) || [];
    const rb = String(b || "").match(/\d+|\D+/g) || [];
    for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
      const x = ra[i], y = rb[i];
      const dx = /^\d/.test(x), dy = /^\d/.test(y);
      if (dx && dy) {
        const nx = x.replace(/^0+/, ""), ny = y.replace(/^0+/, "");
        if (nx.length !== ny.length) return nx.length - ny.length;
        if (nx !== ny) return nx < ny ? -1 : 1;
        if (x.length !== y.length) return x.length - y.length;
      } else if (x !== y) {
        return x < y ? -1 : 1;
      }
    }
    return ra.length - rb.length;
  }

  // Severity: 3 not alive, 2 unhealthy (or a GPU asking for recovery), 1 degraded, 0 fine.
  function healthRank(h) { return h === "unhealthy" ? 2 : h === "degraded" ? 1 : 0; }
  function gpuRank(g) {
    return Math.max(healthRank(g.health), g.recovery_action && g.recovery_action !== "none" ? 2 : 0);
  }
  function workerRank(w) { return liveness(w) !== "alive" ? 3 : healthRank(w.health); }
  function hiveRank(h) {
    if (liveness(h) !== "alive") return 3;
    return (h.gpus || []).reduce((r, g) => Math.max(r, gpuRank(g)), healthRank(h.health));
  }
  function compareWorkers(a, b) {
    return workerRank(b) - workerRank(a) || natural(a.hive_id, b.hive_id) || natural(a.worker_id, b.worker_id);
  }
  function compareHives(a, b) { return hiveRank(b) - hiveRank(a) || natural(a.hive_id, b.hive_id); }

  // modelState is a worker's share in its model's summary.
  function modelState(w) {
    if (workerRank(w) >= 2) return "problem";
    return w.status === "ready" ? "ready" : w.status === "busy" ? "busy" : "other";
  }

  // ---- filters ----

  function filters() {
    return {
      q: $("q").value.trim().toLowerCase(),
      hive: $("f-hive").value,
      model: $("f-model").value,
      status: $("f-status").value,
      liveness: $("f-liveness").value,
      events: $("f-events").value,
    };
  }

  // livenessMatches: "not_alive" keeps disconnected and stalled entries.
  function livenessMatches(e, want) {
    if (!want) return true;
    if (want === "not_alive") return liveness(e) !== "alive";
    return liveness(e) === want;
  }

  function workerMatches(w, f) {
    if (f.hive && w.hive_id !== f.hive) return false;
    if (f.model && w.model_id !== f.model) return false;
    if (f.status && w.status !== f.status) return false;
    if (!livenessMatches(w, f.liveness)) return false;
    if (f.q) {
      const hay = [workerKey(w), w.model_id, w.device, w.status, liveness(w), w.health, w.health_reason, w.engine]
        .join(" ").toLowerCase();
      if (!hay.includes(f.q)) return false;
    }
    return true;
  }

  function hiveMatches(h, f) {
    if (f.hive && h.hive_id !== f.hive) return false;
    if (f.liveness === "not_alive") {
      // Not-alive hives, and the hives of not-alive workers.
      if (liveness(h) === "alive" &&
        ![...state.workers.values()].some((w) => w.hive_id === h.hive_id && workerMatches(w, f))) return false;
    } else if (!livenessMatches(h, f.liveness)) return false;
    if (f.q) {
      const hay = [h.hive_id, h.hostname, h.health, h.health_reason]
        .concat((h.gpus || []).map((g) => g.name + " " + g.uuid))
        .join(" ").toLowerCase();
      if (!hay.includes(f.q)) {
        // A search for a worker or model still shows the hives that host it.
        const hosts = [...state.workers.values()].some((w) => w.hive_id === h.hive_id && workerMatches(w, f));
        if (!hosts) return false;
      }
    }
    if (f.model || f.status) {
      return [...state.workers.values()].some((w) => w.hive_id === h.hive_id && workerMatches(w, f));
    }
    return true;
  }

  // setOptions refills a select with values, keeping the selection.
  function setOptions(select, values) {
    const cur = select.value;
    const want = [""].concat(values);
    const have = [...select.options].map((o) => o.value);
    if (have.length === want.length && have.every((v, i) => v === want[i])) return;
    select.replaceChildren(el("option", { value: "", text: "all" }));
    for (const v of values) select.append(el("option", { value: v, text: v }));
    if (want.includes(cur)) select.value = cur;
    else if (cur) { select.append(el("option", { value: cur, text: cur })); select.value = cur; }
  }

  // ---- hives ----

  function hiveVRAM(hiveID, workerID) {
    const h = state.hives.get(hiveID);
    if (!h || !h.workers) return undefined;
    const hw = h.workers.find((x) => x.worker_id === workerID);
    return hw ? hw.vram_used_bytes : undefined;
  }

  function bar(used, total, label) {
    const known = used !== undefined && used !== null && total;
    const pct = known ? Math.min(100, (100 * used) / total) : 0;
    const b = el("div", { class: "bar" + (pct >= 95 ? " full" : pct >= 80 ? " high" : ""), role: "meter",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": known ? pct.toFixed(0) : null,
      "aria-label": label });
    const fill = el("span");
    fill.style.width = pct.toFixed(1) + "%";
    b.append(fill);
    return b;
  }

  function gpuView(g) {
    const used = g.vram_used_bytes;
    const total = g.vram_total_bytes;
    const known = used !== undefined && total !== undefined;
    const head = el("div", { class: "gpu-head" },
      el("span", { class: "name", text: "GPU " + g.index + " · " + (g.name || "unknown") }));
    if (g.health) {
      head.append(el("span", { class: "badge " + cls(g.health), text: g.health }));
    }
    if (g.health_reason) head.append(el("span", { class: "reason", text: g.health_reason }));
    if (g.xid !== undefined && g.xid !== null) {
      const x = el("span", { class: "badge xid", text: "XID " + g.xid });
      if (g.xid_at_ms) x.title = "at " + new Date(g.xid_at_ms).toLocaleString();
      head.append(x);
    }
    if (g.recovery_action && g.recovery_action !== "none") {
      head.append(el("span", { class: "badge unhealthy recovery", text: "recovery: " + g.recovery_action }));
    }
    return el("div", { class: "gpu", "data-uuid": g.uuid },
      head,
      bar(used, total, "VRAM GPU " + g.index),
      el("div", { class: "gpu-meta" },
        el("span", { class: "bar-label vram", text: known
          ? bytes(used) + " / " + bytes(total) + " · " + bytes(total - used) + " free"
          : "VRAM unknown" }),
        el("span", { class: "util", text: "util " + num(g.util_percent, "%") }),
        el("span", { class: "temp", text: num(g.temperature_c, " °C") }),
        el("span", { class: "power", text: num(g.power_w, " W") })));
  }

  function hiveView(h) {
    const live = liveness(h);
    const head = el("div", { class: "hive-head" },
      el("span", { class: "id", text: h.hive_id }),
      el("span", { class: "muted", text: h.hostname || "" }),
      el("span", { class: "badge health " + cls(h.health), text: h.health || "?" }));
    if (live !== "alive") head.append(el("span", { class: "badge liveness " + cls(live), text: live }));
    if (h.health_reason) head.append(el("span", { class: "reason", text: h.health_reason }));
    if (h.stats_stale) head.append(el("span", { class: "badge degraded", text: "stats stale" }));
    const ram = el("span", { text: "RAM " + bytes(h.ram_used_bytes) + " / " + bytes(h.ram_total_bytes) });
    const stats = el("div", { class: "hive-stats" },
      el("span", { text: "CPU " + num(h.cpu_percent, "%") }), ram,
      h.host_temperature_c !== undefined ? el("span", { text: "host " + num(h.host_temperature_c, " °C") }) : null,
      el("span", { text: (h.workers || []).length + " workers" }),
      el("span", { class: "beat", "data-ms": String(h.received_at_ms || 0), text: "beat " + ago(h.received_at_ms) + " ago" }));
    const card = el("article", { class: "hive" + (hiveRank(h) ? " problem" : ""), "data-hive": h.hive_id,
      "data-liveness": live }, head, stats);
    const gpus = h.gpus || [];
    if (gpus.length === 0) card.append(el("div", { class: "reason", text: "no GPU data" }));
    for (const g of gpus) card.append(gpuView(g));
    return card;
  }

  function renderHives(f) {
    const list = [...state.hives.values()].sort(compareHives);
    const shown = list.filter((h) => hiveMatches(h, f));
    $("hives").replaceChildren(...shown.map(hiveView));
    $("hives-count").textContent = shown.length === list.length ? String(list.length) : shown.length + " of " + list.length;
    $("hives-empty").hidden = shown.length > 0 || list.length === 0;
  }

  // ---- workers ----

  const COLUMNS = ["key", "status", "liveness", "health", "model", "device", "slots", "vram", "age", "beat"];
  const LABELS = ["Worker", "Status", "Liveness", "Health", "Model", "Device", "Slots", "VRAM", "Age", "Last beat"];

  function workerRow(key) {
    let tr = state.rows.get(key);
    if (!tr) {
      tr = el("tr", { "data-key": key });
      COLUMNS.forEach((c, i) => tr.append(el("td", { class: c, "data-label": LABELS[i] })));
      state.rows.set(key, tr);
    }
    return tr;
  }

  function setCell(td, text, badge) {
    if (td.textContent !== text) td.textContent = text;
    if (badge !== undefined) td.className = td.className.split(" ")[0] + " " + cls(badge);
  }

  function fillRow(tr, w) {
    const c = tr.children;
    const live = liveness(w);
    tr.dataset.liveness = live;
    tr.dataset.status = w.status || "";
    setCell(c[0], workerKey(w));
    setCell(c[1], w.status || "?", w.status);
    setCell(c[2], live, live);
    setCell(c[3], (w.health || "?") + (w.health_reason ? " · " + w.health_reason : ""), w.health);
    setCell(c[4], w.model_id || "–");
    c[4].title = w.model_id || "";
    setCell(c[5], w.device || "–");
    setCell(c[6], (w.slots_busy || 0) + " / " + (w.slots_total || 0) +
      (w.requests_waiting ? " +" + w.requests_waiting + " waiting" : "") +
      (w.kv_cache_percent !== undefined ? " · KV " + Math.round(w.kv_cache_percent) + "%" : "") +
      (w.sleeping ? " · asleep" : ""));
    const vram = hiveVRAM(w.hive_id, w.worker_id);
    setCell(c[7], vram === undefined ? "–" : bytes(vram));
    c[8].dataset.ms = String(w.first_seen_ms || 0);
    c[9].dataset.ms = String(w.received_at_ms || 0);
    setCell(c[8], ago(w.first_seen_ms));
    setCell(c[9], ago(w.received_at_ms) + " ago");
  }

  function renderWorkers(f) {
    const keys = [...state.workers.values()].sort(compareWorkers).map(workerKey);
    const body = $("workers").tBodies[0];
    let shown = 0;
    const want = [];
    for (const k of keys) {
      const w = state.workers.get(k);
      const tr = workerRow(k);
      fillRow(tr, w);
      const match = workerMatches(w, f);
      tr.hidden = !match;
      if (match) shown++;
      want.push(tr);
    }
    for (const [k, tr] of state.rows) {
      if (!state.workers.has(k)) { tr.remove(); state.rows.delete(k); }
    }
    // Put rows in order (problems first), moving only those out of place.
    let next = body.firstChild;
    for (const tr of want) {
      if (tr !== next) body.insertBefore(tr, next);
      else next = next.nextSibling;
    }
    $("workers-count").textContent = shown === keys.length ? String(keys.length) : shown + " of " + keys.length;
    $("workers-empty").hidden = shown > 0 || keys.length === 0;
  }

  // ---- events ----

  function eventView(e) {
    const t = new Date(e.at_ms);
    const details = [];
    const LIVENESS_EVENTS = ["disconnected", "reconnected", "stalled", "recovered"];
    const cur = LIVENESS_EVENTS.includes(e.event) ? (e.liveness || "alive")
      : e.kind === "worker" ? e.status : e.kind === "queen" ? e.status : e.health;
    if (e.previous && cur && e.previous !== cur) details.push(e.previous + " → " + cur);
    else if (e.status) details.push(e.status);
    if (e.liveness && e.liveness !== "alive" && e.liveness !== cur) details.push(e.liveness);
    if (e.model_id) details.push(e.model_id);
    if (e.kind === "worker" && e.health && e.health !== "healthy") details.push(e.health);
    if (e.health_reason) details.push(e.health_reason);
    return el("li", { "data-event": e.event, "data-key": e.key },
      el("time", { datetime: t.toISOString(), text: t.toLocaleTimeString() }),
      el("span", { class: "badge ev-" + cls(e.event), text: e.event }),
      el("span", { class: "key", text: e.kind + " " + e.key }),
      el("span", { class: "reason", text: details.join(" · ") }));
  }

  // The events select: "changes" leaves the status flips (updated) out.
  function eventMatches(e, f) {
    if (f.events === "changes" && e.event === "updated") return false;
    if (f.events && f.events !== "changes" && f.events !== "all" && e.event !== f.events) return false;
    if (f.hive && e.hive_id !== f.hive) return false;
    if (f.q && ![e.key, e.event, e.model_id, e.status].join(" ").toLowerCase().includes(f.q)) return false;
    return true;
  }

  function renderEvents(f) {
    const shown = state.events.filter((e) => eventMatches(e, f));
    $("events").replaceChildren(...shown.map(eventView));
    $("events-count").textContent = String(shown.length);
  }

  // ---- models ----

  // renderModels shows each model's ready / busy / problem / other workers,
  // models with no worker serving first, then those with a problem.
  function renderModels() {
    const by = new Map();
    for (const w of state.workers.values()) {
      const m = w.model_id || "";
      if (!by.has(m)) by.set(m, { model: m, ready: 0, busy: 0, problem: 0, other: 0 });
      by.get(m)[modelState(w)]++;
    }
    const rank = (m) => (m.ready + m.busy === 0 ? 0 : m.problem > 0 ? 1 : 2);
    const list = [...by.values()].sort((a, b) => rank(a) - rank(b) || natural(a.model, b.model));
    $("models").tBodies[0].replaceChildren(...list.map((m) => {
      const tr = el("tr", { "data-model": m.model, class: rank(m) < 2 ? "problem" : null },
        el("td", { class: "model", "data-label": "Model", text: m.model || "–" }));
      for (const k of ["ready", "busy", "problem", "other"]) {
        tr.append(el("td", { class: "n " + k + (k === "problem" && m.problem ? " unhealthy" : ""),
          "data-label": k, text: String(m[k]) }));
      }
      tr.addEventListener("click", () => { $("f-model").value = m.model; schedule(); });
      return tr;
    }));
    $("models-count").textContent = String(list.length);
    $("models-empty").hidden = list.length > 0;
  }

  // ---- render ----

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    setTimeout(render, 30);
  }

  function render() {
    pending = false;
    const ws = [...state.workers.values()];
    setOptions($("f-hive"), [...new Set([...state.hives.keys(), ...ws.map((w) => w.hive_id)])].sort(natural));
    setOptions($("f-model"), [...new Set(ws.map((w) => w.model_id).filter(Boolean))].sort(natural));
    setOptions($("f-status"), STATUSES.filter((s) => ws.some((w) => w.status === s)));
    const f = filters();
    renderModels();
    renderHives(f);
    renderWorkers(f);
    renderEvents(f);
    renderQueens();
    const gone = ws.filter((w) => liveness(w) !== "alive").length;
    const gpus = [...state.hives.values()].reduce((n, h) => n + (h.gpus || []).length, 0);
    $("totals").textContent = state.hives.size + " hives · " + gpus + " GPUs · " + ws.length + " workers" +
      (gone ? " · " + gone + " not alive" : "");
  }

  // renderQueens shows each queen's judgement of its registry.
  function renderQueens() {
    const qs = [...state.queens.values()].sort((a, b) => (a.queen_id < b.queen_id ? -1 : 1));
    $("queens").replaceChildren(...qs.map((q) => {
      const st = q.state || "?";
      const b = el("span", { class: "badge queen " + (st === "ok" ? "healthy" : st === "degraded" ? "degraded" : "unhealthy"),
        "data-queen": q.queen_id, text: "queen " + q.queen_id + ": " + st + (q.reason ? " · " + q.reason : "") });
      b.title = "backlog " + (q.backlog || 0) + " · write lag " + (q.write_lag_ms || 0) + " ms · " + (q.entries || 0) + " entries";
      return b;
    }));
  }

  // Ages tick locally; the data itself only changes on a message.
  function tickAges() {
    for (const td of document.querySelectorAll("td.age, td.beat")) {
      const ms = Number(td.dataset.ms);
      td.textContent = td.classList.contains("beat") ? ago(ms) + " ago" : ago(ms);
    }
    for (const s of document.querySelectorAll(".hive-stats .beat")) {
      s.textContent = "beat " + ago(Number(s.dataset.ms)) + " ago";
    }
  }

  // ---- stream ----

  function setConn(st, text) {
    const c = $("conn");
    c.dataset.state = st;
    c.textContent = text;
  }

  function onSnapshot(s) {
    state.offsetMs = s.now_ms - Date.now();
    state.workers.clear();
    state.hives.clear();
    for (const w of s.workers || []) state.workers.set(workerKey(w), w);
    for (const h of s.hives || []) state.hives.set(h.hive_id, h);
    state.queens.clear();
    for (const q of s.queens || []) state.queens.set(q.queen_id, q);
    state.events = (s.events || []).slice().reverse().slice(0, MAX_EVENTS);
    setConn("live", "live");
    schedule();
  }

  function onUpdate(u) {
    for (const w of u.workers || []) state.workers.set(workerKey(w), w);
    for (const h of u.hives || []) state.hives.set(h.hive_id, h);
    for (const k of u.removed_workers || []) state.workers.delete(k);
    for (const k of u.removed_hives || []) state.hives.delete(k);
    for (const q of u.queens || []) state.queens.set(q.queen_id, q);
    for (const k of u.removed_queens || []) state.queens.delete(k);
    schedule();
  }

  function onEvent(e) {
    state.events.unshift(e);
    if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
    schedule();
  }

  function parse(handler) {
    return (m) => {
      try { handler(JSON.parse(m.data)); } catch (err) { console.error("rbee: bad message", err); }
    };
  }

  let loadedOnce = false;

  // loadOnce reads the registry from the JSON API, for a queen that serves no
  // stream; the page then says it is not live.
  async function loadOnce() {
    try {
      let date = null;
      const [ws, hs] = await Promise.all(["v1/workers", "v1/hives"].map(async (u) => {
        const r = await fetch(u, { headers: { Accept: "application/json" } });
        if (!r.ok) throw new Error(u + ": " + r.status);
        date = date || r.headers.get("Date"); // the queen's clock, for ages
        return r.json();
      }));
      onSnapshot({ now_ms: date ? Date.parse(date) : Date.now(), workers: ws, hives: hs, events: [] });
      setConn("off", "not live: showing the registry as loaded; retrying");
    } catch (err) {
      console.error("rbee: load the registry", err);
    }
  }

  function connect() {
    if (!window.EventSource) { setConn("off", "no live updates in this browser"); return; }
    const es = new EventSource("v1/events");
    es.addEventListener("snapshot", parse((m) => { loadedOnce = false; onSnapshot(m); }));
    es.addEventListener("update", parse(onUpdate));
    es.addEventListener("event", parse(onEvent));
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // The server refused the stream (e.g. 503): show the registry as it
        // is once, say that it is not live, and try the stream again later.
        setConn("off", "not live: showing the registry as loaded; retrying");
        if (!loadedOnce) {
          loadedOnce = true;
          loadOnce();
        }
        setTimeout(connect, 5000);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    };
  }

  for (const id of ["q", "f-hive", "f-model", "f-status", "f-liveness", "f-events"]) {
    $(id).addEventListener("input", schedule);
    $(id).addEventListener("change", schedule);
  }
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  setInterval(tickAges, 1000);
  connect();
})();
