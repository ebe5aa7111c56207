"""TransformerLens config features: act_fn="solu_ln" (hook_mid and mlp.ln), compared with
TransformerLens 3.9 on the same weights, raw and weight-processed."""

import numpy as np
import pytest

import jtlens
from jtlens import weights
from tests.oracle import CONFIGS, assert_caches_match, max_diff, tl_cache, tl_model, to_jtlens, tokens_for

SOLU_LN = dict(CONFIGS["gpt2"], act_fn="solu_ln")


@pytest.mark.slow
@pytest.mark.parametrize("normalization_type", ["LN", "LNPre"])
def test_solu_ln_matches_transformer_lens(normalization_type):
    tl = tl_model(dict(SOLU_LN, normalization_type=normalization_type))
    cfg, params = to_jtlens(tl)
    assert cfg.is_layer_norm_activation() and tl.cfg.is_layer_norm_activation()
    tokens = tokens_for(cfg)
    ref_logits, ref = tl_cache(tl, tokens)
    assert "blocks.0.mlp.hook_mid" in ref and "blocks.1.mlp.ln.hook_scale" in ref
    logits, cache = jtlens.forward_with_cache(params, tokens, cfg, jtlens.Hooks(capture=True))
    assert max_diff(logits, ref_logits) <= 1e-4
    assert_caches_match(cache, ref)


@pytest.mark.slow
def test_solu_ln_weight_processing_matches_transformer_lens_and_keeps_log_probs():
    tl = tl_model(SOLU_LN)
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg)
    before = np.asarray(jtlens.forward(params, tokens, cfg))
    processed = weights.process(params, cfg)
    new_cfg = weights.processed_config(cfg)
    after = np.asarray(jtlens.forward(processed, tokens, new_cfg))
    lp = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)  # noqa: E731
    assert max_diff(lp(after), lp(before)) <= 1e-4
    tl.process_weights_()
    ref_logits, ref = tl_cache(tl, tokens)
    assert max_diff(after, ref_logits) <= 1e-4
    assert max_diff(processed["blocks"]["mlp"]["W_out"], to_jtlens(tl)[1]["blocks"]["mlp"]["W_out"]) <= 1e-5


def test_solu_ln_with_a_gated_mlp_is_rejected():
    with pytest.raises(ValueError, match="gated_mlp"):
        jtlens.Config(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=5, act_fn="solu_ln",
                      gated_mlp=True)


@pytest.mark.slow
def test_shortformer_matches_transformer_lens():
    tl = tl_model(dict(CONFIGS["gpt2"], positional_embedding_type="shortformer"))
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg)
    ref_logits, ref = tl_cache(tl, tokens)
    logits, cache = jtlens.forward_with_cache(params, tokens, cfg, jtlens.Hooks(capture=True))
    assert max_diff(logits, ref_logits) <= 1e-4
    assert_caches_match(cache, ref)
    # Processing keeps the log-probs (centring W_pos is exact: LN removes the mean it writes).
    after = np.asarray(jtlens.forward(weights.process(params, cfg), tokens, weights.processed_config(cfg)))
    shift = lambda x: x - x.max(-1, keepdims=True)  # noqa: E731
    lp = lambda x: shift(x) - np.log(np.exp(shift(x)).sum(-1, keepdims=True))  # noqa: E731
    assert max_diff(lp(after), lp(np.asarray(logits))) <= 1e-4
