// bootsvc's machine table and boot timelines, kept live by /api/events.
// Host names, diagnoses and step details come from the network (a DHCP
// client names itself): they are only ever set as textContent, never as
// markup, and the page's policy forbids any script but this file.
"use strict";
(() => {
  const rows = new Map(); // MAC -> the machine's row (GET /api/machines, then boot events)
  let selected = null; // host name or MAC whose timeline is open
  let timelineDue = null;
  const $ = (id) => document.getElementById(id);
  const COLUMNS = ["Host", "MAC", "IP", "State", "Last boot", "Took", "Diagnosis"];
  const BAD_STEPS = new Set(["dhcp-dropped", "boot-refused", "file-missing", "fetch-failed", "script-refused",
                             "login-failed", "io-error", "disk-failed"]);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function when(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    const today = d.toDateString() === new Date().toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  const took = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(1)} s`);

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function stateCell(state) {
    const span = el("span", state || "never booted", "state state-" + (state || "none"));
    return span;
  }

  const nameOf = (r) => r.hostname || r.mac;
  const isSelected = (r) => selected !== null && (selected === r.hostname || selected === r.mac);

  function rowOf(r) {
    const tr = el("tr");
    tr.tabIndex = 0;
    tr.dataset.mac = r.mac;
    if (isSelected(r)) tr.classList.add("selected");
    const cells = [
      [r.hostname || "–", "host"], [r.mac, "mac"], [r.address || "–", "ip"], [null, "st"],
      [when(r.last_boot), "last"], [took(r.duration), "took"], [r.diagnosis || "–", "diagnosis"],
    ];
    cells.forEach(([text, cls], i) => {
      const td = el("td", text, cls);
      td.setAttribute("data-label", COLUMNS[i]);
      if (cls === "st") td.appendChild(stateCell(r.state));
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => open(nameOf(r)));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") open(nameOf(r)); });
    return tr;
  }

  function render() {
    const list = [...rows.values()].sort((a, b) => {
      const ka = `${a.hostname || "~"} ${a.mac}`, kb = `${b.hostname || "~"} ${b.mac}`;
      return ka < kb ? -1 : ka > kb ? 1 : 0;
    });
    const frag = document.createDocumentFragment();
    list.forEach((r) => frag.appendChild(rowOf(r)));
    $("machines").tBodies[0].replaceChildren(frag);
    $("empty").hidden = list.length > 0;
  }

  async function loadMachines() {
    const res = await fetch("/api/machines", { cache: "no-store" });
    if (!res.ok) return;
    const list = await res.json();
    rows.clear();
    list.forEach((r) => rows.set(r.mac, r));
    render();
  }

  // a boot event: that machine's row takes the boot's summary
  function merge(s) {
    let r = rows.get(s.mac);
    if (!r) {
      r = { mac: s.mac, hostname: s.hostname, address: null };
      rows.set(s.mac, r);
    }
    Object.assign(r, {
      state: s.state, diagnosis: s.diagnosis, duration: s.duration, last_boot: s.started, updated: s.updated,
      read_bytes: s.read_bytes, written_bytes: s.written_bytes, boot: s.id, last_step: s.last_step,
    });
    if (!r.hostname && s.hostname) r.hostname = s.hostname;
    render();
    if (isSelected(r)) scheduleTimeline();
  }

  function scheduleTimeline() {
    if (timelineDue === null) timelineDue = setTimeout(() => { timelineDue = null; loadTimeline(); }, 250);
  }

  async function loadTimeline() {
    if (selected === null) return;
    const who = selected;
    const res = await fetch(`/api/machines/${encodeURIComponent(who)}/boots?limit=5`, { cache: "no-store" });
    if (who !== selected) return;
    renderTimeline(who, res.ok ? await res.json() : null);
  }

  function stepItem(s) {
    const li = el("li");
    li.appendChild(el("span", `+${Number(s.at).toFixed(2)} s`, "at"));
    li.appendChild(el("span", s.step, BAD_STEPS.has(s.step) ? "step bad" : "step"));
    const detail = Object.entries(s.detail || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    li.appendChild(el("span", detail, "detail"));
    return li;
  }

  function bootBlock(b) {
    const div = el("div", null, "boot");
    div.dataset.boot = String(b.id);
    const h3 = el("h3", `boot #${b.id}, ${when(b.started)}: `);
    h3.appendChild(stateCell(b.state));
    if (b.duration !== null && b.duration !== undefined) h3.appendChild(document.createTextNode(` in ${took(b.duration)}`));
    div.appendChild(h3);
    div.appendChild(el("p", `diagnosis: ${b.diagnosis}`, "diagnosis"));
    div.appendChild(el("p", `read ${bytes(b.read_bytes)}, written ${bytes(b.written_bytes)}`, "note"));
    const ol = el("ol", null, "steps");
    (b.steps || []).forEach((s) => ol.appendChild(stepItem(s)));
    div.appendChild(ol);
    if (b.dropped_steps) div.appendChild(el("p", `… and ${b.dropped_steps} more steps not kept`, "note"));
    return div;
  }

  function renderTimeline(who, boots) {
    $("timeline").hidden = false;
    const row = [...rows.values()].find((r) => r.hostname === who || r.mac === who);
    $("tl-title").textContent = row && row.hostname ? `${row.hostname} (${row.mac})` : who;
    const box = $("tl-boots");
    if (boots === null) { box.replaceChildren(el("p", "no such machine", "note")); return; }
    if (!boots.length) { box.replaceChildren(el("p", "no boot recorded yet", "note")); return; }
    const frag = document.createDocumentFragment();
    frag.appendChild(bootBlock(boots[0]));
    if (boots.length > 1) {
      const older = el("details");
      older.appendChild(el("summary", `${boots.length - 1} earlier boot(s)`));
      boots.slice(1).forEach((b) => older.appendChild(bootBlock(b)));
      frag.appendChild(older);
    }
    box.replaceChildren(frag);
  }

  function open(who, push = true) {
    selected = who;
    if (push) history.pushState(null, "", `/machines/${encodeURIComponent(who)}`);
    render();
    loadTimeline();
  }

  function close(push = true) {
    selected = null;
    if (push) history.pushState(null, "", "/");
    $("timeline").hidden = true;
    render();
  }

  function fromAddress() {
    const p = location.pathname;
    if (p.startsWith("/machines/") && p.length > "/machines/".length) open(decodeURIComponent(p.slice(10)), false);
    else close(false);
  }

  function connect() {
    const live = $("live");
    const es = new EventSource("/api/events");
    // on every (re)connect the table is fetched again: events missed while away are in it
    es.addEventListener("open", () => {
      live.textContent = "live";
      live.classList.add("on");
      loadMachines();
      if (selected !== null) loadTimeline();
    });
    es.addEventListener("boot", (e) => {
      let s;
      try { s = JSON.parse(e.data); } catch { return; }
      if (s && typeof s.mac === "string") merge(s);
    });
    es.addEventListener("error", () => {
      live.textContent = "reconnecting…";
      live.classList.remove("on");
      if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 5000); }
    });
  }

  function setupBig() {
    const box = $("big");
    const want = new URLSearchParams(location.search).has("big") || localStorage.getItem("bootsvc.big") === "1";
    box.checked = want;
    document.documentElement.classList.toggle("big", want);
    box.addEventListener("change", () => {
      document.documentElement.classList.toggle("big", box.checked);
      localStorage.setItem("bootsvc.big", box.checked ? "1" : "0");
    });
  }

  $("tl-close").addEventListener("click", () => close());
  window.addEventListener("popstate", fromAddress);
  setupBig();
  fromAddress();
  loadMachines();
  connect();
})();
