// shopstream live operations page. Every value from Redis is put into the page as
// text (textContent / text nodes), never as HTML: an alert summary or SKU name that
// carries markup shows that markup, it does not become it.
"use strict";

const state = {};
const charts = {};
let funnelDimension = "channel";
window.dashboard = { applied: {}, updates: 0, ready: false };

// -- small DOM helpers ------------------------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && key !== "title") el[key] = value;
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function fill(id, ...children) {
  const el = document.getElementById(id);
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return el;
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const moneyFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2, minimumFractionDigits: 2 });

function num(v) { return v === null || v === undefined || Number.isNaN(Number(v)) ? "–" : intFmt.format(Number(v)); }
function money(v) { return v === null || v === undefined ? "–" : moneyFmt.format(Number(v)); }
function pct(v, digits = 1) { return v === null || v === undefined ? "–" : (Number(v) * 100).toFixed(digits) + "%"; }
function clock(ms) { return ms ? new Date(ms).toISOString().slice(11, 19) : "–"; }
function age(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}
function empty(message) { return h("div", { class: "empty" }, message); }

// -- charts (uPlot, vendored) -----------------------------------------------------------

function chart(key, container, series, data, opts) {
  if (typeof uPlot === "undefined") return;
  const width = Math.max(container.clientWidth, 120);
  const existing = charts[key];
  if (existing && existing.series.length === series.length + 1 && existing.width === width) {
    existing.setData(data);
    return;
  }
  if (existing) existing.destroy();
  container.replaceChildren();
  charts[key] = new uPlot({ width, height: opts.height, series: [{}, ...series], ...opts.extra }, data, container);
}

function sparkline(key, container, points) {
  const xs = points.map((p) => p[0] / 1000);
  const ys = points.map((p) => (p[1] === null || p[1] === undefined ? null : Number(p[1])));
  chart(key, container, [{ stroke: "#58a6ff", fill: "rgba(88,166,255,0.15)", width: 1.5, spanGaps: true }], [xs, ys], {
    height: 36,
    extra: { legend: { show: false }, cursor: { show: false }, axes: [{ show: false }, { show: false }],
             scales: { x: { time: false } }, padding: [2, 0, 2, 0] },
  });
}

// -- sections ---------------------------------------------------------------------------

const KPI_TILES = [
  ["gmv", "GMV", money], ["orders", "Orders", num], ["paid_orders", "Paid orders", num],
  ["aov", "AOV", money], ["uv", "UV", num], ["pv", "PV", num], ["payment_success_rate", "Payment success", pct],
];

function renderKpi(kpi) {
  const latest = kpi.latest || {};
  const rolling = kpi.rolling || {};
  const container = document.getElementById("kpis");
  if (!container.children.length) {
    for (const [field, label] of KPI_TILES) {
      container.append(h("div", { class: "tile", id: "kpi-" + field, "data-field": field },
        h("div", { class: "label" }, label), h("div", { class: "value" }, "–"),
        h("div", { class: "sub" }, ""), h("div", { class: "spark" })));
    }
  }
  for (const [field, , format] of KPI_TILES) {
    const tile = document.getElementById("kpi-" + field);
    tile.querySelector(".value").textContent = format(latest[field]);
    const sub = field in rolling ? "rolling " + format(rolling[field]) : "";
    tile.querySelector(".sub").textContent = sub;
    sparkline("spark-" + field, tile.querySelector(".spark"), (kpi.history || []).map((w) => [w.window_end, w[field]]));
  }
  text("clock", latest.window_end ? "window to " + clock(latest.window_end) + " UTC" : "no window yet");
}

