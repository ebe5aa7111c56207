"""The report's figures as SVG text: heatmaps and bar charts in `heatmap`'s colour convention.

Drawing the run's figures with matplotlib (its import, two drawing passes per PNG for a tight
bounding box) took 1.5-1.9 s of a 7 s `jtlens run`; the same pictures as SVG are strings built in
milliseconds, sharp at any zoom, and every cell says its value on hover.

    svg = heatmap_svg(values, xlabel="head", ylabel="layer", title="induction score", signed=False)
"""

from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np

from jtlens.report.heatmap import BLUE, RED, _ticks, css_colour, full_scale, legend

_FONT = 'font-family="sans-serif"'
_CHAR = 6.2  # px per character at font-size 10, for margins sized to the labels


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _labels(n: int, labels: Optional[Sequence[str]]) -> list[str]:
    """n tick labels, thinned as matplotlib's axes are (`heatmap._ticks`; the others blank)."""
    at, kept = _ticks(n, labels)
    out = [""] * n
    for i, t in zip(at, kept):
        out[i] = t
    return out


def _colour_key(x: float, y: float, width: float, limit: float, signed: bool, label: str) -> str:
    """A horizontal colour bar from -limit (or 0) to +limit, with its legend underneath."""
    stops = ([(0, BLUE), (50, (255, 255, 255)), (100, RED)] if signed
             else [(0, (255, 255, 255)), (100, RED)])
    gid = "jtl-key-signed" if signed else "jtl-key-unsigned"  # the same gradient wherever used
    grad = "".join(f'<stop offset="{o}%" stop-color="rgb{c}"/>' for o, c in stops)
    low = f"{-limit:.3g}" if signed else "0"
    return (f'<defs><linearGradient id="{gid}">{grad}</linearGradient></defs>'
            f'<rect x="{x}" y="{y}" width="{width}" height="10" fill="url(#{gid})" stroke="#999"/>'
            f'<text x="{x}" y="{y + 22}" font-size="10" {_FONT}>{low}</text>'
            f'<text x="{x + width}" y="{y + 22}" font-size="10" text-anchor="end" {_FONT}>'
            f'{limit:.3g}</text>'
            f'<text x="{x}" y="{y + 36}" font-size="10" {_FONT}>{_esc(legend(label, signed))}</text>')


def heatmap_svg(values, *, xlabel: str, ylabel: str, title: str = "", label: str = "",
                signed: bool = True, limit: Optional[float] = None,
                row_labels: Optional[Sequence[str]] = None,
                col_labels: Optional[Sequence[str]] = None, cell: Optional[float] = None) -> str:
    """`values` [rows, cols] as an SVG heatmap with labelled axes, a colour key and a hover
    title per cell. signed: symmetric about zero (red positive, blue negative), else white (0)
    to red; limit: the value at full colour (default as in `heatmap.draw`)."""
    arr = np.asarray(values, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-d array; got shape {arr.shape}")
    rows, cols = arr.shape
    limit = full_scale([arr], signed, limit)
    ylab, xlab = _labels(rows, row_labels), _labels(cols, col_labels)
    w = cell or max(6.0, min(26.0, 620.0 / max(cols, 1)))
    h = cell or max(6.0, min(20.0, 560.0 / max(rows, 1)))
    left = 22 + _CHAR * max((len(t) for t in ylab), default=1)
    top = 28 if title else 10
    rotated = max((len(t) for t in xlab), default=0) > 3
    below = (_CHAR * max(len(t) for t in xlab) + 10) if rotated and cols else 16
    width = max(left + cols * w + 12, left + _CHAR * len(legend(label, signed)) + 12,
                _CHAR * 1.2 * len(title) + 16)
    height = top + rows * h + below + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}">']
    if title:
        centre = min(max(left + cols * w / 2, _CHAR * 0.6 * len(title) + 8),
                     width - _CHAR * 0.6 * len(title) - 8)  # centred on the cells, never cut
        out.append(f'<text x="{centre:.1f}" y="16" font-size="12" text-anchor="middle" '
                   f'{_FONT}>{_esc(title)}</text>')
    for r in range(rows):
        for c in range(cols):
            v = arr[r, c]
            out.append(f'<rect x="{left + c * w:.1f}" y="{top + r * h:.1f}" width="{w:.1f}" '
                       f'height="{h:.1f}" fill="{css_colour(v, limit, signed)}"><title>'
                       f'{_esc(ylabel)} {_esc(ylab[r] or r)}, {_esc(xlabel)} {_esc(xlab[c] or c)}: '
                       f'{v:.4g}</title></rect>')
    out.append(f'<rect x="{left}" y="{top}" width="{cols * w:.1f}" height="{rows * h:.1f}" '
               f'fill="none" stroke="#999"/>')
    font = min(10.0, max(6.0, min(w, h) - 1))
    for r, t in enumerate(ylab):
        if t:
            out.append(f'<text x="{left - 4}" y="{top + (r + 0.5) * h + font / 3:.1f}" '
                       f'font-size="{font:.0f}" text-anchor="end" {_FONT}>{_esc(t)}</text>')
    for c, t in enumerate(xlab):
        if not t:
            continue
        x, y = left + (c + 0.5) * w, top + rows * h + 4
        turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotated else ""
        anchor = "end" if rotated else "middle"
        out.append(f'<text x="{x:.1f}" y="{y + (font / 3 if rotated else font):.1f}" '
                   f'font-size="{font:.0f}" text-anchor="{anchor}"{turn} {_FONT}>{_esc(t)}</text>')
    out.append(f'<text x="{left + cols * w / 2:.1f}" y="{top + rows * h + below + 6:.1f}" '
               f'font-size="11" text-anchor="middle" {_FONT}>{_esc(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="12" y="{top + rows * h / 2:.1f}" font-size="11" text-anchor="middle" '
                   f'transform="rotate(-90 12 {top + rows * h / 2:.1f})" {_FONT}>{_esc(ylabel)}</text>')
    out.append(_colour_key(left, top + rows * h + below + 14, min(240.0, max(120.0, cols * w)),
                           limit, signed, label))
    return "".join(out) + "</svg>"


