"""Attention patterns as pictures: a self-contained HTML page (one file, no network) and a PNG grid.

    html = attention_html(cache["pattern", 3][0], model.to_str_tokens(text), layer=3)
    save_attention(model, text, layer=3, path="layer3.html")   # or .png
"""

from __future__ import annotations

import html as html_lib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jtlens.heatmap import RED, colorbar, draw, pyplot, save_png

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
 .heads button { margin: 2px; padding: 3px 8px; border: 1px solid #999; background: #fff; cursor: pointer; }
 .heads button.on { background: #1f4e99; color: #fff; }
 #grid text { font-size: 11px; font-family: monospace; }
 #note { color: #555; font-size: 13px; margin: 6px 0; }
</style></head><body>
<h3>__TITLE__</h3>
<div class="heads" id="heads"></div>
<div id="note">Rows: destination (query) tokens; columns: source (key) tokens. Hover a cell for its weight. Colour: white = 0, red = high attention.</div>
<svg id="grid" xmlns="http://www.w3.org/2000/svg"></svg>
<script>
const DATA = __DATA__;
const NS = "http://www.w3.org/2000/svg";
const cell = 22, pad = 8 + 7 * Math.max(...DATA.tokens.map(t => t.length), 1);
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function draw(h) {
  const svg = document.getElementById("grid"), n = DATA.tokens.length, w = pad + n * cell + 10;
  svg.innerHTML = "";
  svg.setAttribute("width", w); svg.setAttribute("height", w);
  DATA.tokens.forEach((t, i) => {
    svg.appendChild(el("text", {x: pad - 4, y: pad + i * cell + 15, "text-anchor": "end", class: "token"}, t));
    svg.appendChild(el("text", {transform: `translate(${pad + i * cell + 15},${pad - 4}) rotate(-90)`, class: "token"}, t));
  });
  DATA.patterns[h].forEach((row, q) => row.forEach((v, k) => {
    const r = el("rect", {x: pad + k * cell, y: pad + q * cell, width: cell - 1, height: cell - 1,
                          fill: `rgba(__RED__, ${v.toFixed(3)})`, stroke: "#eee"});
    r.appendChild(el("title", {}, `${DATA.tokens[q]} -> ${DATA.tokens[k]}: ${v.toFixed(3)}`));
    svg.appendChild(r);
  }));
  document.querySelectorAll(".heads button").forEach((b, i) => b.classList.toggle("on", i === h));
}
DATA.patterns.forEach((_, h) => {
  const b = document.createElement("button");
  b.textContent = DATA.labels[h]; b.onclick = () => draw(h);
  document.getElementById("heads").appendChild(b);
});
draw(0);
</script></body></html>
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


def attention_html(pattern, str_tokens: Optional[Sequence[str]] = None, layer: Optional[int] = None,
                   title: Optional[str] = None) -> str:
    """A standalone HTML page showing each head's pattern [n_heads, dest, src] over the tokens,
    with a button per head (no scripts or styles are fetched: it opens offline)."""
    pattern, tokens = _check(pattern, str_tokens)
    prefix = f"L{layer}" if layer is not None else ""
    data = {"tokens": tokens, "labels": [f"{prefix}H{h}" for h in range(pattern.shape[0])],
            "patterns": np.round(pattern, 4).tolist()}
    title = title or f"Attention patterns{f', layer {layer}' if layer is not None else ''}"
    # "</" inside the JSON would end the script element early.
    payload = json.dumps(data).replace("</", "<\\/")
    return (_PAGE.replace("__TITLE__", html_lib.escape(title)).replace("__RED__", ", ".join(map(str, RED)))
            .replace("__DATA__", payload))


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
