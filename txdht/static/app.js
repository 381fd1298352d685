// txdht dashboard: polls the node's JSON API and draws the id space as a clock face.
// Plain JavaScript, no libraries. Everything from the node is put in the page as text
// (textContent, attributes), never as HTML: names and addresses come from other peers.
"use strict";

(function () {
  const POLL_MS = 1500;
  const TIMEOUT_MS = 4000;
  const SVG = "http://www.w3.org/2000/svg";
  const RING = 400; // contacts and this node
  const ITEM_RING = 330; // items held here
  const OLD_PATHS = 4; // earlier lookups drawn faintly besides the selected one
  const DOT_RADIUS = 10; // a contact's dot
  const MAX_LISTED_HERE = 4; // contacts listed when dots overlap (the hover box has 6 lines)
  const OUTCOME = {
    answered: "answered",
    failed: "failed",
    sent: "no answer yet when the lookup ended",
  };

  const $ = (id) => document.getElementById(id);
  const state = { previous: null, selected: null, lookups: [], selfId: null, timer: null };

  // -- helpers ---------------------------------------------------------------------------

  function fraction(hex) {
    // The top 48 bits of an id as a fraction of the full turn (exact in a double).
    return parseInt(hex.slice(0, 12), 16) / 2 ** 48;
  }

  function point(hex, radius) {
    const angle = fraction(hex) * 2 * Math.PI;
    return [radius * Math.sin(angle), -radius * Math.cos(angle)];
  }

  function svg(tag, attributes, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) {
      node.setAttribute(name, String(value));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function titled(node, text) {
    svg("title", {}, node).textContent = text;
    node.dataset.tip = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function short(hex) {
    return hex.slice(0, 12) + "…";
  }

  function ago(seconds) {
    if (seconds < 1) return "just now";
    if (seconds < 60) return Math.round(seconds) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }

  function span(seconds) {
    if (seconds < 60) return seconds.toFixed(0) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.floor(seconds % 60) + " s";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h " + (minutes % 60) + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function duration(seconds) {
    return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
  }

  function bucketColour(bucket) {
    const hue = ((511 - bucket) * 137.508 + 170) % 360;
    return "hsl(" + hue.toFixed(0) + ", 70%, 62%)";
  }

  function fade(lastSeen) {
    return (1 - 0.7 * Math.min(1, lastSeen / 600)).toFixed(2);
  }

  async function request(path, options) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      return await fetch(path, Object.assign({ cache: "no-store", signal: controller.signal }, options));
    } finally {
      clearTimeout(timer);
    }
  }

  async function json(path) {
    const response = await request(path);
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  // One sample line of the Prometheus text format: a name, labels in any order, a number
  // (the client library writes counts as floats: 3.0, 1.2e+06).
  const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function samples(text) {
    const found = [];
    for (const line of text.split("\n")) {
      const match = SAMPLE.exec(line);
      if (!match) continue; // comments (# HELP, # TYPE) and blank lines
      const labels = {};
      for (const [, name, value] of (match[2] || "").matchAll(LABEL)) labels[name] = value;
      found.push({ name: match[1], labels: labels, value: Number(match[3]) });
    }
    return found;
  }

  async function counters() {
    // RPCs sent, received and failed (sent, ended other than ok or cancelled) and the lookups,
    // added up from the node's Prometheus metrics.
    const response = await request("metrics");
    if (!response.ok) throw new Error("metrics answered " + response.status);
    const counts = { sent: 0, received: 0, failed: 0, lookups: 0, lookupSeconds: 0 };
    for (const { name, labels, value } of samples(await response.text())) {
      if (name === "txdht_rpcs_total" && (labels.direction === "sent" || labels.direction === "received")) {
        counts[labels.direction] += value;
        if (labels.direction === "sent" && labels.outcome !== "ok" && labels.outcome !== "cancelled") {
          counts.failed += value;
        }
      }
      if (name === "txdht_lookup_duration_seconds_count") counts.lookups = value;
      if (name === "txdht_lookup_duration_seconds_sum") counts.lookupSeconds = value;
    }
    return counts;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.message + " (" + body.error + ", " + response.status + ")";
    } catch (e) {
      return "the node answered " + response.status;
    }
  }

  // -- the face --------------------------------------------------------------------------

  function drawDial() {
    const dial = $("dial");
    svg("circle", { class: "dial-ring", r: RING }, dial);
    svg("circle", { class: "dial-items", r: ITEM_RING }, dial);
    for (let i = 0; i < 64; i++) {
      const angle = (i / 64) * 2 * Math.PI;
      const major = i % 4 === 0;
      const inner = major ? RING + 10 : RING + 14;
      const outer = RING + 24;
      const [s, c] = [Math.sin(angle), -Math.cos(angle)];
      svg("line", {
        class: major ? "tick" : "tick minor",
        x1: inner * s, y1: inner * c, x2: outer * s, y2: outer * c,
      }, dial);
      if (major) {
        const text = svg("text", { class: "digit", x: (RING + 50) * s, y: (RING + 50) * c }, dial);
        text.textContent = (i / 4).toString(16);
      }
    }
  }

  function drawSelf(status) {
    const group = $("self");
    clear(group);
    const [x, y] = point(status.id, RING);
    svg("circle", { class: "self-halo", cx: x, cy: y, r: 24 }, group);
    titled(svg("circle", { class: "self-dot", cx: x, cy: y, r: 14 }, group),
      "this node\n" + status.id + "\nport " + status.port);
    const [lx, ly] = point(status.id, RING - 48);
    svg("text", { class: "self-label", x: lx, y: ly }, group).textContent = "you";
    const centre = $("centre");
    clear(centre);
    svg("text", { class: "centre-big", y: -16 }, centre).textContent =
      status.peers + (status.peers === 1 ? " peer" : " peers");
    svg("text", { class: "centre-small", y: 22 }, centre).textContent =
      status.items + (status.items === 1 ? " item held" : " items held");
    svg("text", { class: "centre-id", y: 60 }, centre).textContent = short(status.id);
  }

  function drawContacts(peers) {
    const group = $("contacts");
    clear(group);
    const buckets = new Map();
    for (const peer of peers) {
      const [x, y] = point(peer.id, RING);
      const dot = svg("circle", {
        class: peer.failures ? "contact failing" : "contact",
        cx: x, cy: y, r: DOT_RADIUS,
        fill: bucketColour(peer.bucket),
        opacity: fade(peer.last_seen),
        "data-id": peer.id,
      }, group);
      const seen = "bucket " + peer.bucket + ", last seen " + ago(peer.last_seen) +
        (peer.failures ? ", " + peer.failures + " failed requests" : "");
      titled(dot, "contact " + peer.id + "\n" + peer.host + ":" + peer.port + "\n" + seen);
      dot.dataset.line = peer.id.slice(0, 16) + "… " + peer.host + ":" + peer.port + ", " + seen;
      buckets.set(peer.bucket, (buckets.get(peer.bucket) || 0) + 1);
    }
    const legend = $("legend");
    clear(legend);
    for (const bucket of [...buckets.keys()].sort((a, b) => b - a)) {
      const entry = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = bucketColour(bucket);
      entry.appendChild(swatch);
      entry.appendChild(document.createTextNode("bucket " + bucket + " × " + buckets.get(bucket)));
      legend.appendChild(entry);
    }
  }

  function drawItems(items) {
    const group = $("items");
    clear(group);
    for (const item of items) {
      const [x, y] = point(item.key, ITEM_RING);
      const square = svg("rect", {
        class: "item", x: x - 7, y: y - 7, width: 14, height: 14,
        transform: "rotate(45 " + x + " " + y + ")", "data-key": item.key,
      }, group);
      const what = item.kind === "named" ? "named item “" + item.name + "” v" + item.seq : "blob";
      titled(square, what + "\n" + item.key + "\n" + item.size + " bytes, expires in " +
        span(Math.max(0, item.expires_in)));
    }
  }

  function drawPath(lookup, group, highlighted) {
    const layer = svg("g", {
      class: highlighted ? "path" : "path old",
      "data-lookup": lookup.number, "data-kind": lookup.kind,
    }, group);
    const outcome = new Map();
    for (const step of lookup.trace) outcome.set(step.id, step.event);
    let [px, py] = point(state.selfId, RING);
    const asked = lookup.trace.filter((step) => step.event === "sent");
    asked.forEach((step, index) => {
      const [x, y] = point(step.id, RING);
      const event = outcome.get(step.id);
      svg("line", { class: "hop " + event, x1: px, y1: py, x2: x, y2: y }, layer);
      if (highlighted) {
        const ring = svg("circle", { class: "asked " + event, cx: x, cy: y, r: 15 }, layer);
        titled(ring, "query " + (index + 1) + " of lookup #" + lookup.number + ": " + OUTCOME[event] +
          "\n" + step.id + "\n" + step.host + ":" + step.port);
        const [nx, ny] = point(step.id, RING - 34);
        svg("text", { class: "hop-number " + event, x: nx, y: ny }, layer).textContent =
          String(index + 1);
      }
      [px, py] = [x, y];
    });
    const [tx, ty] = point(lookup.target, RING + 30);
    const angle = fraction(lookup.target) * 360;
    const marker = svg("path", {
      class: "target " + lookup.kind,
      d: "M 0 12 L -10 -8 L 10 -8 Z",
      transform: "translate(" + tx + " " + ty + ") rotate(" + angle + ")",
      opacity: highlighted ? 1 : 0.35,
    }, layer);
    titled(marker, "target of lookup #" + lookup.number + " (" + lookup.kind + ")\n" + lookup.target);
  }

  function drawPaths() {
    const group = $("paths");
    clear(group);
    if (!state.selfId || !state.lookups.length) return;
    const chosen = state.lookups.find((l) => l.number === state.selected) || state.lookups[0];
    const others = state.lookups.filter((l) => l !== chosen).slice(0, OLD_PATHS);
    for (const lookup of others.reverse()) drawPath(lookup, group, false);
    drawPath(chosen, group, true);
  }

  function listLookups() {
    const list = $("lookup-list");
    clear(list);
    const chosen = state.lookups.find((l) => l.number === state.selected) || state.lookups[0];
    for (const lookup of state.lookups) {
      const entry = document.createElement("li");
      entry.dataset.number = lookup.number;
      entry.dataset.kind = lookup.kind;
      if (lookup === chosen) entry.className = "selected";
      const kind = document.createElement("span");
      kind.className = "kind " + lookup.kind;
      kind.textContent = "#" + lookup.number + " " + (lookup.kind === "find_value" ? "get" : "find node");
      const target = document.createElement("span");
      target.className = "target";
      target.textContent = "→ " + short(lookup.target);
      target.title = lookup.target;
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = ago(lookup.age);
      const detail = document.createElement("span");
      detail.className = "detail";
      const answered = lookup.trace.filter((s) => s.event === "answered").length;
      const failed = lookup.trace.filter((s) => s.event === "failed").length;
      detail.textContent = lookup.hops + " hops, " + answered + " answered, " + failed +
        " failed, " + duration(lookup.seconds);
      if (lookup.kind === "find_value") {
        const found = document.createElement("span");
        found.className = lookup.found ? "ok" : "bad";
        found.textContent = lookup.found ? " · found" : " · not found";
        detail.appendChild(found);
      }
      entry.append(kind, target, when, detail);
      entry.addEventListener("click", () => {
        state.selected = lookup.number;
        listLookups();
        drawPaths();
      });
      list.appendChild(entry);
    }
  }

  function listListens(listens) {
    const rows = [
      ["listening", listens.listening, (l) => short(l.key) + " · seq " + (l.seq === null ? "–" : l.seq) +
        " · " + l.delivered + " told · " + l.holders.length + " holders" +
        (l.polled.length ? ", " + l.polled.length + " polled" : "")],
      ["held", listens.held, (l) => short(l.key) + " · for " + short(l.listener) + " at " + l.host +
        " · " + span(l.expires_in) + " left"],
    ];
    for (const [name, entries, describe] of rows) {
      const list = $(name + "-list");
      clear(list);
      $(name + "-count").textContent = entries.length;
      for (const entry of entries) {
        const item = document.createElement("li");
        item.className = "mono";
        item.textContent = describe(entry);
        item.title = entry.key;
        list.appendChild(item);
      }
    }
  }

  // -- the panels ------------------------------------------------------------------------

  function rate(now, previous, field) {
    if (!previous) return "… /s";
    const seconds = (now.time - previous.time) / 1000;
    const perSecond = seconds > 0 ? (now.counts[field] - previous.counts[field]) / seconds : 0;
    return perSecond.toFixed(1) + " /s";
  }

  function showPanels(status, counts) {
    const now = { time: performance.now(), counts: counts };
    $("stat-id").textContent = status.id.slice(0, 32) + "…";
    $("stat-id").title = status.id;
    $("stat-uptime").textContent = span(status.uptime);
    $("stat-joined").textContent = status.joined ? "yes" : "not yet";
    $("stat-peers").textContent = status.peers;
    $("stat-live").textContent = status.live_contacts;
    $("stat-size").textContent = "~" + status.network_size;
    $("stat-items").textContent = status.items;
    $("stat-port").textContent = status.port;
    $("stat-lookups").textContent = counts.lookups;
    $("stat-lookup-time").textContent =
      counts.lookups ? duration(counts.lookupSeconds / counts.lookups) : "–";
    $("stat-sent").textContent = counts.sent;
    $("stat-sent-rate").textContent = rate(now, state.previous, "sent");
    $("stat-received").textContent = counts.received;
    $("stat-received-rate").textContent = rate(now, state.previous, "received");
    $("stat-failed").textContent = counts.failed;
    state.previous = now;
  }

  function setReachable(ok, message) {
    $("unreachable").hidden = ok;
    document.body.classList.toggle("offline", !ok);
    const live = $("live");
    live.className = ok ? "live ok" : "live down";
    live.textContent = message;
  }

  // -- polling ---------------------------------------------------------------------------

  async function poll() {
    try {
      const [status, peers, items, lookups, counts, listens] = await Promise.all([
        json("v1/status"), json("v1/peers"), json("v1/items"), json("v1/lookups"), counters(),
        json("v1/listens"),
      ]);
      state.selfId = status.id;
      state.lookups = lookups.lookups;
      drawSelf(status);
      drawContacts(peers.peers);
      drawItems(items.items);
      drawPaths();
      listLookups();
      listListens(listens);
      showPanels(status, counts);
      document.title = "txdht " + status.id.slice(0, 8) + " · " + status.peers + " peers";
      setReachable(true, "live · updated " + new Date().toLocaleTimeString());
      state.downSince = null;
    } catch (e) {
      state.downSince = state.downSince || new Date().toLocaleTimeString();
      state.previous = null;
      setReachable(false, "no answer since " + state.downSince);
    }
    state.timer = setTimeout(poll, POLL_MS);
  }

  // -- put and get -----------------------------------------------------------------------

  function result(id, isError, parts) {
    const box = $(id);
    clear(box);
    box.classList.toggle("error", isError);
    for (const part of parts) box.appendChild(part);
  }

  function text(value, className, id) {
    const node = document.createElement("span");
    if (className) node.className = className;
    if (id) node.id = id;
    node.textContent = value;
    return node;
  }

  async function put(event) {
    event.preventDefault();
    const name = $("put-name").value;
    const value = $("put-value").value;
    const button = $("put-button");
    button.disabled = true;
    result("put-result", false, [text("storing…")]);
    try {
      const path = name ? "v1/names/" + encodeURIComponent(name) : "v1/blobs";
      const response = await request(path, { method: name ? "PUT" : "POST", body: value });
      if (!response.ok) {
        result("put-result", true, [text("not stored: " + (await errorText(response)))]);
        return;
      }
      const body = await response.json();
      result("put-result", false, [
        text("stored on "), text(String(body.stored_on), "count", "put-count"),
        text(body.stored_on === 1 ? " node under key " : " nodes under key "),
        text(body.key, "mono key", "put-key"),
        text(": "),
        text(body.holders.map((id) => id === state.selfId ? "this node" : short(id)).join(", "),
          "mono", "put-holders"),
      ]);
      $("get-key").value = body.key;
    } catch (e) {
      result("put-result", true, [text("not stored: the node did not answer (" + e.message + ")")]);
    } finally {
      button.disabled = false;
    }
  }

  function shown(buffer) {
    const bytes = new Uint8Array(buffer);
    try {
      return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), binary: false };
    } catch (e) {
      const hex = Array.from(bytes.slice(0, 512), (b) => b.toString(16).padStart(2, "0")).join(" ");
      return { text: hex + (bytes.length > 512 ? " …" : ""), binary: true };
    }
  }

  async function get(event) {
    event.preventDefault();
    const key = $("get-key").value.trim().toLowerCase();
    const button = $("get-button");
    button.disabled = true;
    result("get-result", false, [text("looking up…")]);
    try {
      const response = await request("v1/keys/" + encodeURIComponent(key));
      if (!response.ok) {
        result("get-result", true, [text(await errorText(response))]);
        return;
      }
      const value = shown(await response.arrayBuffer());
      result("get-result", false, [
        text(value.binary ? "binary value (hex):" : "value:"),
        text(value.text, "value" + (value.binary ? " mono" : ""), "get-value"),
      ]);
    } catch (e) {
      result("get-result", true, [text("the node did not answer (" + e.message + ")")]);
    } finally {
      button.disabled = false;
    }
  }

  // -- hovering --------------------------------------------------------------------------

  const HINT = () => $("hover").dataset.hint;

  function hover(event) {
    const target = event.target.closest && event.target.closest("[data-tip]");
    $("hover").textContent = target ? details(target) : HINT();
  }

  function details(target) {
    // Contacts with nearby ids share a spot on the face, so the dot on top would hide the
    // others: a contact's details come with a line for every contact whose dot it touches.
    if (!target.classList.contains("contact")) return target.dataset.tip;
    const at = (dot) => [Number(dot.getAttribute("cx")), Number(dot.getAttribute("cy"))];
    const [x, y] = at(target);
    const here = [...$("contacts").querySelectorAll("circle.contact")].filter((dot) => {
      const [dx, dy] = at(dot);
      return Math.hypot(dx - x, dy - y) < 2 * DOT_RADIUS;
    });
    if (here.length < 2) return target.dataset.tip;
    here.sort((a, b) => (b === target) - (a === target)); // the one under the pointer first
    const shown = here.slice(0, MAX_LISTED_HERE).map((dot) => dot.dataset.line);
    const more = here.length - shown.length;
    return here.length + " contacts here:\n" + shown.join("\n") + (more ? "\nand " + more + " more" : "");
  }

  function start() {
    $("hover").dataset.hint = $("hover").textContent;
    drawDial();
    $("face").addEventListener("mouseover", hover);
    $("face").addEventListener("click", hover);
    $("face").addEventListener("mouseleave", () => { $("hover").textContent = HINT(); });
    $("put-form").addEventListener("submit", put);
    $("get-form").addEventListener("submit", get);
    poll();
  }

  start();
})();
