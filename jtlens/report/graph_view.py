"""An attribution graph as one self-contained HTML page (no network): the pruned graph's nodes
on a grid (x: token position, y: layer, embeddings at the bottom, logits at the top), its edges
as lines (red positive, blue negative, width and opacity by |weight|); hovering a node lists it
and its strongest edges; clicking one keeps only its paths (from the tokens through it to the
logits) lit, a second click shows everything again.

    data = graph_json(graph, "cat", decode=...)       # circuit-tracer's JSON (jtlens.sparse)
    write_graph_html(data, "cat.html")
"""

from __future__ import annotations

import html as html_lib
import json
from pathlib import Path

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; color: #222; margin: 16px; }
 #info { font-family: monospace; font-size: 12px; white-space: pre; min-height: 8em; }
 svg text { font-family: monospace; font-size: 11px; }
 circle, rect { cursor: pointer; }
</style></head><body>
<h3>__TITLE__</h3>
<div>Prompt: <code>__PROMPT__</code> &middot; __N_NODES__ nodes, __N_LINKS__ edges (pruned at node
threshold __THRESHOLD__). Circles: features; squares: errors; bottom row: token embeddings; top
row: target logits. Edge colour: red = positive, blue = negative. Click a node for its paths.</div>
<svg id="g"></svg>
<div id="info">Hover a node.</div>
<script>
const data = __DATA__;
const svg = document.getElementById("g"), info = document.getElementById("info");
const NS = "http://www.w3.org/2000/svg";
const toks = data.metadata.prompt_tokens, P = toks.length;
const layerOf = n => n.layer === "E" ? -1 : +n.layer;
const topLayer = Math.max(...data.nodes.map(layerOf));  // ("top" is window.top)
const W = 90, H = 70, X0 = 40, Y0 = 30, width = X0 * 2 + P * W, height = Y0 * 2 + (topLayer + 2) * H;
svg.setAttribute("width", width); svg.setAttribute("height", height);
const slots = {}, pos = {};
for (const n of data.nodes) {
  const key = layerOf(n) + "," + n.ctx_idx, i = slots[key] = (slots[key] || 0) + 1;
  pos[n.node_id] = [X0 + n.ctx_idx * W + ((i - 1) % 5) * 14 + 10,
                    height - Y0 - (layerOf(n) + 1) * H - Math.floor((i - 1) / 5) * 14];
}
const maxW = Math.max(1e-12, ...data.links.map(l => Math.abs(l.weight)));
const el = (tag, attrs) => { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); svg.appendChild(e); return e; };
for (let p = 0; p < P; p++) {
  const t = el("text", {x: X0 + p * W, y: height - 6}); t.textContent = JSON.stringify(toks[p]);
}
const lines = [], shapes = {};
for (const l of data.links) {
  const [x1, y1] = pos[l.source], [x2, y2] = pos[l.target], s = Math.abs(l.weight) / maxW;
  lines.push([l, el("line", {x1, y1, x2, y2, stroke: l.weight > 0 ? "#c0392b" : "#2e6fba",
                             "stroke-width": 0.5 + 3 * s, "stroke-opacity": 0.15 + 0.7 * s})]);
}
// Clicking a node keeps its paths lit: what reaches it (down to the tokens) and what it reaches
// (up to the logits); an edge is lit when it lies on such a path. A second click clears.
const reach = (id, up) => { const seen = new Set([id]), todo = [id];
  while (todo.length) { const x = todo.pop();
    for (const l of data.links) { const [a, b] = up ? [l.source, l.target] : [l.target, l.source];
      if (a === x && !seen.has(b)) { seen.add(b); todo.push(b); } } }
  return seen; };
let picked = null;
const pick = id => { picked = id;
  const up = id && reach(id, true), down = id && reach(id, false);
  const lit = n => !id || up.has(n) || down.has(n);
  for (const k in shapes) shapes[k].setAttribute("opacity", lit(k) ? 1 : 0.12);
  for (const [l, line] of lines) line.setAttribute("data-lit", !id ||
    (up.has(l.source) && up.has(l.target)) || (down.has(l.source) && down.has(l.target)) ? 1 : 0);
  for (const [, line] of lines) line.style.display = line.getAttribute("data-lit") === "1" ? "" : "none";
  svg.setAttribute("data-picked", id || ""); };
svg.addEventListener("click", () => pick(null));
const edgesOf = id => data.links.filter(l => l.source === id || l.target === id)
  .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 12)
  .map(l => (l.source === id ? "  -> " + l.target : "  <- " + l.source) + "  " + l.weight.toFixed(4));
for (const n of data.nodes) {
  const [x, y] = pos[n.node_id], err = n.feature_type === "mlp reconstruction error";
  const shape = err ? el("rect", {x: x - 5, y: y - 5, width: 10, height: 10, fill: "#999"})
    : el("circle", {cx: x, cy: y, r: 5, fill: n.feature_type === "logit" ? "#27ae60"
                    : n.feature_type === "embedding" ? "#555" : "#f39c12"});
  shapes[n.node_id] = shape;
  shape.setAttribute("data-id", n.node_id);
  shape.addEventListener("click", e => { e.stopPropagation(); pick(picked === n.node_id ? null : n.node_id); });
  shape.addEventListener("mouseenter", () => { info.textContent = [n.node_id + "  " +
    n.feature_type + (n.clerp ? "  " + n.clerp : "") + (n.activation != null ?
    "  activation " + n.activation.toFixed(3) : "") + (n.influence != null ?
    "  cumulative influence " + n.influence.toFixed(3) : "")].concat(edgesOf(n.node_id)).join("\\n"); });
}
</script></body></html>
"""


def graph_html(data: dict) -> str:
    """The page for a graph JSON dict (`jtlens.sparse.graph_json`)."""
    meta = data["metadata"]
    # "</" inside the JSON would end the script element early
    payload = json.dumps(data).replace("</", "<\\/")
    fill = {"__TITLE__": html_lib.escape(meta["slug"]), "__PROMPT__": html_lib.escape(meta["prompt"]),
            "__N_NODES__": str(len(data["nodes"])), "__N_LINKS__": str(len(data["links"])),
            "__THRESHOLD__": str(meta.get("node_threshold")), "__DATA__": payload}
    page = _PAGE
    for key, value in fill.items():
        page = page.replace(key, value)
    return page


def write_graph_html(data: dict, path) -> Path:
    """Write `graph_html(data)` to `path`."""
    path = Path(path)
    path.write_text(graph_html(data), encoding="utf-8")
    return path
