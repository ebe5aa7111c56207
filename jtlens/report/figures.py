"""The report's figures (PNG bytes through `jtlens.heatmap`) and its HTML scaffolding."""

from __future__ import annotations

import base64
import html
from typing import Optional

import numpy as np

from jtlens.report.heatmap import BLUE, RED, colorbar, css_colour, draw, panels_figure, png_bytes, pyplot

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


def dla_png(dla: dict, what: str) -> bytes:
    """Heads [n_layers, n_heads] heatmap plus the per-layer MLP bars, for one position."""
    has_mlp = "mlp" in dla
    heads = np.asarray(dla["heads"])
    fig, axes = pyplot().subplots(1, 2 if has_mlp else 1, squeeze=False, figsize=(
        9 if has_mlp else 5, min(12.0, max(3.0, 0.22 * heads.shape[0] + 1.5))))
    im = draw(axes[0, 0], heads, xlabel="head", ylabel="layer", title=f"heads -> {what}")
    colorbar(fig, im, axes[0, 0], "logit")
    if has_mlp:
        mlp = np.asarray(dla["mlp"])
        axes[0, 1].barh(range(len(mlp)), mlp, color=[np.array(RED if v >= 0 else BLUE) / 255
                                                      for v in mlp])
        axes[0, 1].set(ylabel="layer", xlabel="logit (red = positive, blue = negative)",
                       title=f"MLPs -> {what}", yticks=range(len(mlp)))
        axes[0, 1].invert_yaxis()  # layer 0 on top, as in the heatmap
        axes[0, 1].tick_params(labelsize=7)
    return png_bytes(fig)


def dla_positions_png(dla: dict, toks, what: str, start: int = 0) -> bytes:
    """Attribution per layer and position: attention (heads summed) and MLP, on one scale."""
    panels = [("attention (sum over heads)", np.asarray(dla["heads"]).sum(-1).T)]
    if "mlp" in dla:
        panels.append(("MLP", np.asarray(dla["mlp"]).T))
    fig = panels_figure(panels, xlabel="position", ylabel="layer", label="logit",
                        title=f"direct logit attribution of {what}", col_labels=_token_labels(toks, start))
    return png_bytes(fig)


def answer_lens_png(view: dict, toks, start: int = 0) -> bytes:
    """Logit lens of the answer: its probability [layer, pos], and answer - wrong when given."""
    n = 2 if "lens_diff" in view else 1
    rows = len(view["lens_p"])
    layer_labels = [str(i) for i in range(rows - 1)] + ["final"]
    width = min(9.0, max(4.0, 0.32 * len(toks) + 2.5))
    fig, axes = pyplot().subplots(1, n, squeeze=False,
                                  figsize=(width * n, min(12.0, max(3.0, 0.22 * rows + 1.6))))
    name = repr(view["answer_str"])
    im = draw(axes[0, 0], view["lens_p"], xlabel="position", ylabel="layer (input residual)",
              title=f"P({name})", signed=False, limit=1.0, row_labels=layer_labels,
              col_labels=_token_labels(toks, start))
    colorbar(fig, im, axes[0, 0], "probability", signed=False)
    if n == 2:
        im = draw(axes[0, 1], view["lens_diff"], xlabel="position", ylabel="",
                  title=f"logit {name} - {view['wrong_str']!r}", row_labels=layer_labels,
                  col_labels=_token_labels(toks, start))
        colorbar(fig, im, axes[0, 1], "logit difference")
    return png_bytes(fig)


def induction_png(a: dict) -> bytes:
    """Induction score per head, next to the best head's pattern on random tokens said twice."""
    ind = a["induction"]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 5),
                                           gridspec_kw=dict(width_ratios=[1, 2]))
    im = draw(left, ind["scores"], xlabel="head", ylabel="layer", title="induction score",
              signed=False, limit=1.0)
    colorbar(fig, im, left, "score", signed=False)
    toks = [repr(t)[1:-1] for t in ind["str_tokens"]]  # random ids include control bytes
    im = draw(right, ind["pattern"], xlabel="key (source) token", ylabel="query (destination) token",
              title="L{}H{} on {} random tokens said twice".format(*ind["best"], ind["seq_len"]),
              signed=False, limit=1.0, row_labels=toks, col_labels=toks, fontsize=5)
    colorbar(fig, im, right, "attention", signed=False)
    fig.subplots_adjust(wspace=0.45)  # room for the left colour bar's label
    return png_bytes(fig)