function stageRows(window) {
  if (!window || !window.stages) return empty("no window closed yet");
  const stages = state.funnel.stages;
  const top = Math.max(window.stages[stages[0]] || 0, 1);
  return stages.map((stage, i) => {
    const count = window.stages[stage] || 0;
    const conversion = i === 0 ? null : (window.conversion || {})[stage];
    const drop = i === 0 ? null : (window.dropoff || {})[stage];
    return h("div", { class: "stage", "data-stage": stage },
      h("div", { class: "name" }, stage.replaceAll("_", " ")),
      h("div", {}, h("div", { class: "bar", style: { width: (100 * count / top).toFixed(1) + "%" } })),
      h("div", { class: "nums" }, h("span", { class: "count" }, num(count)),
        i === 0 ? "" : " · " + pct(conversion) + " ", i === 0 ? "" : h("span", { class: "drop" }, "−" + pct(drop))));
  });
}

function renderFunnel(funnel) {
  const overall = funnel.overall;
  fill("funnel-overall", stageRows(overall));
  fill("funnel-rolling", stageRows(funnel.rolling));
  // Clean figures (flagged traffic out, see the traffic flow); the gross conversion beside them when it differs.
  const gross = overall && overall.flagged_stages && overall.flagged_stages.visit
    ? " (gross " + pct(overall.overall_conversion_gross, 2) + ", " + num(overall.flagged_stages.visit) +
      " flagged sessions left out)" : "";
  text("funnel-window", overall ? clock(overall.window_start) + "–" + clock(overall.window_end) +
    " · overall conversion " + pct(overall.overall_conversion, 2) + gross : "");
  fill("funnel-tabs", ["channel", "region", "device"].map((d) => h("button", {
    role: "tab", "aria-selected": String(d === funnelDimension), "data-dimension": d,
    onclick: () => { funnelDimension = d; renderFunnel(state.funnel); },
  }, "by " + d)));
  const rows = (funnel.by || {})[funnelDimension] || [];
  const stages = funnel.stages;
  fill("funnel-by",
    h("tr", {}, h("th", {}, funnelDimension), ...stages.map((s) => h("th", { class: "num" }, s.replaceAll("_", " "))),
      h("th", { class: "num" }, "conversion")),
    rows.map((w) => h("tr", { "data-value": w.value, class: overall && w.window_end < overall.window_end ? "dim" : "" },
      h("td", {}, w.value),
      ...stages.map((s, i) => h("td", { class: "num" }, num((w.stages || {})[s]),
        i ? h("div", { class: "dim" }, pct((w.conversion || {})[s], 0)) : "")),
      h("td", { class: "num" }, pct(w.overall_conversion, 2)))));
}

async function acknowledge(button, dedupKey) {
  button.disabled = true;
  button.textContent = "…";
  try {
    const response = await fetch("/api/alerts/ack", {
      method: "POST", headers: { "content-type": "application/json" }, credentials: "same-origin",
      body: JSON.stringify({ dedup_key: dedupKey }),
    });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.status);
    button.textContent = "acknowledged";
  } catch (err) {
    button.disabled = false;
    button.textContent = "ack";
    showBanner("could not acknowledge " + dedupKey + ": " + err.message);
  }
}

function renderAlerts(alerts) {
  const counts = alerts.by_severity || {};
  fill("alert-counts", ["critical", "warning", "info"].filter((s) => counts[s]).map((s) =>
    h("span", { class: "sev sev-" + s, "data-severity": s }, " " + counts[s] + " " + s)));
  const active = alerts.active || [];
  fill("alerts-active", active.length ? [
    h("tr", {}, h("th", {}, "severity"), h("th", {}, "alert"), h("th", { class: "num" }, "age"),
      h("th", { class: "num" }, "count"), h("th", {}, "")),
    active.slice(0, 200).map((a) => h("tr", { "data-dedup-key": a.dedup_key },
      h("td", {}, h("span", { class: "sev sev-" + a.severity }, a.severity),
        a.status === "escalated" ? h("div", { class: "st-escalated" }, "escalated") : ""),
      h("td", { class: "summary" }, h("div", { class: "alert-summary" }, a.summary), h("div", { class: "dim" }, a.dedup_key)),
      h("td", { class: "num" }, age(a.age_ms)),
      h("td", { class: "num" }, num(a.count)),
      h("td", {}, a.acknowledged ? h("span", { class: "acked" }, "acknowledged")
        : h("button", { class: "ack", onclick: (e) => acknowledge(e.currentTarget, a.dedup_key) }, "ack")))),
    (alerts.active_total || 0) > active.length ? h("tr", {}, h("td", { colspan: 5, class: "dim" }, num(alerts.active_total - active.length) + " more (counted above)")) : null,
  ] : h("tr", {}, h("td", { class: "empty" }, "nothing firing")));
  fill("alerts-recent", (alerts.recent || []).map((a) => h("li", {},
    h("span", { class: "dim" }, clock(a.ts) + " "), h("span", { class: "sev sev-" + a.severity }, a.severity + " "),
    h("span", { class: "st-" + a.status }, a.status + " "), h("span", { class: "summary" }, a.summary))));
}

