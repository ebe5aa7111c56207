"""Attention patterns as pictures: a self-contained HTML page (one file, no network) and a PNG grid.

    html = attention_html(cache["pattern", 3][0], model.to_str_tokens(text), layer=3)
    save_attention(model, text, layer=3, path="layer3.html")   # or .png
"""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jtlens.report.heatmap import RED, colorbar, draw, pyplot, save_png

_VIEWER = """<div class="jtl-attn" id="__ID__">
<style>
 #__ID__ { font-family: system-ui, sans-serif; color: #222; }
 #__ID__ .bar { margin: 6px 0; font-size: 14px; }
 #__ID__ .bar b { font-family: monospace; }
 #__ID__ .note { color: #555; font-size: 13px; margin: 4px 0; }
 #__ID__ .strip { margin: 4px 0; line-height: 2; }
 #__ID__ .strip .lab { display: inline-block; width: 11em; font-size: 12px; color: #555; }
 #__ID__ .tok { font-family: monospace; padding: 2px 3px; margin: 1px; border: 1px solid #ddd;
                border-radius: 3px; cursor: pointer; white-space: pre; }
 #__ID__ .tok.hover { outline: 2px solid #222; }
 #__ID__ .views { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
 #__ID__ .thumbs { border-collapse: collapse; }
 #__ID__ .thumbs td, #__ID__ .thumbs th { padding: 1px; border: none; font-size: 10px; }
 #__ID__ .thumbs canvas { border: 2px solid #eee; cursor: pointer; display: block; }
 #__ID__ .thumbs canvas.on { border-color: #222; }
 #__ID__ svg text { font-size: 11px; font-family: monospace; }
</style>
<div class="bar">Head <b class="which"></b> &middot; click a thumbnail, or use the arrow keys
 (&larr; &rarr; head, &uarr; &darr; layer) after clicking the view</div>
<div class="note">Hover a token: the first strip shows what it attends to, the second which tokens
 attend to it (colour: white = 0, red = high attention). Grid rows: destination (query) tokens;
 columns: source (key) tokens; hover a cell for its weight.</div>
<div class="strip to"><span class="lab">attends to &rarr;</span></div>
<div class="strip from"><span class="lab">&larr; attended from</span></div>
<div class="views" tabindex="0">
<svg class="grid" xmlns="http://www.w3.org/2000/svg"></svg>
<table class="thumbs"></table>
</div>
<script>
(() => {
const DATA = __DATA__;
const RED = [__RED__];
const root = document.getElementById("__ID__");
const NS = "http://www.w3.org/2000/svg";
const n = DATA.tokens.length, L = DATA.patterns.length, H = DATA.patterns[0].length;
let layer = 0, head = 0, hovered = -1;
const colour = v => `rgba(${RED.join(",")},${Math.max(0, Math.min(1, v)).toFixed(3)})`;
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function strip(cls) {
  const div = root.querySelector(".strip." + cls);
  return DATA.tokens.map((t, i) => {
    const s = document.createElement("span");
    s.className = "tok"; s.textContent = t; s.dataset.i = i;
    s.addEventListener("mouseenter", () => hover(i));
    s.addEventListener("mouseleave", () => hover(-1));
    div.appendChild(s);
    return s;
  });
}
const toSpans = strip("to"), fromSpans = strip("from");
function paintStrip(spans, i, weight) {  // weight(j): attention between token i and token j
  spans.forEach((s, j) => {
    s.style.background = i < 0 ? "" : colour(weight(j));
    s.title = i < 0 ? "" : weight(j).toFixed(3);
    s.classList.toggle("hover", j === i);
  });
}
function hover(i) {
  hovered = i;
  const p = DATA.patterns[layer][head];
  paintStrip(toSpans, i, j => p[i][j]);
  paintStrip(fromSpans, i, j => p[j][i]);
  root.dataset.hovered = i;
}
const cell = Math.max(6, Math.min(22, Math.floor(560 / n)));
const pad = 8 + 7 * Math.min(16, Math.max(...DATA.tokens.map(t => t.length), 1));
function grid() {
  const svg = root.querySelector(".grid"), w = pad + n * cell + 10, p = DATA.patterns[layer][head];
  svg.innerHTML = "";
  svg.setAttribute("width", w); svg.setAttribute("height", w);
  DATA.tokens.forEach((t, i) => {
    const short = t.length > 16 ? t.slice(0, 15) + "\u2026" : t;
    if (cell >= 10) {
      const at = pad + i * cell + cell * 0.7;
      svg.appendChild(el("text", {x: pad - 4, y: at, "text-anchor": "end", class: "token"}, short));
      svg.appendChild(el("text", {transform: `translate(${at},${pad - 4}) rotate(-90)`, class: "token"},
                         short));
    }
  });
  p.forEach((row, q) => row.forEach((v, k) => {
    if (k > q && v === 0) return;  // causal: nothing above the diagonal
    const r = el("rect", {x: pad + k * cell, y: pad + q * cell, width: cell - 1, height: cell - 1,
                          fill: colour(v), stroke: "#eee"});
    r.appendChild(el("title", {}, `${DATA.tokens[q]} -> ${DATA.tokens[k]}: ${v.toFixed(3)}`));
    svg.appendChild(r);
  }));
}
const thumbs = [];
function paint(canvas, p) {
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(n, n);
  p.forEach((row, q) => row.forEach((v, k) => {
    const o = 4 * (q * n + k), a = Math.max(0, Math.min(1, v));
    for (let c = 0; c < 3; c++) img.data[o + c] = Math.round(255 + (RED[c] - 255) * a);
    img.data[o + 3] = 255;
  }));
  ctx.putImageData(img, 0, 0);
}
const table = root.querySelector(".thumbs");
const header = document.createElement("tr");
header.appendChild(document.createElement("th"));
for (let h = 0; h < H; h++) {
  const th = document.createElement("th");
  th.textContent = "H" + h;
  header.appendChild(th);
}
table.appendChild(header);
const size = Math.max(24, Math.min(64, Math.floor(600 / H)));
DATA.patterns.forEach((heads, l) => {
  const tr = document.createElement("tr"), th = document.createElement("th");
  th.textContent = DATA.layers[l]; tr.appendChild(th);
  heads.forEach((p, h) => {
    const td = document.createElement("td"), c = document.createElement("canvas");
    c.width = n; c.height = n; c.style.width = size + "px"; c.style.height = size + "px";
    c.style.imageRendering = "pixelated"; c.title = `${DATA.layers[l]}H${h}`;
    c.addEventListener("click", () => select(l, h));
    paint(c, p); td.appendChild(c); tr.appendChild(td); thumbs.push(c);
  });
  table.appendChild(tr);
});
function select(l, h) {
  layer = (l + L) % L; head = (h + H) % H;
  root.querySelector(".which").textContent = `${DATA.layers[layer]}H${head}`;
  thumbs.forEach((c, i) => c.classList.toggle("on", i === layer * H + head));
  root.dataset.selected = `${DATA.layers[layer]}H${head}`;
  grid(); hover(hovered);
}
root.querySelector(".views").addEventListener("keydown", e => {
  const move = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}[e.key];
  if (move) { e.preventDefault(); select(layer + move[0], head + move[1]); }
});
select(0, 0);
})();
</script></div>
"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title></head>
<body style="margin: 16px"><h3>__TITLE__</h3>
__VIEWER__
</body></html>
"""


