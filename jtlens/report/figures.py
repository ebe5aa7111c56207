"""The report's figures (SVG through `report.svg`) and its HTML scaffolding."""

from __future__ import annotations

import base64
import html
from typing import Optional

import numpy as np

from jtlens.report.heatmap import css_colour, full_scale
from jtlens.report.svg import bars_svg, figure, heatmap_svg, svg_file

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
          "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;"
          "white-space:nowrap}.text{font-size:18px}img{max-width:100%}")


def html_page(title: str, body: str) -> str:
    """A complete self-contained page (no external scripts, styles or images)."""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def img(data: bytes, alt: str) -> str:
    """A PNG embedded as a data URL."""
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def cell(text: str, p: float, limit: float = 1.0, title: Optional[str] = None) -> str:
    """A table cell for a token with probability p (white = 0, red = 1), or with any value p
    >= 0 (red = `limit`); `title`, the hover text, defaults to p as a percentage."""
    title = f"{p:.1%}" if title is None else title
    return (f'<td style="background:{css_colour(p, limit, signed=False)}" '
            f'title="{html.escape(title)}">{html.escape(repr(text))}</td>')


def _token_labels(toks, start: int = 0) -> list[str]:
    return [f"{i} {t!r}" for i, t in enumerate(toks, start)]


def dla_svgs(dla: dict, what: str) -> list[str]:
    """Heads [n_layers, n_heads] heatmap plus the per-layer MLP bars, for one position."""
    panels = [heatmap_svg(dla["heads"], xlabel="head", ylabel="layer", title=f"heads -> {what}",
                          label="logit")]
    if "mlp" in dla:
        panels.append(bars_svg(dla["mlp"], xlabel="logit (red = positive, blue = negative)",
                               ylabel="layer", title=f"MLPs -> {what}"))
    return panels


def dla_positions_svgs(dla: dict, toks, what: str, start: int = 0) -> list[str]:
    """Attribution per layer and position: attention (heads summed) and MLP, on one scale."""
    panels = [("attention (sum over heads)", np.asarray(dla["heads"]).sum(-1).T)]
    if "mlp" in dla:
        panels.append(("MLP", np.asarray(dla["mlp"]).T))
    limit = full_scale([p for _, p in panels])
    return [heatmap_svg(arr, xlabel="position", ylabel="layer", limit=limit, label="logit",
                        title=f"{name}: direct logit attribution of {what}",
                        col_labels=_token_labels(toks, start)) for name, arr in panels]


def answer_lens_svgs(view: dict, toks, start: int = 0) -> list[str]:
    """Logit lens of the answer: its probability [layer, pos], and answer - wrong when given."""
    rows = len(view["lens_p"])
    layer_labels = [str(i) for i in range(rows - 1)] + ["final"]
    name = repr(view["answer_str"])
    panels = [heatmap_svg(view["lens_p"], xlabel="position", ylabel="layer (input residual)",
                          title=f"P({name})", signed=False, limit=1.0, label="probability",
                          row_labels=layer_labels, col_labels=_token_labels(toks, start))]
    if "lens_diff" in view:
        panels.append(heatmap_svg(view["lens_diff"], xlabel="position", ylabel="",
                                  title=f"logit {name} - {view['wrong_str']!r}",
                                  label="logit difference", row_labels=layer_labels,
                                  col_labels=_token_labels(toks, start)))
    return panels


def induction_svgs(a: dict) -> list[str]:
    """Induction score per head, next to the best head's pattern on random tokens said twice."""
    ind = a["induction"]
    toks = [repr(t)[1:-1] for t in ind["str_tokens"]]  # random ids include control bytes
    return [heatmap_svg(ind["scores"], xlabel="head", ylabel="layer", title="induction score",
                        signed=False, limit=1.0, label="score"),
            heatmap_svg(ind["pattern"], xlabel="key (source) token",
                        ylabel="query (destination) token", signed=False, limit=1.0,
                        title="L{}H{} on {} random tokens said twice".format(*ind["best"],
                                                                             ind["seq_len"]),
                        label="attention", row_labels=toks, col_labels=toks, cell=9)]


def svg_figure(panels: list[str], path, alt: str) -> str:
    """Write the panels to `path` as one SVG file; return them as an HTML figure."""
    from pathlib import Path

    Path(path).write_text(svg_file(*panels), encoding="utf-8")
    return f'<figure role="img" aria-label="{html.escape(alt)}">{figure(*panels)}</figure>'