function renderStock(stock) {
  const levels = ["safe", "warning", "urgent", "out"];
  const counts = stock.counts || {};
  const total = Math.max(stock.skus || 0, 1);
  text("stock-total", num(stock.skus) + " SKUs");
  fill("stock-levels", levels.map((l) => h("div", { class: "lv-" + l, title: l, style: { width: (100 * (counts[l] || 0) / total) + "%" } })));
  fill("stock-legend", levels.map((l) => h("span", { "data-level": l }, h("span", { class: "sw lv-" + l }), l + " ",
    h("b", {}, num(counts[l] || 0)))));
  text("stock-hot-count", stock.hot_total > (stock.hot || []).length ? "(first " + stock.hot.length + " of " + num(stock.hot_total) + ")" : "");
  const hot = stock.hot || [];
  fill("stock-hot", hot.length ? [
    h("tr", {}, h("th", {}, "SKU"), h("th", {}, "level"), h("th", { class: "num" }, "available"),
      h("th", { class: "num" }, "per min"), h("th", { class: "num" }, "out in"),
      h("th", { class: "num", title: "units to order to cover " + stock.cover_minutes + " min of sales" }, "replenish")),
    hot.map((r) => h("tr", { "data-sku": r.sku },
      h("td", { class: "summary" }, r.sku), h("td", { class: "lvl-" + r.level }, r.level),
      h("td", { class: "num" }, num(r.available)), h("td", { class: "num" }, r.velocity_per_min ?? "–"),
      h("td", { class: "num" }, r.minutes_to_stockout === null ? "–" : Number(r.minutes_to_stockout).toFixed(0) + " min"),
      h("td", { class: "num" }, r.replenish === null ? "–" : "+" + num(r.replenish)))),
  ] : h("tr", {}, h("td", { class: "empty" }, "no SKU urgent or out")));
}

function renderFraud(fraud) {
  const totals = fraud.totals || {};
  text("fraud-totals", fraud.complete ? num(fraud.decisions) + " decisions in 24 h · " +
    ["approve", "review", "block"].map((v) => num(totals[v] || 0) + " " + v).join(" · ") : "counting…");
  const rows = fraud.per_minute || [];
  const container = document.getElementById("fraud-chart");
  if (rows.length) {
    const data = [rows.map((r) => r.minute / 1000), ...["approve", "review", "block"].map((v) => rows.map((r) => r[v] || 0))];
    chart("fraud", container, [
      { label: "approve", stroke: "#3fb950", width: 1.5 },
      { label: "review", stroke: "#d29922", width: 1.5 },
      { label: "block", stroke: "#f85149", width: 2, fill: "rgba(248,81,73,0.12)" },
    ], data, { height: 160, extra: { axes: [{ stroke: "#8b98a5", grid: { stroke: "#2a3440" } }, { stroke: "#8b98a5", grid: { stroke: "#2a3440" } }] } });
  } else {
    if (charts.fraud) { charts.fraud.destroy(); delete charts.fraud; }
    container.replaceChildren(empty("no decision yet"));
  }
  const blocks = fraud.latest_blocks || [];
  fill("fraud-blocks", blocks.length ? [
    h("tr", {}, h("th", {}, "time"), h("th", {}, "payment"), h("th", { class: "num" }, "score"), h("th", {}, "reasons")),
    blocks.map((b) => h("tr", {}, h("td", {}, clock(b.ts)), h("td", { class: "summary" }, b.payment_id, h("div", { class: "dim" }, b.user_id)),
      h("td", { class: "num" }, b.score === null || b.score === undefined ? "–" : Number(b.score).toFixed(2)),
      h("td", { class: "reasons" }, (b.reasons || []).join(", ")))),
  ] : h("tr", {}, h("td", { class: "empty" }, "no block")));
}

