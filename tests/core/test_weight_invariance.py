"""Weight processing never changes a model's log-probs, family by family.

This tests the invariant itself, not parity with TransformerLens. TransformerLens 3.9 breaks it
twice, and jtlens skips the step in both cases: it centres the writing weights (and W_U) of
LayerNorm models with an RMS ln_final (`final_rms=True`: up to 2 nats on these random models),
and it centres the unembed under an output logit soft-cap (gemma2: 7e-3 nats here).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens import weights
from tests.oracle import CONFIGS

FAMILIES = {name: jtlens.Config(**{**c, "d_model": 32, "n_ctx": 16, "d_head": 8, "d_vocab": 50})
            for name, c in CONFIGS.items()}
for _norm, _final_rms in itertools.product(("LN", "LNPre", "RMS", "RMSPre", None), (False, True)):
    FAMILIES[f"norm_{_norm}_final_rms_{_final_rms}"] = jtlens.Config(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, d_vocab=50, act_fn="gelu_new",
        normalization_type=_norm, final_rms=_final_rms)

pytestmark = pytest.mark.slow  # 20 families x 4 step sets: minutes on a shared 2-core machine

FAMILIES["shortformer"] = jtlens.Config(**{**CONFIGS["gpt2"], "d_model": 32, "n_ctx": 16, "d_head": 8,
                                          "d_vocab": 50, "positional_embedding_type": "shortformer"})
FAMILIES["solu_ln"] = jtlens.Config(**{**CONFIGS["gpt2"], "d_model": 32, "n_ctx": 16, "d_head": 8,
                                      "d_vocab": 50, "act_fn": "solu_ln"})

# A LayerNorm mixture of experts (no family has one): its norms stay, its writing weights centre.
FAMILIES["moe_ln"] = jtlens.Config(**{**CONFIGS["mixtral_like"], "d_model": 32, "n_ctx": 16,
                                     "d_head": 8, "d_vocab": 50, "normalization_type": "LN",
                                     "final_rms": False})

# Qwen2-MoE's shared expert and its sigmoid gate read ln2 too, and write to the residual.
FAMILIES["moe_shared_expert"] = jtlens.Config(**{**CONFIGS["mixtral_like"], "d_model": 32, "n_ctx": 16,
                                                "d_head": 8, "d_vocab": 50, "shared_expert_d_mlp": 24})

STEPS = {"all": {}, "no_center_writing": dict(center_writing_weights=False),
         "no_fold_ln": dict(fold_ln=False), "refactor": dict(refactor_factored_attn_matrices=True)}


def _random_params(cfg, seed=0):
    """init_params with every leaf (norm weights and biases included) perturbed."""
    leaves, treedef = jax.tree_util.tree_flatten(jtlens.init_params(cfg, jax.random.PRNGKey(seed)))
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _log_probs(params, cfg, tokens):
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return np.asarray(jax.nn.log_softmax(jtlens.forward(params, tokens, cfg), -1), np.float64)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processing_keeps_log_probs(family):
    cfg = FAMILIES[family]
    params = _random_params(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.d_vocab, (2, 12)))
    before = _log_probs(params, cfg, tokens)
    for steps, flags in STEPS.items():
        if flags.get("refactor_factored_attn_matrices") and (
                cfg.positional_embedding_type == "rotary" or cfg.n_kv_heads != cfg.n_heads):
            continue  # rejected for rotary / grouped-query models (tested in test_weight_processing)
        after = _log_probs(weights.process(params, cfg, **flags),
                           weights.processed_config(cfg, **flags), tokens)
        # f32 rounding of sums the steps reorder, relative to the log-probs' own size.
        worst = np.abs(after - before).max()
        assert worst <= 1e-5 * max(1.0, np.abs(before).max()), (steps, worst)
