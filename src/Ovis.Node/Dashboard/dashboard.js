// The node's dashboard: polls the admin API's read-only routes and /metrics (no token needed)
// every two seconds. Plain browser JavaScript on purpose: no build step, nothing to fetch.
"use strict";

const PollMs = 2000;
const HistoryPoints = 150; // five minutes at one point per poll
const history = [];
let previous = null; // { at, reads, writes, written } from the last scrape
let previousBuckets = null; // latency histogram buckets from the last scrape
const latencyOps = [["write", "#c0392b"], ["read", "#2e6fd1"], ["flush", "#8e44ad"]];
const jobBytes = new Map(); // job id -> { at, bytes } of the last poll, for the rate

const $ = id => document.getElementById(id);

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return `${n.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

async function json(path) {
  const r = await fetch(path, { cache: "no-store" });
  return r.ok ? r.json() : null; // a single node answers 409 to the cluster routes
}

// Sums the samples of each metric, over all its series, from the Prometheus text format.
function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.length === 0) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)/.exec(line);
    if (m) sums[m[1]] = (sums[m[1]] ?? 0) + Number(m[3]);
  }
  return sums;
}

// The request-duration histogram's cumulative buckets, summed over volumes: op -> [[le, count]],
// ascending, plus the sum of seconds and the count per op.
function parseLatency(text) {
  const ops = {};
  for (const line of text.split("\n")) {
    const m = /^ovis_volume_request_duration_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)/.exec(line);
    if (!m) continue;
    const op = /op="([^"]*)"/.exec(m[2])?.[1];
    if (!op) continue;
    const o = ops[op] ??= { buckets: new Map(), sum: 0, count: 0 };
    if (m[1] === "bucket") {
      const le = /le="([^"]*)"/.exec(m[2])?.[1];
      const bound = le === "+Inf" ? Infinity : Number(le);
      o.buckets.set(bound, (o.buckets.get(bound) ?? 0) + Number(m[3]));
    } else {
      o[m[1]] += Number(m[3]);
    }
  }
  return ops;
}

// Mean and p99 (the upper bound of the bucket that holds it, as a coarse but honest figure) of
// the requests answered between two scrapes; null when none were.
function latencyBetween(before, now) {
  if (!before || !now) return null;
  const count = now.count - before.count;
  if (count <= 0) return null;
  const mean = (now.sum - before.sum) / count;
  const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
  let p99 = Infinity;
  for (const le of bounds) {
    if (now.buckets.get(le) - (before.buckets.get(le) ?? 0) >= 0.99 * count) { p99 = le; break; }
  }
  return { mean, p99: Number.isFinite(p99) ? p99 : mean };
}

function ms(seconds) {
  return seconds < 0.001 ? (seconds * 1000).toFixed(2) : (seconds * 1000).toFixed(1);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function stateCell(row, state) {
  const span = document.createElement("span");
  span.className = `state-${state}`;
  span.textContent = state;
  row.insertCell().appendChild(span);
}

// Every layer under the one it reads through, as `ovis vdi tree` draws them: a volume under its
// newest snapshot, that snapshot under the one before, a clone under the snapshot it came from.
function renderVolumes(volumes) {
  const body = $("volumes").tBodies[0];
  body.replaceChildren();
  const children = new Map();
  for (const v of volumes) {
    const parent = v.parent ?? "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(v);
  }
  const visit = (v, depth) => {
    const row = body.insertRow();
    row.dataset.volume = v.name;
    const name = cell(row, "");
    if (depth > 0) {
      const t = document.createElement("span");
      t.className = "tree";
      t.textContent = "  ".repeat(depth - 1) + "└ ";
      name.appendChild(t);
    }
    const label = document.createElement("span");
    label.textContent = v.name;
    if (v.isSnapshot) label.className = "snapshot";
    name.appendChild(label);
    cell(row, bytes(v.size), "num");
    cell(row, bytes(v.usedBytes), "num");
    cell(row, v.isSnapshot ? "" : String(v.connections), "num");
    for (const c of children.get(v.name) ?? []) visit(c, depth + 1);
  };
  for (const root of children.get("") ?? []) visit(root, 0);
}

function renderNodes(node, members) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  const rows = members ?? [{ id: "this node", zone: "–", state: "up", stale: false, space: node.space, objects: null }];
  for (const m of rows) {
    const row = body.insertRow();
    cell(row, m.id);
    cell(row, m.zone);
    stateCell(row, m.stale ? "stale" : m.drain ?? m.state);
    const s = m.space;
    cell(row, s ? `${bytes(s.usedBytes)} of ${bytes(s.totalBytes)} (${s.state})` : "–");
    cell(row, m.objects == null ? "–" : String(m.objects), "num");
    cell(row, m.roundTripMs == null ? "–" : `${m.roundTripMs.toFixed(2)} ms`, "num");
  }
}

function renderLatency(text) {
  const now = parseLatency(text);
  if (previousBuckets && history.length > 0) {
    const point = history[history.length - 1];
    for (const [op] of latencyOps) {
      const l = latencyBetween(previousBuckets[op], now[op]);
      point[`${op}P99`] = l?.p99 ?? 0;
      $(`${op}-latency`).textContent = l ? `${ms(l.mean)} / ${ms(l.p99)}` : "–";
    }
    drawLatencyChart();
  }
  previousBuckets = now;
}

// The newest point at the right edge; the axis spans at least a minute and grows with the
// history up to its five minutes, so a page just opened shows its first polls as a line.
function chartX(canvas, i) {
  const span = Math.min(HistoryPoints, Math.max(30, history.length));
  return canvas.width * (i + span - history.length) / (span - 1);
}

function drawLatencyChart() {
  const canvas = $("latency-chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(0.0001, ...history.map(p => Math.max(...latencyOps.map(([op]) => p[`${op}P99`] ?? 0))));
  for (const [op, color] of latencyOps) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => {
      const x = chartX(canvas, i);
      const y = canvas.height - 4 - (canvas.height - 8) * (p[`${op}P99`] ?? 0) / max;
      i === 0 ? g.moveTo(x, y) : g.lineTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = "#5a6573";
  g.font = "12px system-ui";
  g.fillText(`p99 up to ${ms(max)} ms (red: writes, blue: reads, purple: flushes)`, 6, 14);
}

// Running jobs, and those that ended in the last ten minutes: a backup's bar, bytes and rate.
function renderJobs(jobs) {
  const recent = (jobs ?? []).filter(j => j.state === "running" || Date.now() - Date.parse(j.finished ?? j.started) < 600000);
  $("jobs-section").hidden = recent.length === 0;
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  const at = performance.now();
  for (const j of recent) {
    const row = body.insertRow();
    row.dataset.job = j.id;
    cell(row, `${j.kind} ${j.id.slice(0, 8)}`);
    cell(row, j.volume);
    stateCell(row, j.state);
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = j.progress;
    const p = row.insertCell();
    p.appendChild(bar);
    p.append(` ${Math.round(j.progress * 100)} %`);
    cell(row, j.bytesDone == null ? "–" : `${bytes(j.bytesDone)} of ${bytes(j.bytesTotal)}`, "num");
    const last = jobBytes.get(j.id);
    const rate = last && j.state === "running" && j.bytesDone != null ? (j.bytesDone - last.bytes) / ((at - last.at) / 1000) : null;
    cell(row, rate == null ? "–" : `${bytes(Math.max(0, rate))}/s`, "num");
    if (j.bytesDone != null) jobBytes.set(j.id, { at, bytes: j.bytesDone });
  }
}

function renderRates(metrics) {
  const now = { at: performance.now(), reads: metrics.ovis_volume_reads_total ?? 0, writes: metrics.ovis_volume_writes_total ?? 0, written: metrics.ovis_volume_write_bytes_total ?? 0 };
  $("connections").textContent = String(metrics.ovis_nbd_connections ?? 0);
  if (previous) {
    const seconds = (now.at - previous.at) / 1000;
    const point = {
      reads: Math.max(0, (now.reads - previous.reads) / seconds),
      writes: Math.max(0, (now.writes - previous.writes) / seconds),
      written: Math.max(0, (now.written - previous.written) / seconds),
    };
    history.push(point);
    if (history.length > HistoryPoints) history.shift();
    $("read-iops").textContent = Math.round(point.reads).toLocaleString("en");
    $("write-iops").textContent = Math.round(point.writes).toLocaleString("en");
    $("write-bw").textContent = (point.written / 1048576).toFixed(1);
    drawChart();
  }
  previous = now;
}

function drawChart() {
  const canvas = $("iops-chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(1, ...history.map(p => Math.max(p.reads, p.writes)));
  const series = [["writes", "#c0392b"], ["reads", "#2e6fd1"]];
  for (const [key, color] of series) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => {
      const x = chartX(canvas, i);
      const y = canvas.height - 4 - (canvas.height - 8) * p[key] / max;
      i === 0 ? g.moveTo(x, y) : g.lineTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = "#5a6573";
  g.font = "12px system-ui";
  g.fillText(`max ${Math.round(max).toLocaleString("en")} IOPS (red: writes, blue: reads)`, 6, 14);
}

function renderRecovery(r) {
  const done = r.objectsQueued === 0 ? 1 : r.objectsDone / r.objectsQueued;
  $("recovery-bar").value = done;
  $("recovery").textContent = `${r.paused ? "paused; " : ""}objects ${r.objectsDone} of ${r.objectsQueued} done (${Math.round(done * 100)} %), `
    + `${bytes(r.bytesMoved)} moved, ${bytes(r.bytesResynced)} resynced; scrub compared ${r.objectsScrubbed} objects, repaired ${r.copiesRepaired} copies`;
}

function renderHealth(node, cluster) {
  const space = node.space?.state ?? "ok";
  const down = cluster?.nodes?.some(m => m.state !== "up") ?? false;
  const state = down ? "down" : space;
  const badge = $("health");
  badge.dataset.state = state;
  badge.textContent = down ? "a node is down" : space === "ok" ? "healthy" : space;
  $("node-name").textContent = `${cluster ? `cluster ${cluster.name}, ` : ""}${node.listeners.admin[0] ?? ""}, version ${node.version.split("+")[0]}`;
}

async function poll() {
  try {
    const [node, volumes, cluster, recovery, jobs, metricsText] = await Promise.all([
      json("api/v1/node"), json("api/v1/volumes"), json("api/v1/cluster"), json("api/v1/recovery"), json("api/v1/jobs"),
      fetch("metrics", { cache: "no-store" }).then(r => r.text()),
    ]);
    renderHealth(node, cluster);
    renderNodes(node, cluster?.nodes);
    renderVolumes(volumes ?? []);
    renderRates(parseMetrics(metricsText));
    renderLatency(metricsText);
    renderJobs(jobs);
    $("recovery-section").hidden = !recovery;
    if (recovery) renderRecovery(recovery);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    document.body.dataset.polled = String(Number(document.body.dataset.polled ?? 0) + 1);
  } catch (e) {
    console.error(e);
    const badge = $("health");
    badge.dataset.state = "down";
    badge.textContent = "node unreachable";
  }
}

poll();
setInterval(poll, PollMs);
