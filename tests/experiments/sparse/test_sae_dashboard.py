"""Feature dashboards: the jitted top-k over corpus windows against brute force in numpy, the
histograms, the logit tables against W_dec @ W_U, and the HTML page."""

from __future__ import annotations

import html

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtlens import Hooks
from jtlens.core.forward import forward_with_cache
from jtlens.report.feature_dashboard import write_feature_dashboards
from jtlens.sparse import SAE, SAEConfig, context_windows, dashboard_data
from jtlens.sparse.dashboards import logit_effects
from jtlens.sparse.sae import param_shapes

HOOK = "blocks.1.hook_resid_pre"
FEATURES = [0, 5, 9, 17]
IGNORE = 3  # a token id standing in for BOS


def _sae(d_in, hook, seed=0):
    cfg = SAEConfig(d_in, 2 * d_in, "standard", metadata={"hook_name": hook})
    rng = np.random.default_rng(seed)
    params = {n: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.3)
              for n, s in param_shapes(cfg).items()}
    params["b_enc"] = params["b_enc"] - 0.4  # sparse enough that some features rarely fire
    return SAE(params, cfg)


@pytest.fixture(scope="module")
def setup(tiny):
    cfg, params, _ = tiny
    sae = _sae(cfg.d_model, HOOK)
    windows = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (37, 10), 0, cfg.d_vocab))
    data = dashboard_data(params, cfg, sae, windows, FEATURES, k=6, left=3, right=2, bins=7,
                          batch_size=8, ignore_token=IGNORE)
    _, cache = forward_with_cache(params, jnp.asarray(windows), cfg, Hooks(capture=[HOOK]),
                                  return_type=None)
    acts = np.array(sae.encode(cache[HOOK]))[..., FEATURES]                      # [n, P, F]
    acts[windows == IGNORE] = 0.0
    return cfg, params, sae, windows, data, acts


def test_top_contexts_equal_brute_force(setup):
    _, _, _, windows, data, acts = setup
    P = windows.shape[1]
    assert [d["feature"] for d in data] == FEATURES
    for f, d in enumerate(data):
        a = acts[..., f].ravel()
        order = np.argsort(-a, kind="stable")[:6]
        order = order[a[order] > 0]
        assert [(t["window"], t["pos"]) for t in d["top"]] == [divmod(int(i), P) for i in order]
        np.testing.assert_allclose([t["value"] for t in d["top"]], a[order], atol=1e-5, rtol=0)
        for t in d["top"]:
            lo, hi = max(0, t["pos"] - 3), min(P, t["pos"] + 3)
            np.testing.assert_array_equal(t["tokens"], windows[t["window"], lo:hi])
            np.testing.assert_allclose(t["acts"], acts[t["window"], lo:hi, f], atol=1e-5, rtol=0)
            assert t["acts"][t["centre"]] == pytest.approx(t["value"], abs=1e-5)


def test_histograms_count_every_active_position(setup):
    _, _, _, windows, data, acts = setup
    assert any(0 < (acts[..., f] > 0).sum() < acts[..., f].size / 2 for f in range(len(FEATURES)))
    for f, d in enumerate(data):
        active = acts[..., f][acts[..., f] > 0]
        assert d["hist_counts"].sum() == active.size and len(d["hist_counts"]) == 7
        assert d["density"] == pytest.approx(active.size / (windows != IGNORE).sum())
        if active.size:
            assert d["hist_edges"][-1] == pytest.approx(active.max(), abs=1e-5)


def test_logit_tables_are_W_dec_through_ln_final_and_W_U(setup):
    cfg, params, sae, _, data, _ = setup
    W = np.asarray(sae.W_dec)[FEATURES]
    if cfg.final_norm_type in ("LN", "LNPre"):
        W = W - W.mean(-1, keepdims=True)
    if "w" in params.get("ln_final", {}):
        W = W * np.asarray(params["ln_final"]["w"])
    want = W @ np.asarray(params["unembed"]["W_U"])                                # [F, d_vocab]
    for f, d in enumerate(data):
        up, up_w, down, down_w = d["logits"]
        np.testing.assert_array_equal(up, np.argsort(-want[f])[:6])
        np.testing.assert_array_equal(down, np.argsort(want[f])[:6])
        np.testing.assert_allclose(up_w, want[f][up], atol=1e-5, rtol=0)
        np.testing.assert_allclose(down_w, want[f][down], atol=1e-5, rtol=0)
    assert logit_effects(params, cfg, sae, FEATURES, hook_name="blocks.1.attn.hook_z") is None


@pytest.mark.slow
def test_dashboard_page_shows_the_contexts_and_tokens(shipped, tmp_path):
    tok = shipped.tokenizer
    sae = _sae(shipped.cfg.d_model, HOOK, seed=1)
    stream = shipped.to_tokens("Return a new list of the items. " * 12, prepend_bos=False)[0]
    data = dashboard_data(shipped.params, shipped.cfg, sae, context_windows(stream, 16), [1, 2],
                          k=3, batch_size=4)
    page = write_feature_dashboards(data, tok, tmp_path / "d.html").read_text(encoding="utf-8")
    assert "<script" not in page and page.count("data:image/png;base64,") == 2
    for d in data:
        assert f"<h3>Feature {d['feature']}</h3>" in page
        top = d["top"][0]
        centre = tok.decode([int(top["tokens"][top["centre"]])])
        assert f"<td>{html.escape(repr(centre))}</td>" in page
        boosted = tok.decode([int(d["logits"][0][0])])
        assert f"<td>{html.escape(repr(boosted))}</td>" in page
