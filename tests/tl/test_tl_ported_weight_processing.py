"""TransformerLens 3.x's `ProcessWeights` static API (tests/unit/test_weight_processing.py), ported
(see tests/tl_port.py): each step on the same complete state dict, TransformerLens 3.9's result
against jtlens's. TL's unit tests also feed partial state dicts, Mock configs and private helpers
(`_fold_layer`); jtlens converts state dicts strictly (every tensor of the config, no more), so
those cases are not ported. The gated-MLP case uses RMSNorm: behind a LayerNorm with a bias,
jtlens refuses fold_ln (a gated MLP has no b_gate to take the folded bias) where TL folds it into
b_in only."""

import numpy as np
import pytest

from jtlens.weight_processing import ProcessWeights
from tests.oracle import CONFIGS, tl_model, torch

VARIANTS = {
    "basic": dict(n_layers=2, d_model=8, d_head=2, n_heads=4, d_mlp=16, n_ctx=50, d_vocab=100,
                  act_fn="relu", normalization_type="LN"),
    "attn_only": dict(n_layers=2, d_model=8, d_head=2, n_heads=4, n_ctx=50, d_vocab=100,
                      act_fn="relu", normalization_type="LN", attn_only=True),
    "gated_mlp": dict(n_layers=2, d_model=8, d_head=2, n_heads=4, d_mlp=16, n_ctx=50, d_vocab=100,
                      act_fn="silu", normalization_type="RMS", gated_mlp=True),
    "gqa_rms": CONFIGS["llama"],
}


def _reference(name):
    tl = tl_model(VARIANTS[name])
    return tl.cfg, {k: v for k, v in tl.state_dict().items() if not k.endswith(("IGNORE", ".mask", "rotary_sin", "rotary_cos"))}


def _compare(ours, theirs):
    theirs = {k: v for k, v in theirs.items() if not k.endswith(("IGNORE", ".mask", "rotary_sin", "rotary_cos"))}
    # Folded norms: TL 3.9's ProcessWeights leaves them as identities (w = 1, b = 0); jtlens drops
    # them (the config's norm becomes LNPre / RMSPre), as HookedTransformer's processing does.
    for k in set(theirs) - set(ours):
        assert ".ln" in k or k.startswith("ln_final"), k
        want = 1.0 if k.endswith(".w") else 0.0
        assert (theirs[k].detach().numpy() == want).all(), k
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    for k in ours:
        np.testing.assert_allclose(np.asarray(ours[k]), theirs[k].detach().numpy(), atol=1e-5,
                                   err_msg=k)


STEPS = ["fold_layer_norm", "center_writing_weights", "fold_value_biases", "process_weights"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_matches_transformer_lens(variant, step):
    from transformer_lens.weight_processing import ProcessWeights as TLProcessWeights

    cfg, sd = _reference(variant)
    # TL folds an RMSNorm with fold_biases=False, center_weights=False (its docstring's usage;
    # its defaults would centre RMS readers and change the model)
    kw = dict(fold_biases=False, center_weights=False) if step == "fold_layer_norm" and \
        cfg.normalization_type == "RMS" else {}
    with torch.no_grad():
        theirs = getattr(TLProcessWeights, step)({k: v.clone() for k, v in sd.items()}, cfg, **kw)
    _compare(getattr(ProcessWeights, step)(sd, cfg, **kw), theirs)


def test_center_unembed_matches_transformer_lens():
    from transformer_lens.weight_processing import ProcessWeights as TLProcessWeights

    _, sd = _reference("basic")
    with torch.no_grad():
        theirs = TLProcessWeights.center_unembed({k: v.clone() for k, v in sd.items()})
    _compare(ProcessWeights.center_unembed(sd), theirs)


def test_refactor_factored_attn_matrices_keeps_the_products():
    # TL's factors are one balanced choice among many; the products QK and OV are what must hold.
    cfg, sd = _reference("basic")
    out = ProcessWeights.refactor_factored_attn_matrices(sd, cfg)
    for l in range(cfg.n_layers):
        for a, b in (("W_Q", "W_K"), ("W_V", "W_O")):
            A, B = (sd[f"blocks.{l}.attn.{n}"].numpy() for n in (a, b))
            A2, B2 = (np.asarray(out[f"blocks.{l}.attn.{n}"]) for n in (a, b))
            prod = (lambda x, y: x @ y.swapaxes(-1, -2)) if b == "W_K" else (lambda x, y: x @ y)
            np.testing.assert_allclose(prod(A2, B2), prod(A, B), atol=1e-5)
