"""`decode_layout` (per-layer, 2D-flattened weights for the generation loop) is the same model:
every activation and the logits equal the stacked layout's, in both 2D orders, for every family
config, with and without a key/value cache."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for

import jtlens
from jtlens.decode_layout import FlatMatrix, decode_layout


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("input_last", [False, True])
def test_every_activation_equals_the_stacked_layout(name, input_last):
    cfg, params = to_jtlens(tl_model(CONFIGS[name]))
    tokens = tokens_for(cfg)
    ref_logits, ref = jtlens.forward_with_cache(params, tokens, cfg)
    logits, cache = jtlens.forward_with_cache(decode_layout(params, input_last), tokens, cfg)
    assert max_diff(logits, ref_logits) <= 1e-5
    assert set(cache.keys()) == set(ref.keys())
    worst = max((max_diff(cache[k], ref[k]), k) for k in ref.keys())
    assert worst[0] <= 1e-5, worst


@pytest.mark.parametrize("input_last", [False, True])
@pytest.mark.slow
def test_hooks_and_the_kv_cache_work_on_the_decode_layout(input_last):
    """Edits that make attention take per-head inputs or return per-head results read the
    flattened weights back in the forward's layout; a cached step equals the stacked one."""
    cfg, params = to_jtlens(tl_model(dict(CONFIGS["llama"], use_split_qkv_input=False,
                                          use_attn_result=False)))
    flat = decode_layout(params, input_last)
    tokens = tokens_for(cfg)
    hooks = jtlens.Hooks(add={"blocks.0.hook_q_input": 0.1, "blocks.1.attn.hook_result": 0.2})
    assert max_diff(jtlens.forward(flat, tokens, cfg, hooks),
                    jtlens.forward(params, tokens, cfg, hooks)) <= 1e-5
    outs = []
    for p in (params, flat):
        kv = jtlens.KeyValueCache.init(cfg, tokens.shape[0], tokens.shape[1])
        _, kv = jtlens.forward_with_kv(p, tokens[:, :-1], cfg, kv, hooks)
        outs.append(jtlens.forward_with_kv(p, tokens[:, -1:], cfg, kv, hooks)[0])
    assert max_diff(*outs) <= 1e-5


def test_flat_matrix_round_trips_and_multiplies_like_the_stored_weight():
    w = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)  # W_O-like [h, e, m]
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    for input_last in (False, True):
        m = FlatMatrix.of(w, (0, 1), input_last)
        assert m.w.shape == ((5, 12) if input_last else (12, 5))
        np.testing.assert_array_equal(m.unflattened(), w)
        np.testing.assert_allclose(m(x), np.einsum("bhe,hem->bm", x, w), rtol=1e-5, atol=1e-6)
        assert jax.tree_util.tree_leaves(m)[0] is m.w  # a pytree whose one leaf is the matrix


@pytest.mark.slow
def test_a_per_layer_cache_extends_like_the_stacked_one():
    cfg, params = to_jtlens(tl_model(CONFIGS["llama"]))
    tokens = tokens_for(cfg)
    stacked = jtlens.KeyValueCache.init(cfg, tokens.shape[0], tokens.shape[1])
    per_layer = stacked.per_layer()
    assert (per_layer.n_layers, per_layer.batch, per_layer.max_len) == (cfg.n_layers, *tokens.shape)
    for chunk in (slice(0, 7), slice(7, 8), slice(8, None)):
        ref, stacked = jtlens.forward_with_kv(params, tokens[:, chunk], cfg, stacked)
        out, per_layer = jtlens.forward_with_kv(params, tokens[:, chunk], cfg, per_layer)
        assert isinstance(per_layer.k, tuple) and max_diff(out, ref) <= 1e-5
    back = per_layer.stacked()
    # scan vs unrolled layers: the same sums in another order
    assert max_diff(back.k, stacked.k) <= 1e-5 and max_diff(back.v, stacked.v) <= 1e-5
    assert int(back.length) == tokens.shape[1]
