"""ungroup_grouped_query_attention=True: hook_k / hook_v per query head, as TransformerLens 3.9."""

import numpy as np
import pytest

import jtlens
from tests.oracle import tl_model, to_jtlens, torch

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, n_key_value_heads=2, d_vocab=50,
           act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
           gated_mlp=True, ungroup_grouped_query_attention=True)


def test_ungrouped_hooks_and_logits_match_transformer_lens():
    reference = tl_model(CFG)
    model = jtlens.HookedTransformer(*to_jtlens(reference))
    assert model.cfg.ungroup_grouped_query_attention
    tokens = np.array([[1, 7, 3, 9, 4, 2]])
    with torch.no_grad():
        ref_logits, ref = reference.run_with_cache(torch.as_tensor(tokens))
    logits, cache = model.run_with_cache(tokens)
    for name in ("blocks.0.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_rot_k"):
        assert cache[name].shape == (1, 6, 4, 8) == tuple(ref[name].shape)
        np.testing.assert_allclose(np.asarray(cache[name]), ref[name].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), ref_logits.numpy(), atol=1e-4)


@pytest.mark.slow
def test_ungrouped_edit_of_one_head_reaches_only_that_head():
    # Heads 0 and 1 share kv head 0; ungrouped, an edit of head 1's values leaves head 0 alone.
    model = jtlens.HookedTransformer(jtlens.Config(**CFG))
    tokens = np.array([[1, 7, 3, 9]])
    _, clean = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_v", lambda v, hook: v.at[:, :, 1].set(0.0))]):
        _, edited = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    z0, z1 = np.asarray(clean["blocks.0.attn.hook_z"]), np.asarray(edited["blocks.0.attn.hook_z"])
    assert (z1[:, :, 1] == 0).all() and np.abs(z0[:, :, 1]).max() > 0
    # hook functions run eagerly, the clean run compiled: float32 rounding differs (1e-7)
    np.testing.assert_allclose(z1[:, :, [0, 2, 3]], z0[:, :, [0, 2, 3]], atol=1e-6)


def test_ungrouped_with_a_kv_cache_is_refused():
    model = jtlens.HookedTransformer(jtlens.Config(**CFG))
    with pytest.raises(ValueError, match="ungroup_grouped_query_attention=True with a KV cache"):
        model(np.array([[1, 2]]), past_kv_cache=jtlens.KeyValueCache.from_model(model, 1))
