// The pitcrew dashboard. Every page follows one event stream of the coordinator; the DOM is
// built with textContent only (hostnames and messages come from agents: never innerHTML).
"use strict";

let me = null;
let source = null;

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function setLive(text, on) {
  const live = document.getElementById("live");
  live.textContent = text;
  live.className = on ? "live on" : "live";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function stateCell(state) {
  return el("span", { class: "state state-" + state }, state);
}

function bar(done, total) {
  const pct = total > 0 ? Math.round((100 * done) / total) : 0;
  const fill = el("span");
  fill.style.width = pct + "%";
  return el("span", { class: "bar", title: `${done} of ${total}` }, fill);
}

/** Follows one event stream; `handlers` maps event names to functions of their JSON. */
function follow(url, handlers) {
  if (source) source.close();
  source = new EventSource(url);
  source.onopen = () => setLive("live", true);
  source.onerror = () => setLive("reconnecting…", false);
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handler(JSON.parse(e.data)));
  }
  source.addEventListener("signed_out", (e) => {
    source.close();
    setLive("signed out", false);
    show(el("div", { class: "notice", id: "signed-out" }, JSON.parse(e.data).error));
  });
  source.addEventListener("failed", (e) => {
    source.close();
    setLive("stopped", false);
    show(el("div", { class: "notice" }, JSON.parse(e.data).error));
  });
}

/** A state-changing request: POST with the session's anti-CSRF token. */
async function act(path, what) {
  const status = document.getElementById("action-status");
  if (status) status.textContent = what + "…";
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Pitcrew-Csrf": me.csrf },
  });
  const body = await response.json().catch(() => ({}));
  if (status) {
    status.textContent = response.ok ? what + ": done" : what + ": " + (body.error || response.status);
    status.className = response.ok ? "muted" : "error";
  }
}

// ---- fleet ----

function fleetPage() {
  const params = new URLSearchParams(location.search);
  const role = el("select", { name: "role" },
    el("option", { value: "" }, "any role"), el("option", { value: "worker" }, "worker"),
    el("option", { value: "manager" }, "manager"));
  const state = el("select", { name: "state" },
    ...["", "running", "entering", "maintenance", "leaving", "failed"].map((s) =>
      el("option", { value: s }, s || "any state")));
  const connected = el("select", { name: "connected" },
    el("option", { value: "" }, "connected or not"), el("option", { value: "yes" }, "connected"),
    el("option", { value: "no" }, "disconnected"));
  const label = el("input", { name: "label", placeholder: "label, e.g. cluster=c1", size: 24 });
  role.value = params.get("role") || "";
  state.value = params.get("state") || "";
  connected.value = params.get("connected") || "";
  label.value = params.get("label") || "";
  const campaigns = el("tbody", { id: "campaigns" });
  const holders = el("tbody", { id: "holders" });
  const hosts = el("tbody", { id: "hosts" });
  const matched = el("span", { class: "muted", id: "matched" });
  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, input] of Object.entries({ role, state, connected, label })) {
      if (input.value) q.set(k, input.value);
    }
    history.replaceState(null, "", q.toString() ? "/?" + q : "/");
    follow("/api/fleet/stream?" + q, { fleet: renderFleet });
  };
  for (const input of [role, state, connected]) input.addEventListener("change", apply);
  label.addEventListener("change", apply);
  show(
    el("h2", {}, "Campaigns"),
    el("table", {}, el("thead", {}, el("tr", {}, ["campaign", "name", "state", "hosts", "blocker", "started by", "created"].map((h) => el("th", {}, h)))), campaigns),
    el("h2", {}, "Slot holders"),
    el("table", {}, el("thead", {}, el("tr", {}, ["host", "role", "cluster", "held by"].map((h) => el("th", {}, h)))), holders),
    el("h2", {}, "Fleet ", matched),
    el("div", { class: "filters" }, role, state, connected, label),
    el("table", {}, el("thead", {}, el("tr", {}, ["host", "role", "state", "held by", "connected", "labels"].map((h) => el("th", {}, h)))), hosts),
  );
  function renderFleet(data) {
    campaigns.replaceChildren(...(data.campaigns.length ? data.campaigns.map((c) => {
      const done = (c.counts.done || 0) + (c.counts.skipped || 0) + (c.counts.released || 0);
      return el("tr", { "data-campaign": c.id },
        el("td", {}, el("a", { href: "/campaigns/" + encodeURIComponent(c.id) }, c.id)),
        el("td", {}, c.name), el("td", {}, stateCell(c.state)),
        el("td", {}, bar(done, c.hosts_total), ` ${done}/${c.hosts_total}`),
        el("td", { class: "blocker" }, c.blocker || ""), el("td", {}, c.created_by),
        el("td", {}, when(c.created_at_ms)));
    }) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no campaigns"))]));
    holders.replaceChildren(...(data.holders.length ? data.holders.map((h) => el("tr", {},
      el("td", {}, el("a", { href: "/hosts/" + encodeURIComponent(h.host_id) }, h.hostname)),
      el("td", {}, h.role), el("td", {}, h.cluster || "(default)"), el("td", {}, h.by)))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "every host is in service"))]));
    matched.textContent = data.matched > data.hosts.length
      ? `(${data.hosts.length} of ${data.matched} shown: narrow the filters)` : `(${data.matched})`;
    hosts.replaceChildren(...data.hosts.map((h) => el("tr", { "data-host": h.host_id },
      el("td", {}, el("a", { href: "/hosts/" + encodeURIComponent(h.host_id) }, h.hostname)),
      el("td", {}, h.role), el("td", {}, stateCell(h.state)), el("td", {}, h.holder),
      el("td", {}, h.connected ? "yes" : "no"),
      el("td", {}, Object.entries(h.labels).map(([k, v]) => el("span", { class: "label" }, `${k}=${v}`))))));
  }
  apply();
}

