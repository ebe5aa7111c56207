"""SAE metrics against SAELens's own evaluation functions (sae_lens.evals) on the same weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from tests.oracle import CONFIGS, tl_model, to_jtlens, tokens_for  # noqa: E402
from sae_lens import evals  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402

from jtlens import forward_with_cache  # noqa: E402
from jtlens.hooks import Hooks  # noqa: E402
from jtlens.sparse import SAE, SAEConfig  # noqa: E402
from jtlens.sparse.metrics import (dead_features, density_histogram, downstream_metrics,  # noqa: E402
                                   log_feature_sparsity, reconstruction_metrics)
from jtlens.sparse.sae import param_shapes  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


class _Store:
    """The one method of SAELens's ActivationsStore its eval functions call."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_batch_tokens(self, n):
        return self.tokens[:n]


@pytest.fixture(scope="module", params=["standard", "topk"])
def setup(request, tmp_path_factory):
    tl = tl_model(CONFIGS["gpt2"], seed=4)
    cfg, params = to_jtlens(tl)
    extra = {"k": 8} if request.param == "topk" else {}
    scfg = SAEConfig(cfg.d_model, 4 * cfg.d_model, request.param, metadata={"hook_name": HOOK}, **extra)
    rng = np.random.default_rng(0)
    sae = SAE({n: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.12)
               for n, s in param_shapes(scfg).items()}, scfg)
    folder = tmp_path_factory.mktemp("m")
    sae.save_model(folder / "s")
    return tl, cfg, params, sae, sae_lens.SAE.load_from_disk(str(folder / "s")), tokens_for(cfg, 4, 16)


@pytest.mark.slow
def test_sparsity_and_variance_match_saelens(setup):
    tl, cfg, params, sae, t_sae, toks = setup
    t_toks = torch.tensor(np.asarray(toks))
    with torch.no_grad():
        want, want_feat = evals.get_sparsity_and_variance_metrics(
            t_sae, tl, _Store(t_toks), ActivationScaler(), n_batches=1, compute_l2_norms=True,
            compute_sparsity_metrics=True, compute_variance_metrics=True,
            compute_featurewise_density_statistics=True, eval_batch_size_prompts=4, model_kwargs={})
    _, cache = forward_with_cache(params, toks, cfg, Hooks(capture=[HOOK]))
    got = reconstruction_metrics(sae, cache[HOOK])
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, got[k], v)
    np.testing.assert_allclose(got["feature_density"], want_feat["feature_density"], atol=1e-6)
    assert want["l0"] > 0 and want["mse"] > 0  # a real, lossy SAE


def test_ce_and_kl_scores_match_saelens(setup):
    tl, cfg, params, sae, t_sae, toks = setup
    t_toks = torch.tensor(np.asarray(toks))
    with torch.no_grad():
        want = evals.get_downstream_reconstruction_metrics(
            t_sae, tl, _Store(t_toks), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
            n_batches=1, eval_batch_size_prompts=4)
    got = downstream_metrics(params, toks, cfg, sae)
    assert want.keys() == got.keys()
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-4 * max(1.0, abs(v)), (k, got[k], v)


def test_density_helpers():
    density = np.array([0.0, 1e-9, 0.02, 0.5])
    np.testing.assert_array_equal(dead_features(density), [0, 1])
    np.testing.assert_allclose(log_feature_sparsity(density)[2:], np.log10(density[2:] + 1e-10))
    counts, edges = density_histogram(density, bins=4)
    assert counts.sum() == 4 and edges[0] == pytest.approx(-10.0)
