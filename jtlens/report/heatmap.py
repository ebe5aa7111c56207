"""Every heatmap jtlens draws, in one convention (PNG through matplotlib, HTML through `css_colour`).

White is zero and red is positive everywhere: signed values (patching metrics, logit
attributions) sit on a scale symmetric about zero with blue for negative; non-negative values
(attention weights, probabilities, scores) run from white to the same red. Every axis has
integer ticks (one per row/column, the labels thinned when there are many), a label, and the
colour bar says which way the colours go.

    fig = heatmap_figure(result, xlabel="position", ylabel="layer", label="logit diff")
    png = png_bytes(fig)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SIGNED_CMAP, UNSIGNED_CMAP = "RdBu_r", "Reds"
SIGNED_LEGEND = "red = positive, blue = negative, white = 0"
UNSIGNED_LEGEND = "white = 0, red = high"
# RdBu_r's strong red and blue (ColorBrewer), for HTML views that colour cells themselves.
RED, BLUE = (178, 24, 43), (33, 102, 172)
MAX_TICK_LABELS = 40


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend(label: str = "", signed: bool = True) -> str:
    """The colour-bar text: what the value is, and which way the colours go."""
    key = SIGNED_LEGEND if signed else UNSIGNED_LEGEND
    return f"{label} ({key})" if label else key


def full_scale(arrays, signed: bool = True, limit: Optional[float] = None) -> float:
    """The value drawn at full colour on one scale for `arrays`: `limit` when given, else the
    largest |finite value| (1 for unsigned values that are at most 1, such as probabilities)."""
    if limit is not None:
        return limit
    finite = [np.abs(a[np.isfinite(a)]) for a in map(np.asarray, arrays)]
    peak = max((float(f.max()) for f in finite if f.size), default=0.0)
    return (1.0 if not signed and peak <= 1.0 else peak) or 1.0


def _ticks(n: int, labels: Optional[Sequence[str]]):
    """Integer positions 0..n-1 and their labels, every k-th shown when there are many."""
    labels = [str(i) for i in range(n)] if labels is None else [str(t) for t in labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} tick labels for an axis of {n}")
    step = max(1, -(-n // MAX_TICK_LABELS))
    at = list(range(0, n, step))
    return at, [labels[i] for i in at]


def draw(ax, values, *, xlabel: str, ylabel: str, title: str = "", signed: bool = True,
         limit: Optional[float] = None, row_labels: Optional[Sequence[str]] = None,
         col_labels: Optional[Sequence[str]] = None, fontsize: float = 7):
    """Draw `values` [rows, cols] on the matplotlib axes `ax`; returns the image (for a colour bar).

    signed: a scale symmetric about zero (red positive, blue negative); else white (0) to red.
    limit: the value drawn at full colour (default: the largest |value|; 1 for unsigned values
    that are at most 1, such as attention weights).
    """
    arr = np.asarray(values, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-d array; got shape {arr.shape}")
    limit = full_scale([arr], signed, limit)
    im = ax.imshow(arr, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP,
                   vmin=-limit if signed else 0.0, vmax=limit, aspect="auto",
                   interpolation="nearest")
    xs, xl = _ticks(arr.shape[1], col_labels)
    ys, yl = _ticks(arr.shape[0], row_labels)
    ax.set_xticks(xs, xl, rotation=90 if max(map(len, xl), default=0) > 3 else 0,
                  fontsize=fontsize)
    ax.set_yticks(ys, yl, fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    return im


def colorbar(fig, im, ax, label: str = "", signed: bool = True, **kw):
    """The colour bar of `im`, labelled with the value and the colour convention."""
    bar = fig.colorbar(im, ax=ax, **kw)
    bar.set_label(legend(label, signed), fontsize=8)
    return bar


def heatmap_figure(values, *, xlabel: str, ylabel: str, title: str = "", label: str = "",
                   signed: bool = True, limit: Optional[float] = None,
                   row_labels: Optional[Sequence[str]] = None,
                   col_labels: Optional[Sequence[str]] = None):
    """One heatmap [rows, cols] with its colour bar, in a figure sized to its cells."""
    rows, cols = np.shape(values)
    fig, ax = pyplot().subplots(figsize=(min(16.0, max(4.0, 0.32 * cols + 2.5)),
                                         min(14.0, max(2.8, 0.24 * rows + 1.6))))
    im = draw(ax, values, xlabel=xlabel, ylabel=ylabel, title=title, signed=signed, limit=limit,
              row_labels=row_labels, col_labels=col_labels)
    colorbar(fig, im, ax, label, signed)
    return fig


def panels_figure(panels, *, xlabel: str, ylabel: str, title: str = "", label: str = "",
                  signed: bool = True, limit: Optional[float] = None,
                  row_labels: Optional[Sequence[str]] = None,
                  col_labels: Optional[Sequence[str]] = None):
    """Several heatmaps [(panel title, [rows, cols]), ...] side by side on one shared scale."""
    arrays = [np.asarray(a, np.float64) for _, a in panels]
    limit = full_scale(arrays, signed, limit)
    rows, cols = arrays[0].shape
    fig, axes = pyplot().subplots(1, len(arrays), squeeze=False, figsize=(
        min(8.0, max(3.5, 0.32 * cols + 2)) * len(arrays), min(14.0, max(3.0, 0.24 * rows + 1.6))))
    for k, (ax, (name, arr)) in enumerate(zip(axes[0], panels)):
        im = draw(ax, arr, xlabel=xlabel, ylabel=ylabel if k == 0 else "", signed=signed,
                  limit=limit, title="" if name is None else str(name),
                  row_labels=row_labels, col_labels=col_labels)
        if k:
            ax.tick_params(labelleft=False)
    colorbar(fig, im, axes[0].tolist(), label, signed, shrink=0.8)
    if title and len(arrays) == 1 and panels[0][0] is None:
        axes[0, 0].set_title(title)  # a suptitle floats far above a single tall panel
    elif title:
        fig.suptitle(title)
    return fig


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_png(fig, path, dpi: int = 110) -> Path:
    """Write the figure to `path` as PNG and close it."""
    path = Path(path)
    path.write_bytes(png_bytes(fig, dpi))
    return path


def css_colour(value: float, limit: float, signed: bool = True) -> str:
    """The CSS colour of `value` in the same convention (white at 0, full colour at +-limit)."""
    t = 0.0 if not np.isfinite(value) or not limit else max(-1.0, min(1.0, value / limit))
    if not signed:
        t = max(t, 0.0)
    end = RED if t >= 0 else BLUE
    mix = [round(255 + (c - 255) * abs(t)) for c in end]
    return "rgb({},{},{})".format(*mix)