def bars_svg(values, *, xlabel: str, ylabel: str, title: str = "") -> str:
    """Horizontal bars, one per row (row 0 on top), red for positive and blue for negative."""
    vals = np.asarray(values, np.float64).reshape(-1)
    n, h, span, left = len(vals), max(6.0, min(20.0, 560.0 / max(len(vals), 1))), 260.0, 40
    peak = float(np.abs(vals[np.isfinite(vals)]).max()) if np.isfinite(vals).any() else 0.0
    scale = span / 2 / (peak or 1.0)
    top, mid = 28 if title else 10, left + span / 2
    width, height = left + span + 20, top + n * h + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}">']
    if title:
        out.append(f'<text x="{mid}" y="16" font-size="12" text-anchor="middle" {_FONT}>'
                   f'{_esc(title)}</text>')
    font = min(10.0, max(6.0, h - 1))
    for i, v in enumerate(vals):
        length = abs(v) * scale if np.isfinite(v) else 0.0
        x = mid if v >= 0 else mid - length
        colour = "rgb{}".format(RED if v >= 0 else BLUE)
        out.append(f'<rect x="{x:.1f}" y="{top + i * h + 1:.1f}" width="{length:.1f}" '
                   f'height="{max(h - 2, 1):.1f}" fill="{colour}"><title>{_esc(ylabel)} {i}: '
                   f'{v:.4g}</title></rect>')
        out.append(f'<text x="{left - 4}" y="{top + (i + 0.5) * h + font / 3:.1f}" '
                   f'font-size="{font:.0f}" text-anchor="end" {_FONT}>{i}</text>')
    out.append(f'<line x1="{mid}" y1="{top}" x2="{mid}" y2="{top + n * h}" stroke="#666"/>')
    for x, v in ((left, -peak), (mid, 0.0), (left + span, peak)):
        out.append(f'<text x="{x}" y="{top + n * h + 14}" font-size="10" text-anchor="middle" '
                   f'{_FONT}>{v:.3g}</text>')
    out.append(f'<text x="{mid}" y="{top + n * h + 32}" font-size="11" text-anchor="middle" '
               f'{_FONT}>{_esc(xlabel)}</text>')
    out.append(f'<text x="10" y="{top + n * h / 2:.1f}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 10 {top + n * h / 2:.1f})" {_FONT}>{_esc(ylabel)}</text>')
    return "".join(out) + "</svg>"


def figure(*svgs: str) -> str:
    """Several SVGs side by side (wrapping on narrow windows), as one HTML figure."""
    return ('<div style="display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start">'
            + "".join(svgs) + "</div>")


def svg_file(*svgs: str) -> str:
    """Several SVGs side by side as one standalone SVG file (each nested at its own offset)."""
    sizes = [(float(s.split('width="')[1].split('"')[0]), float(s.split('height="')[1].split('"')[0]))
             for s in svgs]
    width, height = sum(w for w, _ in sizes) + 12 * (len(svgs) - 1), max(h for _, h in sizes)
    parts, x = [], 0.0
    for s, (w, _) in zip(svgs, sizes):
        parts.append(s.replace("<svg ", f'<svg x="{x:.0f}" ', 1))
        x += w + 12
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}">'
            + "".join(parts) + "</svg>")
