"""SAE feature dashboards as self-contained HTML, from `jtlens.sparse.dashboard_data`: per
feature its top-activating contexts (tokens coloured by the feature's activation, white = 0,
red = its max), a histogram of its non-zero activations, and the tokens it boosts and
suppresses through the unembedding.

    data = dashboard_data(params, cfg, sae, windows, features=[12, 40])
    write_feature_dashboards(data, tokenizer, "dashboards.html")
"""

from __future__ import annotations

import html
import pathlib

import numpy as np

from jtlens.core.tokens import to_str_tokens
from jtlens.report.figures import cell, html_page, img
from jtlens.report.heatmap import RED, png_bytes, pyplot


def histogram_png(d: dict) -> bytes:
    """Bars of the feature's activation histogram (hist_counts over hist_edges)."""
    edges, counts = np.asarray(d["hist_edges"]), np.asarray(d["hist_counts"])
    fig, ax = pyplot().subplots(figsize=(5.5, 2.6))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=np.array(RED) / 255)
    ax.set(xlabel="activation", ylabel="positions",
           title=f"feature {d['feature']}: {int(counts.sum())} active positions")
    return png_bytes(fig)


def _contexts_html(d: dict, tokenizer) -> str:
    rows = []
    for t in d["top"]:
        toks = to_str_tokens(tokenizer, t["tokens"])
        cells = "".join(cell(s, float(a), d["max_act"], f"{a:.3f}") for s, a in zip(toks, t["acts"]))
        rows.append(f"<tr><td>{t['value']:.3f}</td><td>{html.escape(repr(toks[t['centre']]))}</td>"
                    f"<td>{t['window']}:{t['pos']}</td>{cells}</tr>")
    return ("<table><tr><th>activation</th><th>token</th><th>window:pos</th>"
            f"<th>context</th></tr>{''.join(rows)}</table>")


def _logits_html(d: dict, tokenizer) -> str:
    if d["logits"] is None:
        return "<p>No logit table: the SAE's hook does not write to the residual stream.</p>"
    up, up_w, down, down_w = d["logits"]
    rows = "".join(f"<tr><td>{html.escape(repr(a))}</td><td>{x:+.3f}</td>"
                   f"<td>{html.escape(repr(b))}</td><td>{y:+.3f}</td></tr>"
                   for a, x, b, y in zip(to_str_tokens(tokenizer, up), up_w,
                                         to_str_tokens(tokenizer, down), down_w))
    return ("<table><tr><th>boosted</th><th>W_dec @ W_U</th><th>suppressed</th>"
            f"<th>W_dec @ W_U</th></tr>{rows}</table>")


def feature_dashboard_html(d: dict, tokenizer) -> str:
    """One feature's dashboard as an HTML fragment (a section of a page)."""
    if not d["top"]:
        return (f"<h3>Feature {d['feature']}</h3><p>Never active on these windows.</p>"
                + _logits_html(d, tokenizer))
    return (f"<h3>Feature {d['feature']}</h3><p>Active at {d['density']:.3%} of positions; "
            f"max activation {d['max_act']:.3f}.</p><h4>Top-activating contexts</h4>"
            f"<p>Colour = the feature's activation (white = 0, red = {d['max_act']:.3f}); hover "
            f"for the value.</p>{_contexts_html(d, tokenizer)}<h4>Activations where active</h4>"
            f"{img(histogram_png(d), 'activation histogram of feature %d' % d['feature'])}"
            f"<h4>Output tokens</h4><p>The decoder direction through ln_final and the "
            f"unembedding.</p>{_logits_html(d, tokenizer)}")


def write_feature_dashboards(data: list[dict], tokenizer, path, title: str = "SAE features") -> pathlib.Path:
    """Write one self-contained page with the dashboards of every feature in `data`."""
    path = pathlib.Path(path)
    body = f"<h1>{html.escape(title)}</h1>" + "".join(feature_dashboard_html(d, tokenizer) for d in data)
    path.write_text(html_page(title, body), encoding="utf-8")
    return path
