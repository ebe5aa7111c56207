"""A mixture-of-experts HookedTransformer: TransformerLens's MoE hooks in its cache, and the
dense and gather dispatch modes give the same logits end to end."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.core.config import Config

E, K, D, M = 4, 2, 16, 8


@pytest.mark.slow
def test_moe_model_exposes_tl_hooks_and_dispatch_modes_agree():
    cfg = Config(n_layers=2, d_model=D, n_ctx=8, d_head=4, d_mlp=M, d_vocab=11, act_fn="silu",
                 gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
                 num_experts=E, experts_per_token=K)
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.arange(14).reshape(2, 7) % 11
    logits, cache = jtlens.HookedTransformer(cfg, params).run_with_cache(tokens)
    assert cache["blocks.1.mlp.hook_expert_weights"].shape == (14, E)
    assert cache["blocks.1.mlp.hook_expert_indices"].shape == (14, K)
    gather = jtlens.HookedTransformer(dataclasses.replace(cfg, moe_dispatch="gather"), params)
    np.testing.assert_allclose(gather(tokens), logits, rtol=1e-5, atol=1e-5)
