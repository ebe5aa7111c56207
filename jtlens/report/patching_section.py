"""Activation patching for the report (`jtlens patch`, `jtlens run --corrupted`): the residual
stream and head-output sweeps, their heatmaps, a JSON record, and the HTML section.

The metric is the logit difference answer - wrong at the last position, scaled so that
0 = the corrupted run and 1 = the clean run.
"""

from __future__ import annotations

import html
import json
import pathlib

import numpy as np

from jtlens.report.figures import html_page, svg_figure
from jtlens.report.svg import heatmap_svg
from jtlens.tl import patching

METRIC = "(logit_diff - corrupted) / (clean - corrupted)"


def patching_analysis(model, clean, corrupted, answer: int, wrong: int, out,
                      texts=("", ""), names=("", ""), progress: bool = False) -> dict:
    """Patch clean activations into the corrupted run, one (layer, position) of resid_pre and one
    (layer, head) output at a time. Writes patch_resid_pre.svg, patch_heads.svg and
    patching.json into `out`; returns the record (sweeps [layer, pos] and [layer, head]).
    progress: a progress line per sweep (on a terminal)."""

    def logit_diff(logits):
        return logits[0, -1, answer] - logits[0, -1, wrong]

    clean_logits, clean_cache = model.run_with_cache(clean)
    clean_diff, corrupted_diff = float(logit_diff(clean_logits)), float(logit_diff(model(corrupted)))
    span = clean_diff - corrupted_diff
    if abs(span) < 1e-6:
        raise ValueError("the clean and corrupted prompts give the same logit difference; "
                         "nothing to patch")

    def metric(logits):
        return (logit_diff(logits) - corrupted_diff) / span

    resid = np.asarray(patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric,
                                                        progress=progress))
    heads = np.asarray(patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted, clean_cache, metric, progress=progress))
    toks = model.to_str_tokens(clean[0])
    r = dict(clean=texts[0], corrupted=texts[1], answer=names[0], wrong=names[1],
             clean_logit_diff=clean_diff, corrupted_logit_diff=corrupted_diff, metric=METRIC,
             tokens=toks, resid_pre=resid.tolist(), attn_head_out=heads.tolist())
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "patching.json").write_text(json.dumps(r, indent=1), encoding="utf-8")
    label = "metric: 1 = clean, 0 = corrupted"
    r["figures"] = svg_figure([heatmap_svg(
        resid, title="resid_pre patching", xlabel="position", ylabel="layer", label=label,
        col_labels=[f"{i} {t!r}" for i, t in enumerate(toks)])], out / "patch_resid_pre.svg",
        "residual stream patching") + svg_figure([heatmap_svg(
            heads, title="head output patching (all positions)", xlabel="head", ylabel="layer",
            label=label)], out / "patch_heads.svg", "head patching")
    return r


def top_heads(r: dict, k: int = 5) -> list[tuple[str, float]]:
    """The k heads whose clean output moves the metric most (by |value|), as ("L3H2", value)."""
    heads = np.asarray(r["attn_head_out"])
    order = np.argsort(-np.abs(heads), axis=None)[:k]
    return [(f"L{l}H{h}", float(heads[l, h])) for l, h in zip(*np.unravel_index(order, heads.shape))]


def patching_summary(r: dict) -> str:
    """Plain text: the two logit differences and the heads that matter."""
    return (f"logit diff {r['answer']!r} - {r['wrong']!r}: clean {r['clean_logit_diff']:.3f}, "
            f"corrupted {r['corrupted_logit_diff']:.3f}\n"
            "heads whose clean output moves the metric most (1 = clean restored, 0 = no change): "
            + ", ".join(f"{name} {v:+.2f}" for name, v in top_heads(r)))


def patching_html(r: dict) -> str:
    """The HTML section for a record (its two heatmaps inline)."""
    esc = html.escape
    best = ", ".join(f"{name} ({v:+.2f})" for name, v in top_heads(r))
    return (f"<h2>Activation patching</h2><p>Clean: <b>{esc(r['clean'])}</b><br>Corrupted: "
            f"<b>{esc(r['corrupted'])}</b></p><p>Logit difference {esc(repr(r['answer']))} - "
            f"{esc(repr(r['wrong']))} at the last position: clean {r['clean_logit_diff']:.3f}, "
            f"corrupted {r['corrupted_logit_diff']:.3f}. Each cell patches one clean activation "
            f"into the corrupted run; the metric is {esc(METRIC)} (1 = clean behaviour restored, "
            f"0 = none). Heads that matter most: {esc(best)}.</p>"
            + r["figures"])


def write_patching_page(r: dict, out) -> pathlib.Path:
    """A self-contained patching.html beside patching.json."""
    path = pathlib.Path(out) / "patching.html"
    path.write_text(html_page("jtlens patching", patching_html(r)), encoding="utf-8")
    return path