// ---- a campaign ----

function campaignPage(id) {
  const title = el("h1", {}, "Campaign ", id);
  const state = el("span", { id: "campaign-state", class: "state" });
  const blocker = el("span", { id: "campaign-blocker", class: "blocker" });
  const progress = el("span", { id: "progress" });
  const progressBar = el("span", { id: "progress-bar" });
  const failures = el("span", { id: "failures" });
  const controls = el("span", { id: "controls" });
  const status = el("span", { id: "action-status", class: "muted" });
  const hosts = el("tbody", { id: "campaign-hosts" });
  const more = el("p", { class: "muted" });
  const base = "/api/campaigns/" + encodeURIComponent(id);
  show(title,
    el("div", { class: "summary" }, el("span", {}, "state: ", state), el("span", {}, progressBar, " ", progress),
      failures, blocker),
    el("div", { class: "summary" }, controls, status),
    el("table", {}, el("thead", {}, el("tr", {}, ["host", "role", "state", "current step", "progress", "blocker", "last error", ""].map((h) => el("th", {}, h)))), hosts),
    more);
  let shown = "";
  function render(c) {
    title.replaceChildren("Campaign ", c.name, " ", el("span", { class: "muted" }, c.id));
    state.textContent = c.state;
    state.className = "state state-" + c.state;
    progress.textContent = `${c.steps_done} of ${c.steps_total} steps done`;
    progressBar.replaceChildren(bar(c.steps_done, c.steps_total));
    failures.textContent = `failures: ${c.failures} (allowed ${c.max_failures})`;
    blocker.textContent = c.blocker ? "waiting: " + c.blocker : "";
    const wanted = me.may_act && !c.final ? (c.state === "paused" ? "resume" : "pause") : "";
    if (wanted !== shown) {
      shown = wanted;
      controls.replaceChildren(...(wanted ? [el("button", {
        id: wanted, onclick: () => act(`${base}/${wanted}`, wanted),
      }, wanted === "pause" ? "Pause" : "Resume")] : []));
    }
    hosts.replaceChildren(...c.hosts.map((h) => {
      const buttons = [];
      if (me.may_act && !c.final) {
        const hostBase = `${base}/hosts/${encodeURIComponent(h.host_id)}`;
        const controls = h.state === "failed" ? ["retry", "skip", "release"] : h.state === "pending" ? ["skip"] : [];
        for (const control of controls) {
          buttons.push(el("button", { "data-control": control, onclick: () => act(`${hostBase}/${control}`, `${control} ${h.hostname}`) }, control));
        }
      }
      return el("tr", { "data-host": h.host_id },
        el("td", {}, el("a", { href: "/hosts/" + encodeURIComponent(h.host_id) }, h.hostname)),
        el("td", {}, h.role), el("td", {}, stateCell(h.state)), el("td", {}, h.current_step),
        el("td", {}, bar(h.steps_done, h.steps_total), ` ${h.steps_done}/${h.steps_total}`),
        el("td", { class: "blocker" }, h.blocker || ""), el("td", { class: "error" }, h.last_error || ""),
        el("td", {}, buttons));
    }));
    more.textContent = c.hosts_total > c.hosts.length ? `${c.hosts_total - c.hosts.length} more hosts not shown` : "";
    if (c.final) {
      source.close();
      setLive("finished", false);
    }
  }
  follow(base + "/stream", { campaign: render });
}

// ---- a host ----

