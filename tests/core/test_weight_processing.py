"""Weight processing (fold_ln, centring, value-bias folding, refactoring) matches TransformerLens 3.9."""

import jax
import numpy as np
import pytest

from tests.oracle import CONFIGS, assert_caches_match, max_diff, tl_cache, tl_model, to_jtlens, tokens_for

import jtlens
from jtlens import weights


def _flat(tree):
    return {jax.tree_util.keystr(path): v for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _run(cfg, params, tokens):
    return jtlens.forward_with_cache(params, tokens, cfg, hooks=jtlens.Hooks(capture=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "neox", "gptj", "llama", "gemma2_like", "qwen3_like", "alibi_relu_attn_only"])
def test_default_processing_matches_transformer_lens(name):
    tl = tl_model(CONFIGS[name])
    cfg, raw = to_jtlens(tl)
    # Under an output soft-cap TransformerLens's center_unembed changes the log-probs (tanh is
    # not shift-invariant), so jtlens skips it there: compare with TransformerLens without it.
    tl.process_weights_(fold_ln=True, center_writing_weights=True,
                        center_unembed=cfg.output_logits_soft_cap <= 0)
    tokens = tokens_for(cfg)
    ref_logits, ref = tl_cache(tl, tokens)
    flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                 fold_value_biases=True)
    new_cfg = weights.processed_config(cfg, **flags)
    assert new_cfg.normalization_type == tl.cfg.normalization_type
    processed = weights.process(raw, cfg, **flags)
    # The same params TransformerLens holds after processing, tensor by tensor...
    ours, theirs = _flat(processed), _flat(to_jtlens(tl)[1])
    assert set(ours) == set(theirs)
    for k in theirs:
        assert max_diff(ours[k], theirs[k]) <= 1e-5, k
    # ...and the same activations.
    logits, cache = _run(new_cfg, processed, tokens)
    assert max_diff(logits, ref_logits) <= 1e-4
    assert_caches_match(cache, ref)


def test_refactor_factored_attn_matrices_keeps_the_function():
    tl = tl_model(CONFIGS["gpt2"])
    cfg, raw = to_jtlens(tl)
    tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True,
                        refactor_factored_attn_matrices=True)
    tokens = tokens_for(cfg)
    ref_logits, ref = tl_cache(tl, tokens)
    flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                 fold_value_biases=True, refactor_factored_attn_matrices=True)
    params = weights.process(raw, cfg, **flags)
    logits, cache = _run(weights.processed_config(cfg, **flags), params, tokens)
    assert max_diff(logits, ref_logits) <= 1e-4
    # The factors are unique only up to SVD signs; their products and every downstream
    # activation are not.
    for name in ("blocks.0.attn.hook_attn_scores", "blocks.1.attn.hook_pattern",
                 "blocks.1.hook_resid_post", "blocks.0.hook_attn_out"):
        assert max_diff(cache[name], ref[name]) <= 1e-4, name
    a = params["blocks"]["attn"]
    QK = np.einsum("lhde,lhfe->lhdf", a["W_Q"], a["W_K"])
    ref_QK = np.einsum("hde,hfe->hdf", tl.blocks[1].attn.W_Q.detach().numpy(),
                       tl.blocks[1].attn.W_K.detach().numpy())
    assert max_diff(QK[1], ref_QK) <= 1e-4
    # Balanced: [W_Q; b_Q] and [W_K; b_K] of each head have the same singular values.
    sq = np.linalg.svd(np.concatenate([a["W_Q"], a["b_Q"][:, :, None]], 2), compute_uv=False)
    sk = np.linalg.svd(np.concatenate([a["W_K"], a["b_K"][:, :, None]], 2), compute_uv=False)
    assert np.allclose(sq, sk, atol=1e-4)


def test_refactor_rejects_rotary():
    tl = tl_model(CONFIGS["llama"])
    cfg, raw = to_jtlens(tl)
    with pytest.raises(ValueError, match="rotary"):
        weights.process(raw, cfg, refactor_factored_attn_matrices=True)
