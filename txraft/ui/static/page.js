// The live cluster page: polls /ui/state of the member that served it and
// redraws.  Rates come from successive polls (the member keeps no history).
"use strict";

const REFRESH_MS = 1000;
const HISTORY_S = 300;
const history = { applied: [], appends: [], reads: [] };
let last = null;

function text(id, value) { document.getElementById(id).textContent = value; }

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function ago(seconds) {
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function size(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
  if (bytes < 1024 * 1024 * 1024) return (bytes / 1024 / 1024).toFixed(1) + " MiB";
  return (bytes / 1024 / 1024 / 1024).toFixed(1) + " GiB";
}

function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "—" : String(value);
  if (cls) td.className = cls;
  return td;
}

function showBanner(message) {
  const banner = document.getElementById("banner");
  banner.hidden = !message;
  banner.textContent = message || "";
}

function record(series, time, value) {
  series.push([time, value]);
  while (series.length && series[0][0] < time - HISTORY_S) series.shift();
}

function draw(id, series) {
  const canvas = document.getElementById(id);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600, height = canvas.clientHeight || 120;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const top = Math.max(1, ...series.map(p => p[1]));
  g.fillStyle = "#5e6875"; g.font = "11px system-ui, sans-serif";
  g.fillText(top.toFixed(top < 10 ? 1 : 0) + "/s", 4, 12);
  const now = series.length ? series[series.length - 1][0] : 0;
  // The x axis spans what the page has seen, from one minute up to HISTORY_S.
  const span = series.length ? Math.min(HISTORY_S, Math.max(60, now - series[0][0])) : 60;
  g.fillText("last " + Math.round(span / 60) + " min", width - 70, height - 4);
  if (series.length < 2) return;
  g.strokeStyle = "#0b5cad"; g.lineWidth = 1.5; g.beginPath();
  series.forEach(([t, v], i) => {
    const x = width - (now - t) / span * width;
    const y = height - 16 - v / top * (height - 32);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function render(state) {
  text("self", state.id);
  text("updated", clock(state.time));
  text("leader", state.leader || "none");
  text("leader-since", state.leader_since ? "since " + clock(state.leader_since) + " (" +
       ago(state.time - state.leader_since) + ")" : "");
  text("term", state.term);
  text("commit", state.commit_index);
  text("applied", state.applied_index);
  text("snapshot", state.snapshot_index || "none");
  text("snapshot-size", state.snapshot_index && state.snapshot_bytes !== null ? size(state.snapshot_bytes) : "");
  text("reads", state.reads);
  showBanner(state.warning);

  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const m of state.members) {
    const row = body.insertRow();
    row.dataset.member = m.id;
    row.dataset.role = m.role;
    if (m.role === "leader") row.className = "leader";
    cell(row, m.id + (m.self ? " (this member)" : ""));
    cell(row, m.name || null);
    const role = cell(row, null);
    role.replaceChildren();
    const badge = document.createElement("span");
    badge.className = "role role-" + m.role;
    badge.textContent = m.role;
    role.appendChild(badge);
    cell(row, m.match_index, "num");
    cell(row, m.lag, "num");
    cell(row, m.last_contact === null ? null : ago(m.last_contact));
  }
  text("members-note", state.role === "leader" ? "" :
       "Match index, lag and reachability are known to the leader; open this page on " +
       (state.leader || "the leader") + " to see them.");

  if (last && state.time > last.time) {
    const dt = state.time - last.time;
    record(history.applied, state.time, Math.max(0, state.applied_index - last.applied_index) / dt);
    if (state.appends !== null && last.appends !== null)
      record(history.appends, state.time, Math.max(0, state.appends - last.appends) / dt);
    record(history.reads, state.time, Math.max(0, state.reads - last.reads) / dt);
  }
  last = state;
  draw("chart-applied", history.applied);
  draw("chart-appends", history.appends);
  draw("chart-reads", history.reads);

  const events = document.getElementById("events");
  events.replaceChildren();
  for (const e of state.events.slice().reverse()) {
    const li = document.createElement("li");
    const when = document.createElement("time");
    when.textContent = clock(e.time);
    li.appendChild(when);
    li.appendChild(document.createTextNode(e.text));
    events.appendChild(li);
  }
  if (!state.events.length) {
    const li = document.createElement("li");
    li.textContent = "none seen since this member started";
    events.appendChild(li);
  }
}

async function refresh() {
  try {
    const response = await fetch("/ui/state", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    showBanner("this member is not answering (" + error.message + "); the figures below are from " +
               (last ? clock(last.time) : "no answer yet"));
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
