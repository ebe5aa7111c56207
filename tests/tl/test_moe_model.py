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


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mixtral_like", "gpt_oss_like"])
def test_moe_state_dict_and_fold_ln_as_transformer_lens(family):
    """TransformerLens's MoE state dict (router mlp.W_gate, nn.Linear experts, GPT-OSS's biases
    and sinks) round-trips, and fold_layer_norm folds ln2 into the router and every expert as
    TransformerLens does."""
    from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

    torch.set_num_threads(1)
    tl = tl_model(CONFIGS[family])
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    theirs = {k: v.numpy() for k, v in tl.state_dict().items()
              if not k.endswith(("IGNORE", ".mask", "rotary_sin", "rotary_cos"))
              and k != "pos_embed.W_pos"}
    ours = model.state_dict()
    assert "blocks.1.mlp.experts.3.W_out.weight" in ours and set(ours) == set(theirs)
    assert all(max_diff(ours[k], theirs[k]) == 0 for k in theirs)
    folded = model.fold_layer_norm(model.state_dict())
    # (RMS: TransformerLens folds without centring or biases only when told so)
    ref = tl.fold_layer_norm({k: v.clone() for k, v in tl.state_dict().items()},
                             fold_biases=False, center_weights=False)
    for k in folded:
        assert max_diff(folded[k], ref[k].numpy()) <= 1e-6, k
    # (jtlens leaves value biases under attention sinks; TransformerLens must be told to)
    tl.load_and_process_state_dict({k: v.clone() for k, v in tl.state_dict().items()},
                                   fold_value_biases=not cfg.use_attention_sinks)
    model.process_weights_()
    tokens = tokens_for(cfg, pos=6)
    with torch.no_grad():
        assert max_diff(model(tokens), tl(torch.as_tensor(np.asarray(tokens))).numpy()) <= 1e-4


@pytest.mark.slow
def test_shared_expert_hooks_and_state_dict_round_trip():
    """Qwen2-MoE's shared expert: its hooks over all tokens, and its weights in the flat state
    dict (nn.Linear layout) and back."""
    from jtlens.conversions.transformer_lens import params_from_state_dict

    S = 6
    cfg = Config(n_layers=2, d_model=D, n_ctx=8, d_head=4, d_mlp=M, d_vocab=11, act_fn="silu",
                 gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
                 num_experts=E, experts_per_token=K, shared_expert_d_mlp=S)
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    model = jtlens.HookedTransformer(cfg, params)
    _, cache = model.run_with_cache(jnp.arange(14).reshape(2, 7) % 11)
    assert cache["blocks.1.mlp.shared_expert.hook_post"].shape == (14, S)
    weight = np.asarray(cache["blocks.1.mlp.hook_shared_expert_weight"])
    assert weight.shape == (14, 1) and ((weight > 0) & (weight < 1)).all()
    state = model.state_dict()
    assert state["blocks.1.mlp.shared_expert.W_in.weight"].shape == (S, D)
    assert state["blocks.1.mlp.shared_expert_gate.weight"].shape == (1, D)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                           params_from_state_dict(state, cfg))  # (same tree, same values)
