"""TransformerLens behaviours the facade keeps: out-of-range indices raise, a no-op hook leaves
the numbers alone, caches slice like TransformerLens's, and traced metrics fail with a lesson."""

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens import patching
from jtlens.utils import Slice
from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch


@pytest.mark.parametrize("index", [(3,), (0, 4), (-4,), (..., 6), (0, np.array([1, 4]))])
def test_factored_matrix_index_out_of_range_raises_like_transformer_lens(index):
    from transformer_lens import FactoredMatrix as TLFactoredMatrix

    A = np.random.default_rng(0).normal(size=(3, 4, 6, 2)).astype(np.float32)
    B = np.random.default_rng(1).normal(size=(3, 4, 2, 6)).astype(np.float32)
    with pytest.raises(IndexError):
        TLFactoredMatrix(torch.as_tensor(A), torch.as_tensor(B))[index]
    with pytest.raises(IndexError):
        jtlens.FactoredMatrix(A, B)[index]


def test_factored_matrix_row_index_out_of_range_raises():
    # TransformerLens turns a row index into a one-row range, so row 6 of 6 gives an empty
    # matrix there; jtlens raises instead of returning an empty product.
    fm = jtlens.FactoredMatrix(np.ones((3, 4, 6, 2)), np.ones((3, 4, 2, 6)))
    with pytest.raises(IndexError, match="axis 2 of size 6"):
        fm[0, 0, 6]


def test_factored_matrix_in_range_indexing_matches_transformer_lens():
    from transformer_lens import FactoredMatrix as TLFactoredMatrix

    A = np.random.default_rng(0).normal(size=(3, 4, 6, 2)).astype(np.float32)
    B = np.random.default_rng(1).normal(size=(3, 4, 2, 6)).astype(np.float32)
    ours, theirs = jtlens.FactoredMatrix(A, B), TLFactoredMatrix(torch.as_tensor(A), torch.as_tensor(B))
    for index in [(2,), (-1, 3), (1, 2, 0), (0, 0, slice(1, 3), 5)]:
        assert max_diff(ours[index].AB, theirs[index].AB.numpy()) <= 1e-5, index


def test_slice_out_of_range_raises():
    with pytest.raises(IndexError, match="out of range"):
        Slice(7).apply(jnp.ones((2, 3)), dim=-1)
    with pytest.raises(IndexError):
        Slice([0, 3]).apply(jnp.ones((2, 3)), dim=0)


@pytest.fixture(scope="module")
def pair():
    tl = tl_model(dict(CONFIGS["gpt2"], use_attn_result=False, use_split_qkv_input=False,
                       use_hook_mlp_in=False))
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params)


@pytest.mark.slow
def test_run_with_cache_pos_slice_matches_transformer_lens(pair):
    tl, model = pair
    tokens = tokens_for(model.cfg)
    for pos_slice in (-1, (2, 5)):
        with torch.no_grad():
            _, ref = tl.run_with_cache(torch.as_tensor(np.asarray(tokens)), pos_slice=pos_slice)
        _, cache = model.run_with_cache(tokens, pos_slice=pos_slice)
        assert set(cache.keys()) == set(ref.keys())
        for k in ref.keys():
            assert max_diff(cache[k], ref[k].numpy()) <= 1e-4, (pos_slice, k)


@pytest.mark.slow
def test_cache_batch_slices_dict_device_and_autodiff(pair):
    _, model = pair
    tokens = tokens_for(model.cfg, batch=3)
    _, cache = model.run_with_cache(tokens)
    one = cache.apply_slice_to_batch_dim(Slice((1, 3)))
    assert one["blocks.0.attn.hook_z"].shape[0] == 2
    assert max_diff(one["hook_embed"], cache["hook_embed"][1:3]) == 0
    with pytest.raises(IndexError):
        cache.apply_slice_to_batch_dim(3)
    assert set(cache.cache_dict) == set(cache.keys())
    assert cache.to("cpu") is cache
    cache.toggle_autodiff(True)


def test_a_no_op_hook_gives_the_plain_run_numbers(pair):
    _, model = pair
    tokens = tokens_for(model.cfg)
    seen = []
    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre",
                                                      lambda x, hook: seen.append(x) or x)])
    # The hook ran on the concrete activation, as TransformerLens's do.
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    assert len(seen) == 1 and np.array_equal(np.asarray(seen[0]), cache["blocks.0.hook_resid_pre"])
    # The hooked point is a callback inside the compiled forward: XLA fuses and reorders
    # reductions on either side of it, so the numbers agree with the plain jitted call and the
    # eager layer-by-layer one to f32 rounding, about 1e-6 relative to the logits on these
    # models (README, "Coming from TransformerLens").
    jitted = model(tokens)
    eager = jtlens.forward(model.params, tokens, model.cfg, scan=False)
    for other in (jitted, eager):
        assert max_diff(other, hooked) <= 1e-5 * float(jnp.abs(jitted).max())


@pytest.mark.slow
def test_a_traced_metric_that_calls_item_gets_a_lesson(pair):
    _, model = pair
    tokens = tokens_for(model.cfg, batch=1, pos=4)
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(TypeError, match="patching_metric is traced"):
        patching.get_act_patch_resid_pre(model, tokens, cache, lambda logits: logits[0, -1, 0].item())
