// graph.html's viewer: no libraries, no network. The data is the JSON in <script id="graph-data">
// (graphs/html_data.py writes it). Edges are drawn on a canvas, in a few batched paths, because a
// graph can hold 100,000 of them; nodes are SVG so they can be hovered and clicked.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const N = data.nodes.id.length, M = data.edges.s.length, L = data.n_layers;
  const kind = data.nodes.kind, layer = data.nodes.layer, pos = data.nodes.pos;
  const src = Int32Array.from(data.edges.s), dst = Int32Array.from(data.edges.t);
  const wt = Float64Array.from(data.edges.w, (v) => (v === null ? 0 : v));
  const extra = data.edges.extra || {};
  const POS_COLOR = "31,111,235", NEG_COLOR = "209,36,47";

  // --- derived arrays: levels, row sums, incidence -------------------------------------------
  const level = new Int32Array(N);
  const logitW = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    level[i] = kind[i] === "t" ? -1 : kind[i] === "l" ? L : layer[i];
    if (kind[i] === "l") logitW[i] = data.nodes.prob[i] || 0;
  }
  const rowSum = new Float64Array(N);
  const inDeg = new Int32Array(N + 1), outDeg = new Int32Array(N + 1);
  for (let e = 0; e < M; e++) { rowSum[dst[e]] += Math.abs(wt[e]); inDeg[dst[e] + 1]++; outDeg[src[e] + 1]++; }
  for (let i = 0; i < N; i++) { rowSum[i] = Math.max(rowSum[i], 1e-10); inDeg[i + 1] += inDeg[i]; outDeg[i + 1] += outDeg[i]; }
  const inEdges = new Int32Array(M), outEdges = new Int32Array(M);
  { const fi = inDeg.slice(0, N), fo = outDeg.slice(0, N);
    for (let e = 0; e < M; e++) { inEdges[fi[dst[e]]++] = e; outEdges[fo[src[e]]++] = e; } }
  const frac = new Float64Array(M);  // |w| as a share of its target's inputs: width and path strength
  for (let e = 0; e < M; e++) frac[e] = Math.abs(wt[e]) / rowSum[dst[e]];
  const targetsDown = [];  // nodes with inputs, highest level first: one sweep computes influence
  for (let i = 0; i < N; i++) if (inDeg[i + 1] > inDeg[i]) targetsDown.push(i);
  targetsDown.sort((a, b) => level[b] - level[a]);
  let maxInfl = 1e-12;
  for (let i = 0; i < N; i++) if (kind[i] !== "l") maxInfl = Math.max(maxInfl, data.nodes.infl[i] || 0);

  // --- state ------------------------------------------------------------------------------------
  const state = { threshold: data.node_threshold, pinned: new Set(), selected: new Set(), supernodes: [],
                  anchor: -1, hover: -1, detail: -1 };
  const visible = new Uint8Array(N);
  const X = new Float64Array(N), Y = new Float64Array(N), R = new Float64Array(N);
  const $ = (id) => document.getElementById(id);
  const pane = $("pane"), edgeCanvas = $("edges"), hlCanvas = $("highlight"), svg = $("svg");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (x, d = 3) => (x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(d));
  const showTok = (t) => String(t).replace(/\n/g, "⏎").replace(/\t/g, "→").replace(/\r/g, "↵");
  let W = 0, H = 0, margin = { left: 44, right: 16, top: 26, bottom: 54 };

  // --- layout: tokens along the bottom, layers upward, logits on top --------------------------
  function layout() {
    W = Math.max(600, pane.clientWidth);
    const rows = L + 2;
    const rowH = Math.max(14, Math.min(90, (Math.max(pane.clientHeight, 420) - margin.top - margin.bottom) / rows));
    H = margin.top + margin.bottom + rowH * (rows - 1);
    const P = data.tokens.length, colW = (W - margin.left - margin.right) / Math.max(P, 1);
    const yOf = (lv) => H - margin.bottom - (lv + 1) * rowH;
    const cells = new Map();
    for (let i = 0; i < N; i++) {
      const key = kind[i] === "l" ? "logits" : level[i] + ":" + pos[i];
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    }
    for (const [key, members] of cells) {
      const byInfl = (a, b) => (data.nodes.infl[b] || data.nodes.prob[b] || 0) - (data.nodes.infl[a] || data.nodes.prob[a] || 0);
      members.sort(byInfl);
      const m = members.length;
      const logits = key === "logits";
      const centre = logits ? Math.min(W - margin.right - 60, margin.left + (P - 0.5) * colW) : 0;
      const step = logits ? 36 : Math.min(9, (colW * 0.9) / Math.max(m, 1));
      // Strongest in the middle of its cell, the rest alternating outward.
      members.forEach((i, k) => {
        const off = (k % 2 ? -1 : 1) * Math.ceil(k / 2) * step;
        X[i] = (logits ? centre : margin.left + (pos[i] + 0.5) * colW) + off;
        Y[i] = yOf(level[i]);
      });
    }
    for (let i = 0; i < N; i++) {
      R[i] = kind[i] === "l" ? 3 + 7 * Math.sqrt(data.nodes.prob[i] || 0)
        : kind[i] === "t" ? 4.5 : 2 + 7 * Math.sqrt(Math.max(data.nodes.infl[i] || 0, 0) / maxInfl);
    }
    for (const c of [edgeCanvas, hlCanvas]) {
      const dpr = window.devicePixelRatio || 1;
      c.width = W * dpr; c.height = H * dpr; c.style.width = W + "px"; c.style.height = H + "px";
      c.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    svg.setAttribute("width", W); svg.setAttribute("height", H);
    drawOrder = null;
    drawAxes(rowH, colW, yOf);
  }

  function drawAxes(rowH, colW, yOf) {
    const parts = [];
    for (let lv = -1; lv <= L; lv++) {
      const y = yOf(lv);
      parts.push(`<line class="grid" x1="${margin.left}" x2="${W - margin.right}" y1="${y}" y2="${y}"/>`);
      const name = lv === -1 ? "emb" : lv === L ? "logits" : (lv % Math.max(1, Math.ceil(L / 16)) === 0 ? "L" + lv : "");
      if (name) parts.push(`<text x="4" y="${y + 4}">${name}</text>`);
    }
    data.tokens.forEach((t, p) => {
      const x = margin.left + (p + 0.5) * colW;
      parts.push(`<text transform="translate(${x},${H - margin.bottom + 14}) rotate(35)">${esc(showTok(t)).slice(0, 14)}</text>`);
    });
    $("axes").innerHTML = parts.join("");
  }

  // --- which nodes the slider keeps --------------------------------------------------------------
  function applyThreshold() {
    let shown = 0;
    for (let i = 0; i < N; i++) {
      const c = data.nodes.cum[i];
      visible[i] = kind[i] === "t" || kind[i] === "l" || state.pinned.has(i) || (c !== null && c <= state.threshold + 1e-12) ? 1 : 0;
      shown += visible[i];
    }
    return shown;
  }

  // --- edges on the canvas: a handful of batched paths (sign x width bucket) ---------------------
  function drawEdges() {
    const ctx = edgeCanvas.getContext("2d");
    ctx.clearRect(0, 0, W, H);
    const B = 6, buckets = [];
    for (let k = 0; k < 2 * B * 3; k++) buckets.push([]);
    const anyPinned = state.pinned.size > 0;
    let drawn = 0;
    for (let e = 0; e < M; e++) {
      const s = src[e], t = dst[e];
      if (!visible[s] || !visible[t]) continue;
      drawn++;
      const strong = !anyPinned || (state.pinned.has(s) && state.pinned.has(t));
      const flagged = extra[e] && extra[e].effect_flag ? 1 : 0;
      const b = Math.min(B - 1, Math.floor(Math.sqrt(frac[e]) * B));
      buckets[((b * 2) + (wt[e] >= 0 ? 0 : 1)) * 3 + (strong ? (flagged ? 2 : 1) : 0)].push(e);
    }
    // Weak edges first and strong ones on top, both signs alike; the more edges, the fainter each,
    // so 100,000 of them read as density rather than a solid wash.
    const density = Math.min(1, Math.sqrt(1500 / Math.max(drawn, 1)));
    buckets.forEach((list, k) => {
      if (!list.length) return;
      const kindOf = k % 3, neg = Math.floor(k / 3) % 2, b = Math.floor(k / 6);
      const share = (b + 1) / B;
      const alpha = kindOf === 0 ? 0.04 * density : Math.min(0.9, (0.06 + 0.9 * share * share) * (0.25 + 0.75 * density));
      ctx.strokeStyle = `rgba(${neg ? NEG_COLOR : POS_COLOR},${alpha})`;
      ctx.lineWidth = 0.4 + 3.2 * ((b + 1) / B) ** 1.5;
      ctx.setLineDash(kindOf === 2 ? [4, 3] : []);
      ctx.beginPath();
      for (const e of list) { ctx.moveTo(X[src[e]], Y[src[e]]); ctx.lineTo(X[dst[e]], Y[dst[e]]); }
      ctx.stroke();
    });
    ctx.setLineDash([]);
    return drawn;
  }

  function drawHighlight() {
    const ctx = hlCanvas.getContext("2d");
    ctx.clearRect(0, 0, W, H);
    const i = state.hover >= 0 ? state.hover : state.detail;
    if (i < 0) return;
    const edges = [];
    for (let k = inDeg[i]; k < inDeg[i + 1]; k++) edges.push(inEdges[k]);
    for (let k = outDeg[i]; k < outDeg[i + 1]; k++) edges.push(outEdges[k]);
    for (const e of edges) {
      if (!visible[src[e]] || !visible[dst[e]]) continue;
      ctx.strokeStyle = `rgba(${wt[e] >= 0 ? POS_COLOR : NEG_COLOR},0.85)`;
      ctx.lineWidth = 0.8 + 3.5 * Math.sqrt(frac[e]);
      ctx.setLineDash(extra[e] && extra[e].effect_flag ? [4, 3] : []);
      ctx.beginPath(); ctx.moveTo(X[src[e]], Y[src[e]]); ctx.lineTo(X[dst[e]], Y[dst[e]]); ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  let drawOrder = null;  // smallest first, so the most influential nodes sit on top and take the clicks
  function drawNodes() {
    if (!drawOrder) drawOrder = Int32Array.from({ length: N }, (_, i) => i).sort((a, b) => R[a] - R[b]);
    const parts = [];
    for (const i of drawOrder) {
      if (!visible[i]) continue;
      let cls = "node " + kind[i];
      if (state.pinned.has(i)) cls += " pinned";
      if (state.selected.has(i)) cls += " selected";
      if (state.anchor === i) cls += " anchor";
      if (kind[i] === "f") parts.push(`<circle class="${cls}" data-i="${i}" data-id="${esc(data.nodes.id[i])}" cx="${X[i].toFixed(1)}" cy="${Y[i].toFixed(1)}" r="${R[i].toFixed(1)}"/>`);
      else parts.push(`<rect class="${cls}" data-i="${i}" data-id="${esc(data.nodes.id[i])}" x="${(X[i] - R[i]).toFixed(1)}" y="${(Y[i] - R[i]).toFixed(1)}" width="${(2 * R[i]).toFixed(1)}" height="${(2 * R[i]).toFixed(1)}" rx="${kind[i] === "e" ? 0 : 2}"/>`);
    }
    $("nodes").innerHTML = parts.join("");
    drawSupernodes();
  }

  const PALETTE = ["#0a66d6", "#b5179e", "#2a9d8f", "#e76f51", "#6a4c93", "#8d6e63"];
  function drawSupernodes() {
    const parts = [];
    state.supernodes.forEach((sn, k) => {
      const members = sn.members.filter((i) => visible[i]);
      if (!members.length) return;
      const x0 = Math.min(...members.map((i) => X[i] - R[i])) - 4, x1 = Math.max(...members.map((i) => X[i] + R[i])) + 4;
      const y0 = Math.min(...members.map((i) => Y[i] - R[i])) - 4, y1 = Math.max(...members.map((i) => Y[i] + R[i])) + 4;
      const colour = PALETTE[k % PALETTE.length];
      parts.push(`<g class="supernode" data-k="${k}"><rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" rx="6" stroke="${colour}"/>` +
        `<text x="${x0}" y="${y0 - 3}" fill="${colour}">${esc(sn.name)}</text></g>`);
    });
    $("supers").innerHTML = parts.join("");
  }

  // --- scores of the pinned subgraph (graphs/html_data.py pinned_scores is the definition) ----------
  function subgraphScores(pinned) {
    const asError = new Uint8Array(N);
    for (let i = 0; i < N; i++) asError[i] = kind[i] === "e" || (kind[i] === "f" && !pinned.has(i)) ? 1 : 0;
    const x = new Float64Array(N);
    for (const t of targetsDown) {
      if (kind[t] === "f" && asError[t]) continue;  // a feature left out is an error: its inputs do not count
      const y = (logitW[t] + x[t]) / rowSum[t];
      for (let k = inDeg[t]; k < inDeg[t + 1]; k++) { const e = inEdges[k]; x[src[e]] += Math.abs(wt[e]) * y; }
    }
    let tok = 0, err = 0, num = 0, den = 0;
    for (let i = 0; i < N; i++) {
      if (kind[i] === "t") tok += x[i];
      if (asError[i]) err += x[i];
      let share = 0;
      if (!(kind[i] === "f" && asError[i])) {
        for (let k = inDeg[i]; k < inDeg[i + 1]; k++) { const e = inEdges[k]; if (asError[src[e]]) share += Math.abs(wt[e]); }
        share /= rowSum[i];
      }
      const reach = x[i] + logitW[i];
      num += (1 - share) * reach; den += reach;
    }
    return { replacement: tok + err > 0 ? tok / (tok + err) : NaN, completeness: den > 0 ? num / den : NaN };
  }

  // --- the strongest path between two nodes (product of input shares, edges always go up a level) ----
  let edgeOrder = null;
  function strongestPath(a, b) {
    if (level[a] > level[b]) [a, b] = [b, a];
    if (!edgeOrder) edgeOrder = Int32Array.from({ length: M }, (_, e) => e).sort((p, q) => level[src[p]] - level[src[q]]);
    const best = new Float64Array(N), via = new Int32Array(N).fill(-1);
    best[a] = 1;
    for (const e of edgeOrder) {
      const v = best[src[e]] * frac[e];
      if (v > best[dst[e]]) { best[dst[e]] = v; via[dst[e]] = e; }
    }
    if (a !== b && best[b] === 0) return [];
    const path = [b];
    for (let i = b; i !== a; i = src[via[i]]) path.push(src[via[i]]);
    return path.reverse();
  }

  // --- panels ------------------------------------------------------------------------------------
  function contextsHtml(i, limit) {
    if (kind[i] !== "f") return "";
    const ctxs = data.contexts[layer[i] + "." + data.nodes.feature[i]] || [];
    if (!ctxs.length) return `<div class="hint">no contexts stored for this feature</div>`;
    return ctxs.slice(0, limit).map(([act, toks, at]) => `<div class="ctx"><span class="act">${fmt(act, 2)}</span>` +
      toks.map((t, k) => (k === at ? `<mark>${esc(showTok(t))}</mark>` : esc(showTok(t)))).join("") + `</div>`).join("");
  }

  function describe(i) {
    const k = kind[i], what = { f: "feature", e: "error", t: "token", l: "logit" }[k];
    const where = k === "l" ? `p=${fmt(data.nodes.prob[i])}` : `layer ${k === "t" ? "emb" : layer[i]}, position ${pos[i]} (${esc(showTok(data.tokens[pos[i]] || ""))})`;
    const act = data.nodes.act[i] !== null ? `, activation ${fmt(data.nodes.act[i])}` : "";
    const infl = data.nodes.cum[i] !== null ? `, cumulative influence ${fmt(data.nodes.cum[i])}` : "";
    return `<div class="label">${esc(k === "t" || k === "l" ? showTok(data.nodes.label[i]) : data.nodes.label[i])}</div>` +
      `<div class="meta">${what} ${esc(data.nodes.id[i])} · ${where}${act}${infl}</div>`;
  }

  function headsText(h) {
    if (Array.isArray(h)) return h.slice(0, 4).map((x) => (Array.isArray(x) ? x.map((v) => (typeof v === "number" && !Number.isInteger(v) ? fmt(v) : v)).join(":") : typeof x === "object" ? JSON.stringify(x) : x)).join(", ");
    if (h && typeof h === "object") return Object.entries(h).slice(0, 4).map(([k, v]) => `${k}:${typeof v === "number" ? fmt(v) : JSON.stringify(v)}`).join(", ");
    return String(h);
  }

  function edgeRows(list, other) {
    list.sort((p, q) => Math.abs(wt[q]) - Math.abs(wt[p]));
    return list.slice(0, 10).map((e) => {
      const x = extra[e] || {};
      const flag = x.effect_flag ? ` <span class="flag">${esc(x.effect_flag)}</span>` : "";
      const heads = x.heads !== undefined ? `<div class="meta">heads ${esc(headsText(x.heads))}</div>` : "";
      const name = data.nodes.label[other(e)];
      return `<tr><td class="name">${esc(showTok(name)).slice(0, 40)}${heads}</td><td class="num ${wt[e] >= 0 ? "pos" : "neg"}">${fmt(wt[e])}</td>` +
        `<td class="num">${x.measured_effect !== undefined ? fmt(x.measured_effect) : ""}${flag}</td></tr>`;
    }).join("");
  }

  function renderDetail() {
    const el = $("detail"), i = state.detail;
    if (i < 0) { el.innerHTML = `<div class="hint">Click a node to pin it and see its edges here.</div>`; return; }
    const ins = [], outs = [];
    for (let k = inDeg[i]; k < inDeg[i + 1]; k++) ins.push(inEdges[k]);
    for (let k = outDeg[i]; k < outDeg[i + 1]; k++) outs.push(outEdges[k]);
    const head = `<tr><th></th><th class="num">weight</th><th class="num">measured</th></tr>`;
    el.innerHTML = `<div class="detail">${describe(i)}${contextsHtml(i, 8)}</div>` +
      (ins.length ? `<h2>Inputs (${ins.length})</h2><table>${head}${edgeRows(ins, (e) => src[e])}</table>` : "") +
      (outs.length ? `<h2>Outputs (${outs.length})</h2><table>${head}${edgeRows(outs, (e) => dst[e])}</table>` : "");
  }

  function renderScores() {
    const sub = subgraphScores(state.pinned);
    const nf = [...state.pinned].filter((i) => kind[i] === "f").length;
    $("sub-features").textContent = nf;
    $("sub-replacement").textContent = fmt(sub.replacement);
    $("sub-completeness").textContent = fmt(sub.completeness);
  }

  function renderPinned() {
    const rows = [...state.pinned].map((i) => `<div class="row"><input type="checkbox" class="select" data-i="${i}" ${state.selected.has(i) ? "checked" : ""} title="select for a supernode">` +
      `<span class="name" title="${esc(data.nodes.id[i])}">${esc(showTok(data.nodes.label[i]))}</span><button class="x unpin" data-i="${i}" title="unpin">×</button></div>`);
    $("pinned").innerHTML = rows.join("") || `<div class="hint">Nothing pinned.</div>`;
    $("supernodes").innerHTML = state.supernodes.map((sn, k) => `<div class="row"><input type="text" class="sn-name" data-k="${k}" value="${esc(sn.name)}">` +
      `<span class="hint">${sn.members.length} nodes</span><button class="x ungroup" data-k="${k}" title="ungroup">×</button></div>`).join("") ||
      `<div class="hint">Select pinned nodes (their boxes, or Alt-click), name the group, then Group.</div>`;
  }

  function render() {
    const shown = applyThreshold();
    const drawn = drawEdges();
    drawNodes();
    drawHighlight();
    $("shown").textContent = `${shown.toLocaleString()} of ${N.toLocaleString()} nodes, ${drawn.toLocaleString()} of ${M.toLocaleString()} edges`;
    renderScores();
    renderPinned();
    renderDetail();
  }

  // --- interaction -------------------------------------------------------------------------------
  const tip = $("tip");
  function nodeOf(ev) { const el = ev.target.closest && ev.target.closest(".node"); return el ? +el.dataset.i : -1; }
  svg.addEventListener("mouseover", (ev) => {
    const i = nodeOf(ev);
    if (i < 0) return;
    state.hover = i;
    tip.innerHTML = describe(i) + contextsHtml(i, 5);
    tip.style.display = "block";
    moveTip(ev);
    drawHighlight();
  });
  svg.addEventListener("mousemove", (ev) => { if (state.hover >= 0) moveTip(ev); });
  svg.addEventListener("mouseout", (ev) => {
    if (nodeOf(ev) < 0) return;
    state.hover = -1; tip.style.display = "none"; drawHighlight();
  });
  function moveTip(ev) {
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - w - 8) + "px";
    tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - h - 8) + "px";
  }
  svg.addEventListener("click", (ev) => {
    const i = nodeOf(ev);
    if (i < 0) return;
    if (ev.shiftKey) {  // the first shift-click marks an end, the second pins the strongest path to it
      if (state.anchor < 0 || state.anchor === i) { state.anchor = state.anchor === i ? -1 : i; render(); return; }
      const path = strongestPath(state.anchor, i);
      $("path-note").textContent = path.length ? `pinned a path of ${path.length} nodes` : "no path between those two nodes";
      path.forEach((j) => state.pinned.add(j));
      state.anchor = -1; state.detail = i; render(); return;
    }
    if (ev.altKey) {
      state.pinned.add(i);
      if (state.selected.has(i)) state.selected.delete(i); else state.selected.add(i);
      render(); return;
    }
    if (state.pinned.has(i)) { state.pinned.delete(i); state.selected.delete(i); if (state.detail === i) state.detail = -1; }
    else { state.pinned.add(i); state.detail = i; }
    render();
  });
  $("side").addEventListener("click", (ev) => {
    const t = ev.target;
    if (t.classList.contains("unpin")) { const i = +t.dataset.i; state.pinned.delete(i); state.selected.delete(i); render(); }
    if (t.classList.contains("ungroup")) { state.supernodes.splice(+t.dataset.k, 1); render(); }
    if (t.id === "clear") { state.pinned.clear(); state.selected.clear(); state.detail = -1; render(); }
    if (t.id === "group") {
      const members = [...state.selected];
      if (!members.length) { $("group-note").textContent = "select some pinned nodes first"; return; }
      const name = $("supernode-name").value.trim() || `supernode ${state.supernodes.length + 1}`;
      state.supernodes.push({ name, members });
      state.selected.clear(); $("supernode-name").value = ""; $("group-note").textContent = "";
      render();
    }
  });
  $("side").addEventListener("change", (ev) => {
    const t = ev.target;
    if (t.classList.contains("select")) { const i = +t.dataset.i; if (t.checked) state.selected.add(i); else state.selected.delete(i); drawNodes(); }
    if (t.classList.contains("sn-name")) { state.supernodes[+t.dataset.k].name = t.value; drawSupernodes(); }
  });
  let pending = false;
  $("threshold").addEventListener("input", (ev) => {
    state.threshold = +ev.target.value;
    $("threshold-value").textContent = fmt(state.threshold, 2);
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); }
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { layout(); render(); }, 150); });

  // --- start -------------------------------------------------------------------------------------
  // The slider's top shows every node: pruning keeps the node that crosses node_threshold, whose share is above it.
  let top = data.node_threshold;
  for (const c of data.nodes.cum) if (c !== null && c > top) top = c;
  state.threshold = top;
  const slider = $("threshold");
  slider.max = top; slider.value = top;
  $("threshold-value").textContent = fmt(top, 2);
  $("graph-replacement").textContent = fmt(data.scores.replacement);
  $("graph-completeness").textContent = fmt(data.scores.completeness);
  layout();
  render();
  // For tests and benchmarks: when the first render finished (ms since navigation), and a few read-outs.
  window.viewer = { ready: performance.now(), nodes: N, edges: M, state, subgraphScores, strongestPath,
                    pin: (id) => { const i = data.nodes.id.indexOf(id); state.pinned.add(i); render(); return i; },
                    position: (i) => [X[i], Y[i]] };
  document.body.dataset.ready = "1";
})();