function hostPage(id) {
  const title = el("h1", {}, "Host ", id);
  const facts = el("div", { class: "summary", id: "host-summary" });
  const log = el("tbody", { id: "host-events" });
  show(title, facts,
    el("h2", {}, "Event log"),
    el("table", {}, el("thead", {}, el("tr", {}, ["time", "kind", "campaign", "step", "result", "message", "by"].map((h) => el("th", {}, h)))), log));
  function row(e) {
    return el("tr", { "data-event": e.id },
      el("td", {}, when(e.at_ms)), el("td", {}, e.kind),
      el("td", {}, e.campaign_id ? el("a", { href: "/campaigns/" + encodeURIComponent(e.campaign_id) }, e.campaign_id) : ""),
      el("td", {}, e.step), el("td", {}, e.result), el("td", {}, e.message), el("td", {}, e.actor));
  }
  follow("/api/hosts/" + encodeURIComponent(id) + "/stream", {
    host: (data) => {
      const h = data.host;
      if (h) {
        title.replaceChildren("Host ", h.hostname, " ", el("span", { class: "muted" }, h.host_id));
        facts.replaceChildren(el("span", {}, "role: ", h.role), el("span", {}, "state: ", stateCell(h.state)),
          el("span", {}, "held by: ", h.holder || "nobody"), el("span", {}, "connected: ", h.connected ? "yes" : "no"),
          el("span", {}, Object.entries(h.labels).map(([k, v]) => el("span", { class: "label" }, `${k}=${v}`))));
      } else {
        facts.replaceChildren(el("span", { class: "muted" }, "not in the fleet (removed or unknown): its events only"));
      }
      log.replaceChildren(...data.events.slice().reverse().map(row));
    },
    event: (e) => log.prepend(row(e)),
    reload: () => hostPage(id),
  });
}

// ---- compliance ----

function compliancePage() {
  const params = new URLSearchParams(location.search);
  const role = el("select", { name: "role" },
    el("option", { value: "" }, "any role"), el("option", { value: "worker" }, "worker"),
    el("option", { value: "manager" }, "manager"));
  const label = el("input", { name: "label", placeholder: "label, e.g. cluster=c1", size: 24 });
  role.value = params.get("role") || "";
  label.value = params.get("label") || "";
  const rows = el("tbody", { id: "compliance" });
  const more = el("p", { class: "muted", id: "compliance-more" });
  const apply = () => {
    const q = new URLSearchParams();
    if (role.value) q.set("role", role.value);
    if (label.value) q.set("label", label.value);
    history.replaceState(null, "", q.toString() ? "/compliance?" + q : "/compliance");
    follow("/api/compliance/stream?" + q, { compliance: render });
  };
  role.addEventListener("change", apply);
  label.addEventListener("change", apply);
  show(
    el("h1", {}, "Compliance"),
    el("p", { class: "muted" }, "Per host: what its agent reports of itself and when each campaign last succeeded on it. ",
      "For a spreadsheet: pitcrew report compliance -o csv"),
    el("div", { class: "filters" }, role, label),
    el("table", {}, el("thead", {}, el("tr", {}, ["host", "role", "agent", "os", "reboot", "pending updates", "last seen", "last successes"].map((h) => el("th", {}, h)))), rows),
    more,
  );
  function render(data) {
    rows.replaceChildren(...(data.hosts.length ? data.hosts.map((h) => el("tr", { "data-host": h.host_id },
      el("td", {}, el("a", { href: "/hosts/" + encodeURIComponent(h.host_id) }, h.hostname)),
      el("td", {}, h.role), el("td", { class: "agent" }, h.agent_version), el("td", {}, h.os),
      el("td", { class: h.reboot_required ? "reboot error" : "reboot" }, h.reboot_required ? "required" : "-"),
      el("td", { class: "updates" }, h.pending_updates === null || h.pending_updates === undefined ? "unknown" : h.pending_updates),
      el("td", {}, h.connected ? "connected" : when(h.last_seen_ms)),
      el("td", { class: "successes" }, h.last_successes.length ? h.last_successes.map((s) => el("div", { "data-campaign": s.campaign },
        s.campaign, " ", el("a", { href: "/campaigns/" + encodeURIComponent(s.run_id) }, when(s.finished_at_ms))))
        : el("span", { class: "muted" }, "never")))) : [el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no hosts"))]));
    more.textContent = data.more ? "More hosts matched than are shown: narrow the filters, or use pitcrew report compliance." : "";
  }
  apply();
}

// ---- start ----

async function start() {
  const response = await fetch("/api/me", { credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    setLive("signed out", false);
    show(el("div", { class: "notice", id: "signed-out" }, body.error || "not signed in"));
    return;
  }
  me = body;
  const signOut = el("button", { id: "sign-out", onclick: async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-Pitcrew-Csrf": me.csrf } });
    location.reload();
  } }, "Sign out");
  document.getElementById("who").replaceChildren(`${me.name} (${me.role}) `, signOut);
  const path = location.pathname;
  let m;
  if ((m = path.match(/^\/campaigns\/([^/]+)$/))) campaignPage(decodeURIComponent(m[1]));
  else if ((m = path.match(/^\/hosts\/([^/]+)$/))) hostPage(decodeURIComponent(m[1]));
  else if (path === "/compliance") compliancePage();
  else fleetPage();
}

start();
