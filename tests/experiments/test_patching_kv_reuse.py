"""By-position sweeps that reuse the corrupted run's keys and values equal full recomputation."""

import dataclasses

import numpy as np
import pytest

import jtlens
import jtlens.patching as jp
from jtlens.patching import planning as P
from jtlens.patching import sweep as S
from tests.oracle import CONFIGS, tl_model, to_jtlens, tokens_for

SMALL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50)
# learned positions, rotary GQA, rotary + qk-norm, sliding window + soft-caps, ALiBi
FAMILIES = ["gpt2", "llama", "qwen3_like", "gemma2_like", "alibi_relu_attn_only"]
METRICS = {
    "last": lambda l: (l[:, -1, 3] - l[:, -1, 7]).mean(),   # reads the last position only
    "early": lambda l: (l[:, 1, 3] - l[:, 5, 2]).mean(),    # reads positions some runs skip
    "all": lambda l: (l ** 2).mean(),                       # reads every position
}


def _sweep_both(model, corrupted, cache, fn, metric):
    """(with reuse, without reuse) results of the sweep behind TransformerLens-named `fn`, flat."""
    cfg = model.cfg
    template = P.per_layer_template(cfg, fn.activation_name)
    assert S.reuse_column(cfg, template, fn.setter) is not None  # the reuse path really runs
    heads = cfg.n_kv_heads if template in ("attn.hook_k", "attn.hook_v") else cfg.n_heads
    sizes = {"layer": cfg.n_layers, "pos": corrupted.shape[1], "head": heads, "head_index": heads,
             "dest_pos": corrupted.shape[1]}
    rows = np.indices([sizes[a] for a in fn.index_axis_names]).reshape(len(fn.index_axis_names), -1).T
    return [S.activation_sweep(model.params, cfg, corrupted, cache[f"blocks.*.{template}"], metric,
                               template, fn.setter, rows, progress=False, reuse_kv=reuse)
            for reuse in (True, False)]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_reuse_equals_recomputation(family):
    cfg, params = to_jtlens(tl_model(dict(CONFIGS[family], **SMALL)))
    model = jtlens.HookedTransformer(cfg, params)
    clean, corrupted = tokens_for(cfg, pos=8, seed=1), tokens_for(cfg, pos=8, seed=2)
    _, cache = model.run_with_cache(clean)
    for fn, metrics in [(jp.get_act_patch_resid_pre, METRICS),
                        (jp.get_act_patch_attn_head_out_by_pos, ["last"])]:
        for name in metrics:
            reused, full = _sweep_both(model, corrupted, cache, fn, METRICS[name])
            assert np.abs(full).max() > 1e-3  # the sweep measures something
            assert np.abs(reused - full).max() <= 1e-5, (fn.__name__, name)


@pytest.mark.slow
@pytest.mark.parametrize("fn", [jp.get_act_patch_attn_head_k_by_pos, jp.get_act_patch_attn_head_pattern_by_pos,
                                jp.get_act_patch_resid_mid, jp.get_act_patch_mlp_out])
def test_reuse_equals_recomputation_other_by_pos_sweeps(fn):
    """Keys (written into the cached slots), patterns (query axis 2) and mid-block activations."""
    cfg, params = to_jtlens(tl_model(dict(CONFIGS["llama"], **SMALL)))
    model = jtlens.HookedTransformer(cfg, params)
    clean, corrupted = tokens_for(cfg, pos=8, seed=1), tokens_for(cfg, pos=8, seed=2)
    _, cache = model.run_with_cache(clean)
    reused, full = _sweep_both(model, corrupted, cache, fn, METRICS["last"])
    assert np.abs(reused - full).max() <= 1e-5


def test_reuse_only_where_exact():
    cfg = jtlens.Config(**SMALL, act_fn="gelu_new")
    assert S.reuse_column(cfg, "hook_resid_pre", jp.layer_pos_patch_setter) == 1
    assert S.reuse_column(cfg, "attn.hook_z", jp.layer_pos_head_vector_patch_setter) == 1
    assert S.reuse_column(cfg, "attn.hook_pattern", jp.layer_head_pos_pattern_patch_setter) == 2
    assert S.reuse_column(cfg, "attn.hook_z", jp.layer_head_vector_patch_setter) is None  # all positions
    assert S.reuse_column(cfg, "attn.hook_pattern", jp.layer_head_pattern_patch_setter) is None
    assert S.reuse_column(cfg, "hook_resid_pre", lambda a, i, c: a) is None  # setter of unknown reach
    assert S.reuse_column(cfg, "ln1.hook_scale", jp.layer_pos_patch_setter) is None  # not listed
    encoder = dataclasses.replace(cfg, attention_dir="bidirectional")
    assert S.reuse_column(encoder, "hook_resid_pre", jp.layer_pos_patch_setter) is None
    shortformer = dataclasses.replace(cfg, positional_embedding_type="shortformer")
    assert S.reuse_column(shortformer, "hook_resid_pre", jp.layer_pos_patch_setter) is None


def test_reuse_starts_are_buckets_at_or_before_the_position():
    assert S.reuse_starts(np.arange(8), 8).tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    assert S.reuse_starts(np.arange(3), 3).tolist() == [0, 1, 2]   # fewer positions than buckets
    starts = S.reuse_starts(np.arange(17), 17)
    assert (starts <= np.arange(17)).all() and len(np.unique(starts)) == S.KV_REUSE_STARTS
