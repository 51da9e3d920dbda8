// The ops page: renders GET /ops/state every two seconds (text only, never
// HTML from data) and sends the buttons' actions with the operator's name and token.
(function () {
  const $ = (id) => document.getElementById(id);
  const name = $("operator-name"), token = $("operator-token");
  name.value = sessionStorage.getItem("ops-name") || "";
  token.value = sessionStorage.getItem("ops-token") || "";
  name.addEventListener("change", () => sessionStorage.setItem("ops-name", name.value));
  token.addEventListener("change", () => sessionStorage.setItem("ops-token", token.value));

  function say(text, bad) { const m = $("ops-message"); m.textContent = text; m.className = bad ? "errors" : "muted"; }
  function row(body, cells) {
    const tr = body.insertRow();
    for (const c of cells) {
      const td = tr.insertCell();
      if (c instanceof Node) td.appendChild(c); else td.textContent = c ?? "—";
    }
    return tr;
  }
  function button(label, id, path) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.id = id;
    b.addEventListener("click", () => act(path, label));
    return b;
  }
  async function act(path, label) {
    if (!name.value.trim()) { say("Say who you are first (Your name).", true); name.focus(); return; }
    sessionStorage.setItem("ops-name", name.value); sessionStorage.setItem("ops-token", token.value);
    const headers = { "X-Requested-By": name.value.trim() };
    if (token.value) headers["Authorization"] = "Bearer " + token.value;
    try {
      const res = await fetch(path, { method: "POST", headers });
      const body = await res.json().catch(() => ({}));
      if (res.ok) say(label + ": done"); else say(label + ": " + res.status + " " + (body.error || ""), true);
    } catch (e) { say(label + ": " + e, true); }
    refresh(); refreshGroups();
  }

  // Failure groups, dead-letter replays and the purge (GET /ops/groups, its own refresh).
  function replayCell(d) {
    if (d.replayed_at) return "replayed at " + d.replayed_at;
    if (d.order_id === null) return "— (names no order)";
    return button("Replay", "replay-" + d.dead_letter_id, "/ops/replay?dead_letter_id=" + encodeURIComponent(d.dead_letter_id));
  }
  function groupButton(label, cls, path) {
    const b = button(label, "", path);
    b.removeAttribute("id"); b.className = cls;
    return b;
  }
  async function refreshGroups() {
    let s;
    try {
      const res = await fetch("/ops/groups", { cache: "no-store" });
      if (!res.ok) return;
      s = await res.json();
    } catch (e) { return; }
    const groups = $("groups"); groups.replaceChildren();
    for (const g of s.groups) {
      const key = "?fingerprint=" + encodeURIComponent(g.fingerprint);
      const actions = document.createElement("span");
      if (g.failed_orders > 0) actions.appendChild(groupButton("Retry " + g.failed_orders + " failed", "group-retry", "/ops/groups/retry" + key));
      if (g.dead_letters > 0) actions.appendChild(groupButton("Replay " + g.dead_letters + " dead letters", "group-replay", "/ops/groups/replay" + key));
      const tr = row(groups, [g.example + " × " + (g.failed_orders + g.dead_letters), String(g.failed_orders), String(g.dead_letters), g.newest_at, actions]);
      tr.dataset.fingerprint = g.fingerprint;
    }
    groups.dataset.refreshed = Date.now();
  }
  $("purge").addEventListener("click", () => act("/ops/dead-letters/purge?older_than=" + encodeURIComponent($("purge-age").value.trim()), "Purge"));
  refreshGroups();
  setInterval(refreshGroups, 2000);

  async function refresh() {
    let s;
    const outage = $("database-error");
    try {
      const res = await fetch("/ops/state", { cache: "no-store" });
      s = await res.json();
      if (!res.ok) throw new Error(s.error || res.statusText);
    } catch (e) {
      outage.textContent = "The page could not be refreshed: " + e.message + ". What it shows may be old.";
      outage.hidden = false;
      return;
    }
    // While the database is down the answer names it, and carries only what
    // needs no database: the services and the relays.
    outage.hidden = !s.database_error;
    outage.textContent = s.database_error ? "The database cannot be reached (" + s.database_error +
      "): the figures below the services and relays are as last read." : "";
    const services = $("services"); services.replaceChildren();
    for (const v of s.services) {
      const tr = row(services, [v.name, v.url, v.ready ? "ready" : "NOT READY", v.words]);
      tr.cells[2].className = v.ready ? "ready-yes" : "ready-no"; tr.cells[3].className = "detail";
      tr.dataset.service = v.name;
    }
    renderRelaysAndBroker(s);
    if (!s.database_error) renderStored(s);
    document.body.dataset.refreshed = Date.now();
  }

  function renderRelaysAndBroker(s) {
    // The broker's own figures, as the first relay that reached it last saw them.
    const seen = s.relays.map(r => (r.status || {}).broker).filter(b => b);
    const broker = seen.find(b => b.age_seconds !== null && b.age_seconds !== undefined) || seen[0];
    const brokerRows = $("broker"); brokerRows.replaceChildren();
    if (!broker) {
      $("broker-note").textContent = "No relay answered: the broker's figures are unknown.";
    } else {
      const age = broker.age_seconds === null ? "" : " (" + broker.age_seconds + " s ago)";
      $("broker-note").textContent = broker.note === "ok" ? "As the broker counts them" + age + "." : broker.note + age;
      for (const q of broker.queues) {
        row(brokerRows, [q.queue, String(q.depth), String(q.consumers), String(q.enqueued), String(q.dequeued)]).dataset.queue = q.queue;
      }
      for (const q of broker.absent || []) row(brokerRows, [q, "not created yet", "", "", ""]).dataset.queue = q;
    }
    const relays = $("relays"); relays.replaceChildren();
    for (const r of s.relays) {
      const st = r.status || {};
      const actions = document.createElement("span");
      for (const a of ["pause", "resume", "drain"]) {
        actions.appendChild(button(a[0].toUpperCase() + a.slice(1), a + "-" + r.index, "/ops/relay?relay=" + r.index + "&action=" + a));
      }
      row(relays, [r.url, st.relay_id, st.paused === undefined ? "unreachable" : String(st.paused), actions]).dataset.relay = r.index;
    }
  }

  function renderStored(s) {
    $("outbox-pending").textContent = s.outbox.pending;
    $("outbox-oldest").textContent = s.outbox.oldest_pending_seconds.toFixed(1) + " s";
    $("outbox-parked").textContent = s.outbox.parked;
    const parked = $("parked"); parked.replaceChildren();
    for (const p of s.parked) {
      row(parked, [p.outbox_id, String(p.order_id), String(p.attempts), p.last_error, p.dead_at,
        button("Requeue", "requeue-" + p.outbox_id, "/ops/requeue?outbox_id=" + encodeURIComponent(p.outbox_id))]);
    }
    const letters = $("dead-letters"); letters.replaceChildren();
    for (const d of s.dead_letters) {
      let order = "—";
      if (d.order_id !== null) { order = document.createElement("a"); order.href = "/orders/" + d.order_id; order.textContent = d.order_id; }
      const reached = d.sent_at ? d.sent_at : d.undeliverable_at ? "set aside at " + d.undeliverable_at + " (the broker refused it)" : "waiting";
      row(letters, [d.created_at, order, d.reason, reached, replayCell(d)]).dataset.deadLetter = d.dead_letter_id;
    }
    const failed = $("failed"); failed.replaceChildren();
    for (const o of s.failed) {
      const link = document.createElement("a"); link.href = "/orders/" + o.order_id; link.textContent = o.order_id;
      row(failed, [link, o.customer_name, o.product_id, o.failure_reason,
        button("Retry", "retry-" + o.order_id, "/ops/retry?order_id=" + o.order_id)]);
    }
    $("pending-without-outbox").textContent = s.reconciliation.pending_without_outbox;
    $("published-not-processed").textContent = s.reconciliation.published_not_processed;
    $("stale-after").textContent = s.stale_after_seconds;
    const audit = $("audit"); audit.replaceChildren();
    for (const a of s.audit) {
      row(audit, [a.requested_at, a.action, a.requested_by, a.order_id ? String(a.order_id) : "—", a.order_id ? a.outbox_id : "—"]);
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