function recoveryTiles(recovery) {
  // Abandoned-cart coupons of the last day of recovery windows (coupons:recovery:latest:history).
  const span = recovery ? "abandoned-cart coupons, " + clock(recovery.since) + " to " + clock(recovery.until) : "no recovery window yet";
  const rate = recovery && recovery.recovery_rate !== null ? " (" + (100 * recovery.recovery_rate).toFixed(1) + "%)" : "";
  return [
    h("div", { class: "tile", title: span },
      h("div", { class: "label" }, "redeemed"), h("div", { class: "value", id: "coupons-redeemed" }, recovery ? num(recovery.redeemed) + rate : "–")),
    h("div", { class: "tile", title: span },
      h("div", { class: "label" }, "recovered GMV"), h("div", { class: "value", id: "coupons-recovered" }, recovery ? money(recovery.recovered_gmv) : "–")),
  ];
}

function renderCoupons(coupons) {
  fill("coupon-tiles",
    h("div", { class: "tile" }, h("div", { class: "label" }, "issued"), h("div", { class: "value", id: "coupons-issued" }, num(coupons.issued))),
    recoveryTiles(coupons.recovery));
  const recent = coupons.recent || [];
  fill("coupons-recent", recent.length ? [
    h("tr", {}, h("th", {}, "time"), h("th", {}, "shopper"), h("th", {}, "reason"), h("th", {}, "offer"), h("th", {}, "tier")),
    recent.map((c) => h("tr", {}, h("td", {}, clock(c.ts)), h("td", { class: "summary" }, c.user_id), h("td", {}, c.reason),
      h("td", {}, c.kind + " " + (c.value ?? "")), h("td", {}, c.tier || "–"))),
  ] : h("tr", {}, h("td", { class: "empty" }, "none issued yet")));
}

function renderChurn(churn) {
  const grid = churn.grid || {};
  text("churn-total", churn.complete ? num(churn.customers) + " scored" : "counting…");
  const tierOrder = ["diamond", "gold", "silver", "bronze"];
  const tiers = Object.keys(grid).sort((a, b) => (tierOrder.indexOf(a) + 99 * (tierOrder.indexOf(a) < 0)) - (tierOrder.indexOf(b) + 99 * (tierOrder.indexOf(b) < 0)) || a.localeCompare(b));
  const risks = ["low", "medium", "high", ...new Set(tiers.flatMap((t) => Object.keys(grid[t])).filter((r) => !["low", "medium", "high"].includes(r)))];
  const max = Math.max(1, ...tiers.flatMap((t) => Object.values(grid[t])));
  fill("churn-grid", tiers.length ? [
    h("tr", {}, h("th", {}, "tier \\ risk"), ...risks.map((r) => h("th", { class: "num" }, r)), h("th", { class: "num" }, "all")),
    tiers.map((t) => h("tr", { "data-tier": t }, h("td", {}, t),
      ...risks.map((r) => h("td", { class: "num", style: { background: `rgba(${r === "high" ? "248,81,73" : r === "medium" ? "210,153,34" : "63,185,80"},${(0.08 + 0.5 * (grid[t][r] || 0) / max).toFixed(2)})` } }, num(grid[t][r] || 0))),
      h("td", { class: "num" }, num(Object.values(grid[t]).reduce((a, b) => a + b, 0))))),
  ] : h("tr", {}, h("td", { class: "empty" }, churn.complete ? "no customer scored yet" : "counting…")));
}

