"""Patching results as labelled heatmaps: PNG (matplotlib) and a self-contained HTML table.

    labels = axis_labels(model, corrupted_tokens, ("layer", "pos"))
    save_heatmap(result, "resid_pre.png", labels)      # or "resid_pre.html"

Values are coloured as every jtlens heatmap (`jtlens.heatmap`): on a scale symmetric about zero,
red positive, blue negative, as the metric after a patch is usually read relative to the
corrupted baseline.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jtlens.report.heatmap import css_colour, legend, panels_figure, save_png

EVERY_TITLES = ("output", "query", "key", "value", "pattern")
_PREFIX = {"layer": "L", "head": "H", "head_index": "H"}


def axis_labels(model, tokens, index_axis_names: Sequence[str]) -> list[list[str]]:
    """Tick labels per axis: L0.., H0.., and for position axes the first prompt's tokens
    (`"tok (3)"`) when the model has a tokenizer, else the position numbers."""
    cfg = model.cfg
    n_pos = np.shape(tokens)[-1]
    words = None
    if getattr(model, "tokenizer", None) is not None:
        words = model.to_str_tokens(np.asarray(tokens).reshape(-1, n_pos)[0])
    out = []
    for name in index_axis_names:
        if name in ("pos", "src_pos", "dest_pos"):
            out.append([f"{w!s} ({i})" for i, w in enumerate(words)] if words else
                       [str(i) for i in range(n_pos)])
        else:
            size = cfg.n_layers if name == "layer" else cfg.n_heads
            out.append([f"{_PREFIX.get(name, '')}{i}" for i in range(size)])
    return out


def _panels(result, panel_titles):
    """[rows, cols] or [panels, rows, cols] -> list of (title, 2-d array)."""
    arr = np.asarray(result, np.float64)
    if arr.ndim == 2:
        return [(None, arr)]
    if arr.ndim != 3:
        raise ValueError(f"a heatmap needs a 2-d result (or 3-d for several panels); got shape "
                         f"{arr.shape} — index it down first, e.g. result[:, :, 0]")
    titles = list(panel_titles or (EVERY_TITLES if len(arr) == 5 else range(len(arr))))
    return list(zip(titles, arr))


def save_heatmap(result, path, labels: Optional[Sequence[Sequence[str]]] = None,
                 panel_titles: Optional[Sequence[str]] = None, title: str = "",
                 axis_names: Sequence[str] = ("layer", "position")) -> Path:
    """Write `result` ([rows, cols], or [panels, rows, cols] such as the `_every` sweeps) as a
    heatmap to `path`: PNG for `.png`, an HTML table for `.html`.

    labels: (row labels, column labels), e.g. from `axis_labels`; axis_names name the axes.
    """
    path = Path(path)
    panels = _panels(result, panel_titles)
    rows, cols = panels[0][1].shape
    rlab, clab = labels if labels is not None else ([str(i) for i in range(rows)],
                                                    [str(i) for i in range(cols)])
    if (len(rlab), len(clab)) != (rows, cols):
        raise ValueError(f"labels have {len(rlab)} rows x {len(clab)} columns but the result is "
                         f"{rows} x {cols}")
    limit = max(float(np.nanmax(np.abs(a))) for _, a in panels) or 1.0
    if path.suffix == ".png":
        _png(panels, path, rlab, clab, limit, title, axis_names)
    elif path.suffix in (".html", ".htm"):
        _html(panels, path, rlab, clab, limit, title, axis_names)
    else:
        raise ValueError(f"save_heatmap writes .png or .html files, not {path.suffix or path.name!r}")
    return path


def _png(panels, path, rlab, clab, limit, title, axis_names):
    fig = panels_figure(panels, xlabel=axis_names[1], ylabel=axis_names[0], title=title,
                        label="metric", limit=limit, row_labels=rlab, col_labels=clab)
    save_png(fig, path, dpi=120)


def _html(panels, path, rlab, clab, limit, title, axis_names):
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'>",
             "<style>table{border-collapse:collapse;font:12px sans-serif;margin:1em 0}"
             "td,th{padding:3px 6px;text-align:right}th{background:#eee}</style>"]
    if title:
        parts.append(f"<h2>{esc(title)}</h2>")
    parts.append(f"<p>Colour: {esc(legend('metric'))}; full colour at |value| = {limit:.4g}.</p>")
    for name, arr in panels:
        if name is not None:
            parts.append(f"<h3>{esc(str(name))}</h3>")
        head = "".join(f"<th>{esc(c)}</th>" for c in clab)
        parts.append(f"<table><tr><th>{esc(axis_names[0])} \\ {esc(axis_names[1])}</th>{head}</tr>")
        for r, row in zip(rlab, arr):
            cells = "".join(f"<td style='background:{css_colour(v, limit)}' title='{v:.6g}'>{v:.3f}</td>"
                            for v in row)
            parts.append(f"<tr><th>{esc(r)}</th>{cells}</tr>")
        parts.append("</table>")
    path.write_text("\n".join(parts), encoding="utf-8")
