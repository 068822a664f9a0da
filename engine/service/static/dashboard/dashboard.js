// policyctl dashboard: reads /dashboard/snapshot.json once, then the snapshots the server
// sends on /dashboard/events (server-sent events). No framework, nothing fetched from
// elsewhere. Every value that comes from requests (keys, scopes, ids, model names) is put in
// the page as text (textContent) or as a data attribute (setAttribute), never as markup.
// Each figure a reader or a test may check carries data-field (data-key for one entry of a
// list) and data-value, its exact JSON value; the element's text is the human form.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 600;
  const H = 220;
  const PAD = { left: 6, right: 12, top: 22, bottom: 26 };  // y labels sit above their lines
  const MODEL_CLASSES = 6;

  const $ = (id) => document.getElementById(id);
  const state = { series: [], seq: -1, capacity: 302, historyS: 300, source: null };

  // ------------------------------------------------------------------ small helpers

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function mark(node, field, value, text, key) {
    node.setAttribute("data-field", field);
    node.setAttribute("data-value", JSON.stringify(value));
    if (key !== undefined) node.setAttribute("data-key", key);
    node.textContent = text;
    return node;
  }

  function setAll(field, value, text) {
    for (const node of document.querySelectorAll(`[data-field="${field}"]`)) {
      mark(node, field, value, text);
    }
  }

  function number(value, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function rate(value) {
    return number(value, value < 10 ? 2 : 1);
  }

  function money(value) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    if (value === 0) return "$0";
    return "$" + value.toLocaleString("en-US", { maximumSignificantDigits: 4 });
  }

  function ms(value) {
    return number(value, value < 10 ? 2 : value < 100 ? 1 : 0) + " ms";
  }

  function percent(value) {
    return number(value * 100, 1) + "%";
  }

  function time(epochS) {
    if (typeof epochS !== "number") return "–";
    return new Date(epochS * 1000).toLocaleTimeString([], { hour12: false });
  }

  function dateTime(epochS) {
    if (typeof epochS !== "number") return "–";
    return new Date(epochS * 1000).toLocaleString([], { hour12: false });
  }

  function showTable(tableId, emptyId, rows) {
    $(tableId).hidden = rows === 0;
    $(emptyId).hidden = rows !== 0;
  }

  function setConnection(what, text) {
    const node = $("connection");
    node.className = "connection " + what;
    mark(node, "connection", what, text);
  }

  // ------------------------------------------------------------------ rendering

  function render(snap) {
    if (typeof snap.seq === "number" && snap.seq < state.seq) state.series = []; // a restart
    state.seq = snap.seq;
    state.historyS = snap.history_s || state.historyS;
    state.capacity = Math.ceil(state.historyS / (snap.interval_s || 1)) + 2;
    mergeSeries(snap.series || []);

    const d = snap.decisions;
    setAll("decisions_per_s", d.per_second, rate(d.per_second));
    setAll("allowed", d.allowed, number(d.allowed, 0));
    setAll("denied", d.denied, number(d.denied, 0));
    setAll("total", d.total, number(d.total, 0));
    $("rate-window").textContent = `(last ${number(d.window_s, 0)} s)`;
    setAll("spend_per_minute", snap.spend.per_minute, money(snap.spend.per_minute));
    setAll("snapshot_seq", snap.seq, String(snap.seq));
    setAll("updated", snap.at, time(snap.at));

    renderPolicy(snap.policy);
    renderAlerts(snap.alerts || []);
    renderModels(snap.models || []);
    renderTop(snap.top_limited || []);
    renderViolations(snap.violations || [], snap.violations_error);
    drawCharts();
  }

  function renderPolicy(policy) {
    setAll("policy_version", policy.version, policy.version);
    setAll("policy_version_detail", policy.version, policy.version);
    setAll("loaded_at", policy.loaded_at, dateTime(policy.loaded_at));
    setAll("reloads", policy.reloads, number(policy.reloads, 0));
    setAll("reload_errors", policy.reload_errors, number(policy.reload_errors, 0));
    const failed = policy.last_error !== null && policy.last_error !== undefined;
    setAll("last_error", failed ? policy.last_error : null, failed ? policy.last_error : "");
    $("reload-error").hidden = !failed;
  }

  function renderAlerts(alerts) {
    const body = $("alerts");
    body.replaceChildren();
    alerts.forEach((alert, i) => {
      const row = el("tr", null, { "data-field": "alert", "data-key": String(i),
                                  "data-value": JSON.stringify(alert) });
      row.append(
        el("td", alert.message || alert.name),
        el("td", alert.state, { class: "alert-" + String(alert.state).replace(/[^a-z]/g, "") }),
        el("td", typeof alert.since === "number" ? dateTime(alert.since) : alert.since),
        el("td", alert.value_text != null ? alert.value_text
                 : typeof alert.value === "number" ? number(alert.value, 3) : alert.value,
           { class: "num" }),
      );
      body.append(row);
    });
    setAll("alerts_count", alerts.length, String(alerts.length));
    showTable("alerts-table", "no-alerts", alerts.length);
  }

  function renderModels(models) {
    const body = $("models");
    body.replaceChildren();
    for (const m of models) {
      const row = el("tr");
      const name = el("td", null, { class: "key-cell" });
      name.append(mark(el("code"), "model", m.model, m.model, m.model));
      row.append(
        name,
        mark(el("td", null, { class: "num" }), "model_samples", m.samples, number(m.samples, 0), m.model),
        mark(el("td", null, { class: "num" }), "model_p50_ms", m.p50_ms, ms(m.p50_ms), m.model),
        mark(el("td", null, { class: "num" }), "model_p95_ms", m.p95_ms, ms(m.p95_ms), m.model),
        mark(el("td", null, { class: "num" }), "model_success_rate", m.success_rate,
             percent(m.success_rate), m.model),
      );
      body.append(row);
    }
    showTable("models-table", "no-models", models.length);
  }

  function renderTop(top) {
    const body = $("top");
    body.replaceChildren();
    for (const t of top) {
      const key = JSON.stringify([t.scope, t.key]);
      const row = el("tr");
      row.append(
        mark(el("td"), "top_scope", t.scope, t.scope, key),
        mark(el("td", null, { class: "key-cell" }), "top_key", t.key, t.key === null ? "(none)" : t.key, key),
        mark(el("td", null, { class: "num" }), "top_violations", t.violations, number(t.violations, 0), key),
      );
      body.append(row);
    }
    showTable("top-table", "no-top", top.length);
  }

  function renderViolations(violations, error) {
    const body = $("violations");
    body.replaceChildren();
    violations.forEach((v, i) => {
      const row = el("tr", null, { "data-field": "violation", "data-key": String(i),
                                  "data-value": JSON.stringify(v) });
      const when = el("td", time(v.at), { class: "num" });
      if (v.request_id !== null && v.request_id !== undefined) when.title = "request " + v.request_id;
      row.append(
        when,
        el("td", v.scope),
        mark(el("td", null, { class: "key-cell" }), "violation_key", v.key, v.key === null ? "(none)" : v.key, String(i)),
        el("td", v.unit),
      );
      body.append(row);
    });
    showTable("violations-table", "no-violations", violations.length);
    $("violations-error").hidden = !error;
    $("violations-error-text").textContent = error || "";
  }

  // ------------------------------------------------------------------ series and charts

  function mergeSeries(points) {
    const last = state.series.length ? state.series[state.series.length - 1].seq : -1;
    for (const p of points) if (p.seq > last) state.series.push(p);
    if (state.series.length > state.capacity) state.series.splice(0, state.series.length - state.capacity);
  }

  function drawCharts() {
    const s = state.series;
    lineChart($("chart-decisions"), [
      { cls: "s-allowed", points: s.map((p) => [p.at, p.allowed_per_s]) },
      { cls: "s-denied", points: s.map((p) => [p.at, p.denied_per_s]) },
    ], { format: (v) => rate(v) });
    lineChart($("chart-spend"), [
      { cls: "s-spend", points: s.map((p) => [p.at, p.spend_per_minute]) },
    ], { format: money });

    const names = [];
    for (const p of s) for (const name of Object.keys(p.models || {})) if (!names.includes(name)) names.push(name);
    names.sort();
    const perModel = (index) => names.map((name, i) => ({
      cls: `m${i % MODEL_CLASSES} dash${i >= MODEL_CLASSES ? " extra" : ""}`,
      points: s.filter((p) => p.models && p.models[name]).map((p) => [p.at, p.models[name][index] * (index === 2 ? 100 : 1)]),
    }));
    lineChart($("chart-p95"), perModel(1), { format: (v) => number(v, 0) });
    lineChart($("chart-success"), perModel(2), { format: (v) => number(v, 0), max: 100 });
    legend($("legend-p95"), names);
    legend($("legend-success"), names);
  }

  function legend(node, names) {
    node.replaceChildren();
    names.forEach((name, i) => {
      node.append(el("span", null, { class: `key m${i % MODEL_CLASSES}` }), document.createTextNode(name + " "));
    });
    if (!names.length) node.textContent = "no outcomes reported yet";
  }

  function lineChart(node, lines, options) {
    node.replaceChildren();
    const all = lines.flatMap((l) => l.points);
    const newest = all.length ? Math.max(...all.map((p) => p[0])) : 0;
    const x0 = newest - state.historyS;
    let top = options.max !== undefined ? options.max : Math.max(0, ...all.map((p) => p[1]));
    if (!(top > 0)) top = 1;
    top = nice(top);
    const x = (t) => PAD.left + ((t - x0) / state.historyS) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
    node.append(
      svg("line", { class: "axis", x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }),
      svg("line", { class: "grid", x1: PAD.left, y1: y(top), x2: W - PAD.right, y2: y(top) }),
      svg("line", { class: "grid", x1: PAD.left, y1: y(top / 2), x2: W - PAD.right, y2: y(top / 2) }),
      svg("text", { x: PAD.left, y: y(top) - 4 }, options.format(top)),
      svg("text", { x: PAD.left, y: y(top / 2) - 4 }, options.format(top / 2)),
      svg("text", { x: PAD.left, y: H - 6 }, `−${Math.round(state.historyS / 60)} min`),
      svg("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end" }, "now"),
    );
    if (!all.length) {
      node.append(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
      return;
    }
    for (const line of lines) {
      const shown = line.points.filter((p) => p[0] >= x0 && isFinite(p[1]));
      if (!shown.length) continue;
      const coords = shown.map((p) => `${x(p[0]).toFixed(1)},${y(Math.min(p[1], top)).toFixed(1)}`);
      if (coords.length === 1) coords.push(coords[0]);
      node.append(svg("polyline", { class: `line ${line.cls}`, points: coords.join(" ") }));
    }
  }

  function nice(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  // ------------------------------------------------------------------ session and stream

  async function start() {
    let session;
    try {
      const response = await fetch("/dashboard/session", { cache: "no-store", credentials: "same-origin" });
      session = await response.json();
    } catch (err) {
      setConnection("down", "the server does not answer");
      return;
    }
    $("logout").hidden = !session.required;
    if (session.required && !session.authenticated) showLogin("");
    else openBoard();
  }

  function showLogin(message) {
    if (state.source) state.source.close();
    state.source = null;
    $("board").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message;
    setConnection("down", "not logged in");
    $("token").focus();
  }

  async function login(event) {
    event.preventDefault();
    const token = $("token").value;
    let response;
    try {
      response = await fetch("/dashboard/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
      });
    } catch (err) {
      showLogin("the server does not answer");
      return;
    }
    if (response.status === 204) {
      $("token").value = "";
      $("login").hidden = true;
      openBoard();
    } else if (response.status === 401) {
      showLogin("wrong token: the server refused it");
    } else {
      showLogin(`the server answered ${response.status}`);
    }
  }

  async function logout() {
    await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
    showLogin("");
  }

  async function openBoard() {
    let response;
    try {
      response = await fetch("/dashboard/snapshot.json", { cache: "no-store", credentials: "same-origin" });
    } catch (err) {
      setConnection("down", "the server does not answer");
      return;
    }
    if (response.status === 401) {
      showLogin("the session has expired: enter the token again");
      return;
    }
    $("board").hidden = false;
    render(await response.json());
    connect();
  }

  function connect() {
    const source = new EventSource("/dashboard/events");
    state.source = source;
    source.addEventListener("snapshot", (event) => {
      setConnection("live", "live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("open", () => setConnection("live", "live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // refused (the session expired, or the server went away): ask what to do
        setConnection("down", "disconnected");
        setTimeout(start, 3000);
      } else {
        setConnection("down", "reconnecting…");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    start();
  });
})();