function renderExperiments(experiments) {
  fill("experiments", experiments.length ? experiments.map((e) => h("div", { "data-experiment": e.name },
    h("h3", {}, e.name + " (control: " + e.control + ")"),
    h("table", { class: "data" },
      h("tr", {}, h("th", {}, "variant"), h("th", { class: "num" }, "sessions"), h("th", { class: "num" }, "orders"),
        h("th", { class: "num" }, "conversion"), h("th", { class: "num" }, "lift"), h("th", { class: "num" }, "p"), h("th", {}, "")),
      Object.entries(e.variants || {}).map(([name, v]) => {
        const c = (e.comparisons || []).find((x) => x.variant === name);
        return h("tr", {}, h("td", {}, name), h("td", { class: "num" }, num(v.sessions)), h("td", { class: "num" }, num(v.orders)),
          h("td", { class: "num" }, pct(v.conversion, 2)), h("td", { class: "num" }, c ? (c.lift === null ? "–" : (c.lift > 0 ? "+" : "") + pct(c.lift)) : "control"),
          h("td", { class: "num" }, c ? c.p_value : ""),
          h("td", {}, c ? (c.significant ? h("span", { class: "sig" }, "significant") : h("span", { class: "nosig" }, c.enough_sessions ? "not sig." : "too few")) : ""));
      })))) : empty("no experiment running"));
}

function renderStatus(status) {
  text("redis-address", status.redis_address || "");
  text("redis-prefix", status.prefix || "");
  if (status.redis !== "ok") showBanner("Redis at " + status.redis_address + " is unreachable (" + (status.error || "?") + "); showing the last values read, retrying");
  else hideBanner();
}

function showBanner(message) { const b = document.getElementById("banner"); b.textContent = message; b.hidden = false; }
function hideBanner() { document.getElementById("banner").hidden = true; }

const RENDERERS = {
  status: renderStatus, kpi: renderKpi, funnel: renderFunnel, alerts: renderAlerts, stock: renderStock,
  fraud: renderFraud, coupons: renderCoupons, churn: renderChurn, experiments: renderExperiments,
};

function apply(sections) {
  for (const [name, value] of Object.entries(sections)) {
    state[name] = value;
    const render = RENDERERS[name];
    if (!render || value === undefined) continue;
    try {
      render(value);
    } catch (err) {
      console.error("cannot render " + name, err);
    }
    window.dashboard.applied[name] = Date.now();
  }
  window.dashboard.updates += 1;
}

// -- the live connection ----------------------------------------------------------------

let source = null;
let hiddenTimer = null;

function connect() {
  const badge = document.getElementById("connection");
  if (source) source.close();
  source = new EventSource("/api/events");
  const mine = source;
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "badge badge-live"; });
  source.addEventListener("snapshot", (e) => {
    apply(JSON.parse(e.data));
    // Milliseconds from navigation start to the first complete render (the benchmark reads it).
    if (!window.dashboard.ready) window.dashboard.readyAt = performance.now();
    window.dashboard.ready = true;
    document.body.dataset.ready = "1";
  });
  source.addEventListener("update", (e) => apply(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    // EventSource retries by itself (the server asks for 1 s); a closed stream needs a new one.
    badge.textContent = "reconnecting…";
    badge.className = "badge badge-down";
    if (mine.readyState === EventSource.CLOSED && source === mine) {
      setTimeout(() => { if (source === mine) connect(); }, 1000);
    }
  });
}

// A browser opens at most six HTTP/1.1 connections to one server, and every open page
// holds one for its stream: a tab left in the background gives its connection back
// after a minute and takes a fresh snapshot when it is shown again.
document.addEventListener("visibilitychange", () => {
  clearTimeout(hiddenTimer);
  if (document.visibilityState === "hidden") {
    hiddenTimer = setTimeout(() => {
      if (source) source.close();
      source = null;
      const badge = document.getElementById("connection");
      badge.textContent = "paused (tab hidden)";
      badge.className = "badge badge-wait";
    }, 60000);
  } else if (!source) {
    connect();
  }
});

document.addEventListener("DOMContentLoaded", connect);
