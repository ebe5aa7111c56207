"""The report's SAE section (`jtlens run --sae PATH`): per token of the text the most active
features at the SAE's hook, and the dashboards of the text's most active features over a slice
of an offline corpus (`jtlens.sparse.corpus_tokens`), also written as feature_dashboards.html.
"""

from __future__ import annotations

import html
import pathlib

import numpy as np

from jtlens.core.tokens import bos_id
from jtlens.experiments.sparse.activations import context_windows
from jtlens.experiments.sparse.corpus import corpus_tokens
from jtlens.experiments.sparse.dashboards import dashboard_data
from jtlens.experiments.sparse.features import feature_acts
from jtlens.report.feature_dashboard import feature_dashboard_html, write_feature_dashboards

PAGE = "feature_dashboards.html"


def sae_analysis(model, tokens, sae, out, corpus: str = "docstrings", n_windows: int = 256,
                 n_features: int = 3, per_token: int = 5, skip: int = 0,
                 progress: bool = False) -> dict:
    """The SAE's features on tokens [1, pos]: top_ids / top_acts [pos, per_token] (zeros where
    fewer fire), the `n_features` with the largest activation (positions before `skip` left
    out, as the report leaves BOS out), and their dashboards over `n_windows` corpus windows,
    written to `out`/feature_dashboards.html."""
    acts = np.asarray(feature_acts(model.params, tokens, model.cfg, sae))[0]      # [pos, d_sae]
    top_ids = np.argsort(-acts, -1, kind="stable")[:, :per_token]
    peak = acts[skip:].max(0)
    features = [int(f) for f in np.argsort(-peak, kind="stable")[:n_features] if peak[f] > 0]
    bos = bos_id(model.tokenizer)
    width = min(64, model.cfg.n_ctx) - 1  # each window is BOS + width corpus tokens
    stream = corpus_tokens(corpus, model.tokenizer, bos, max_tokens=n_windows * width)
    windows = context_windows(stream, width)
    windows = np.concatenate([np.full((len(windows), 1), bos, np.int32), windows], 1)
    data = (dashboard_data(model.params, model.cfg, sae, windows, features, ignore_token=bos,
                           progress=progress) if features else [])
    page = write_feature_dashboards(data, model.tokenizer, pathlib.Path(out) / PAGE,
                                    f"SAE features at {sae.cfg.metadata.hook_name}")
    return dict(hook=sae.cfg.metadata.hook_name, d_sae=sae.cfg.d_sae,
                str_tokens=model.to_str_tokens(tokens[0]), top_ids=top_ids,
                top_acts=np.take_along_axis(acts, top_ids, -1), features=features,
                peaks=[float(peak[f]) for f in features], corpus=corpus,
                n_windows=len(windows), page=page,
                dashboards="".join(feature_dashboard_html(d, model.tokenizer) for d in data))


def sae_summary(r: dict) -> str:
    """One line for the terminal."""
    feats = ", ".join(f"{f} ({v:.3f})" for f, v in zip(r["features"], r["peaks"])) or "none"
    return (f"SAE features at {r['hook']}: most active {feats}; dashboards over {r['n_windows']} "
            f"{r['corpus']} windows -> {r['page']}")


def sae_html(r: dict) -> str:
    """The report section."""
    rows = []
    for i, tok in enumerate(r["str_tokens"]):
        feats = "; ".join(f"{f}: {v:.3f}" for f, v in zip(r["top_ids"][i], r["top_acts"][i]) if v > 0)
        rows.append(f"<tr><td>{i}</td><td>{html.escape(repr(tok))}</td><td>{feats}</td></tr>")
    return (f"<h2>SAE features at {html.escape(r['hook'])}</h2><p>The most active of its "
            f"{r['d_sae']} features at each token (feature: activation).</p><table><tr><th>pos</th>"
            f"<th>token</th><th>top features</th></tr>{''.join(rows)}</table>"
            f"<p>Dashboards of the text's most active features over {r['n_windows']} windows of "
            f"the {html.escape(r['corpus'])} corpus (also in <a href=\"{PAGE}\">{PAGE}</a>).</p>"
            + r["dashboards"])