def _check(pattern, str_tokens):
    pattern = np.asarray(pattern, np.float32)
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(f"attention pattern must be [n_heads, pos, pos]; got {pattern.shape} "
                         f"(take one prompt: cache['pattern', layer][0])")
    if str_tokens is not None and len(str_tokens) != pattern.shape[-1]:
        raise ValueError(f"{len(str_tokens)} token labels for a pattern over {pattern.shape[-1]} "
                         f"positions")
    tokens = [str(t) for t in (str_tokens if str_tokens is not None else range(pattern.shape[-1]))]
    return pattern, tokens


def attention_viewer(patterns, str_tokens: Optional[Sequence[str]] = None,
                     layers: Optional[Sequence] = None, element_id: str = "jtlens-attention") -> str:
    """An interactive view of every head's pattern [n_layers, n_heads, dest, src] (or one layer
    [n_heads, dest, src]) as an HTML fragment with its own script (nothing fetched): hover a
    token to see what it attends to and what attends to it; a thumbnail per head selects it.

    layers: names of the layers (default 0..n_layers-1, shown as L0, L1, ...)."""
    patterns = np.asarray(patterns, np.float32)
    if patterns.ndim == 3:
        patterns = patterns[None]
    if patterns.ndim != 4:
        raise ValueError(f"attention patterns must be [n_layers, n_heads, pos, pos] or [n_heads, "
                         f"pos, pos]; got {patterns.shape}")
    _, tokens = _check(patterns[0], str_tokens)
    names = [f"L{l}" for l in (layers if layers is not None else range(len(patterns)))]
    data = {"tokens": tokens, "layers": names, "patterns": np.round(patterns, 3).tolist()}
    # "</" inside the JSON would end the script element early.
    payload = json.dumps(data).replace("</", "<\\/")
    if not re.fullmatch(r"[A-Za-z][\w-]*", element_id):
        raise ValueError(f"element_id {element_id!r}: use letters, digits, - and _")
    return (_VIEWER.replace("__ID__", element_id).replace("__RED__", ", ".join(map(str, RED)))
            .replace("__DATA__", payload))


