"""Every get_act_patch_* sweep equals TransformerLens 3.9's on the same weights (GPT-2 and GQA/rotary)."""

import numpy as np
import pytest

import jtlens
import jtlens.patching as jp
from tests.oracle import CONFIGS as FAMILY_CONFIGS
from tests.oracle import max_diff, tl_model, tlp, to_jtlens, tokens_for, torch

SMALL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50)
CONFIGS = {
    "gpt2": dict(SMALL, act_fn="gelu_new", normalization_type="LN"),
    "llama_gqa": dict(SMALL, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                      rotary_dim=8, n_key_value_heads=2, gated_mlp=True, final_rms=True, eps=1e-6),
}
FUNCTIONS = ["get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
             "get_act_patch_mlp_out", "get_act_patch_attn_head_pattern_dest_src_pos",
             "get_act_patch_block_every", "get_act_patch_attn_head_all_pos_every",
             "get_act_patch_attn_head_by_pos_every"]


def logit_diff(logits):
    """Works on torch and JAX logits alike, so both libraries get the very same metric."""
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
    tl = tl_model(CONFIGS[request.param])
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    clean, corrupted = tokens_for(cfg, pos=5, seed=1), tokens_for(cfg, pos=5, seed=2)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(np.asarray(clean)))
    _, cache = model.run_with_cache(clean)
    return tl, tl_cache, model, cache, corrupted


@pytest.mark.slow
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_sweep_matches_transformerlens(setup, fn):
    tl, tl_cache, model, cache, corrupted = setup
    with torch.no_grad():
        ref = getattr(tlp, fn)(tl, torch.tensor(np.asarray(corrupted)), tl_cache, logit_diff).numpy()
    ours = getattr(jp, fn)(model, corrupted, cache, logit_diff, progress=False)
    assert ours.shape == ref.shape
    assert max_diff(ours, ref) <= 1e-4
    assert np.abs(ref).max() > 1e-3  # the patches do move the metric


# The families that reach the forward through knobs the two configs above leave off: one sweep
# each (per-head z patches read every knob of attention), against TransformerLens's.
SWEPT_FAMILIES = ["gemma3_like", "olmo_like", "olmo2_like", "phi_like", "bloom_like",
                  "apertus_like", "mixtral_like", "olmoe_like", "gpt_oss_like", "qwen_like"]


@pytest.mark.slow
@pytest.mark.parametrize("family", SWEPT_FAMILIES)
def test_one_sweep_per_family_matches_transformerlens(family):
    tl = tl_model(dict(FAMILY_CONFIGS[family], **SMALL))
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    clean, corrupted = tokens_for(cfg, pos=6, seed=1), tokens_for(cfg, pos=6, seed=2)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(np.asarray(clean)))
        ref = tlp.get_act_patch_attn_head_out_by_pos(tl, torch.tensor(np.asarray(corrupted)),
                                                     tl_cache, logit_diff).numpy()
    _, cache = model.run_with_cache(clean)
    ours = jp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff, progress=False)
    assert max_diff(ours, ref) <= 1e-4
    assert np.abs(ref).max() > 1e-3


def test_index_df_and_logit_positions(setup):
    pd = pytest.importorskip("pandas")
    tl, tl_cache, model, cache, corrupted = setup
    df = pd.DataFrame({"layer": [1, 0, 1], "pos": [4, 2, 0], "head": [3, 1, 0]})
    with torch.no_grad():
        # (TransformerLens's own get_act_patch_* partials reject index_df, so call its generic form)
        ref = tlp.generic_activation_patch(
            tl, torch.tensor(np.asarray(corrupted)), tl_cache, logit_diff,
            tlp.layer_pos_head_vector_patch_setter, "z", index_df=df).numpy()
    ours, rows = jp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff, index_df=df,
                                                       return_index_df=True, logit_positions=[-1],
                                                       chunk_size=1, progress=False)
    assert max_diff(ours, ref) <= 1e-4
    assert (rows.to_numpy() == df.to_numpy()).all()
    with pytest.raises(ValueError, match="'pos' has values outside"):
        jp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff, index_df=df.assign(pos=[1, 9, 0]))


def test_bad_inputs_say_what_to_do(setup):
    _, _, model, cache, corrupted = setup
    with pytest.raises(ValueError, match="scalar"):
        jp.get_act_patch_resid_pre(model, corrupted, cache, lambda l: l[:, -1, 0], progress=False)
    with pytest.raises(ValueError, match="lacks"):
        _, small = model.run_with_cache(corrupted, names_filter="blocks.0.hook_resid_pre")
        jp.get_act_patch_resid_pre(model, corrupted, small, logit_diff, progress=False)
    with pytest.raises(ValueError, match="index axis"):
        jp.generic_activation_patch(model, corrupted, cache, logit_diff, jp.layer_pos_patch_setter,
                                    "resid_pre", ("layer", "position"))
    with pytest.raises(ValueError, match="not inside a block"):
        jp.generic_activation_patch(model, corrupted, cache, logit_diff, jp.layer_pos_patch_setter,
                                    "hook_embed", ("layer", "pos"))