def attention_html(pattern, str_tokens: Optional[Sequence[str]] = None, layer: Optional[int] = None,
                   title: Optional[str] = None) -> str:
    """A standalone HTML page with the interactive view of one layer's patterns
    [n_heads, dest, src] (no scripts or styles are fetched: it opens offline)."""
    pattern, tokens = _check(pattern, str_tokens)
    title = title or f"Attention patterns{f', layer {layer}' if layer is not None else ''}"
    viewer = attention_viewer(pattern, tokens, None if layer is None else [layer])
    return _PAGE.replace("__TITLE__", html_lib.escape(title)).replace("__VIEWER__", viewer)


def attention_png(pattern, path, str_tokens: Optional[Sequence[str]] = None,
                  layer: Optional[int] = None) -> Path:
    """A PNG grid of every head's pattern [n_heads, dest, src], token-labelled."""
    pattern, tokens = _check(pattern, str_tokens)
    n = pattern.shape[0]
    cols = min(n, 4)
    rows = -(-n // cols)
    size = max(2.5, 0.25 * len(tokens))
    fig, axes = pyplot().subplots(rows, cols, figsize=(size * cols + 1, size * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= n:
            ax.axis("off")
            continue
        im = draw(ax, pattern[h], xlabel="key (source)" if h // cols == rows - 1 else "",
                  ylabel="query (destination)" if h % cols == 0 else "", signed=False, limit=1.0,
                  title=f"{f'L{layer}' if layer is not None else ''}H{h}", row_labels=tokens,
                  col_labels=tokens, fontsize=6)
    colorbar(fig, im, axes.ravel().tolist(), "attention weight",
             signed=False, shrink=0.6)
    return save_png(fig, path)


def save_attention(model, input, layer: int, path, prompt: int = 0) -> Path:
    """Run `model` on `input` (text or tokens) and write layer `layer`'s patterns for prompt
    `prompt` to `path` (.html or .png)."""
    path = Path(path)
    if path.suffix not in (".html", ".png"):
        raise ValueError(f"{path}: write .html or .png")
    _, cache = model.run_with_cache(input, names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = np.asarray(cache["pattern", layer][prompt])
    tokens = model.to_str_tokens(input) if model.tokenizer is not None else None
    if tokens and isinstance(tokens[0], list):
        tokens = tokens[prompt]
    if path.suffix == ".png":
        return attention_png(pattern, path, tokens, layer)
    path.write_text(attention_html(pattern, tokens, layer))
    return path
