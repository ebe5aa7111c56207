"""Head detection matches TransformerLens's head_detector; a trained induction model is found."""

import jax
import numpy as np
import pytest

import jtlens
from jtlens.head_detector import HEAD_NAMES, detect_head, induction_scores
from jtlens.report import induction
from jtlens.report.figures import induction_svgs
from tests.oracle import max_diff, torch
from tests.oracle import pair as tokenized_pair

PROMPT = "the cat sat on the mat and the cat sat on the hat"


@pytest.fixture(scope="module")
def pair():
    return tokenized_pair("right")  # TL and jtlens, same weights and BPE tokenizer


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("opts", [dict(), dict(exclude_bos=True, exclude_current_token=True),
                                  dict(error_measure="abs")])
def test_detect_head_matches_transformer_lens(pair, name, opts):
    from transformer_lens.head_detector import detect_head as tl_detect

    tl, model = pair
    ref = tl_detect(tl, PROMPT, name, **opts).numpy()
    assert max_diff(detect_head(model, PROMPT, name, **opts), ref) <= 1e-4


def test_subsets_lists_and_custom_patterns(pair):
    from transformer_lens.head_detector import detect_head as tl_detect

    tl, model = pair
    heads = [(0, 1), (1, 3)]
    assert max_diff(detect_head(model, PROMPT, "induction_head", heads=heads),
                    tl_detect(tl, PROMPT, "induction_head", heads=heads).numpy()) <= 1e-4
    prompts = [PROMPT, "a b c a b c"]
    assert max_diff(detect_head(model, prompts, "duplicate_token_head"),
                    tl_detect(tl, prompts, "duplicate_token_head").numpy()) <= 1e-4
    n = model.to_tokens(PROMPT).shape[1]
    custom = np.tril(np.ones((n, n), np.float32))
    assert max_diff(detect_head(model, PROMPT, custom),
                    tl_detect(tl, PROMPT, torch.tensor(custom)).numpy()) <= 1e-4
    with pytest.raises(ValueError, match="lower triangular"):
        detect_head(model, PROMPT, np.ones((n, n)))
    with pytest.raises(ValueError, match="one of"):
        detect_head(model, PROMPT, "copy_head")


def hand_built_induction_model():
    """Two attention-only layers built by hand. Residual dims: token one-hot [0, V), position
    one-hot [V, V+N), previous-token slot [V+N, 2V+N). L0H0 attends from p to p-1 and copies that
    token into the slot; L1H0 queries with the current token against the slot's keys, so it
    attends to the token after an earlier copy: an induction head. Other heads are silent."""
    V, N = 64, 32
    D = 2 * V + N
    cfg = jtlens.Config(n_layers=2, d_model=D, n_heads=2, d_head=V, d_vocab=V, n_ctx=N,
                        attn_only=True, normalization_type=None, act_fn="relu")
    shapes = jtlens.param_shapes(cfg)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s, np.float32), shapes,
                                    is_leaf=lambda x: isinstance(x, tuple))
    params["embed"]["W_E"][:, :V] = np.eye(V)
    params["pos_embed"]["W_pos"][:, V:V + N] = np.eye(N)
    a = params["blocks"]["attn"]
    a["W_Q"][0, 0, V + 1:V + N, :N - 1] = 100 * np.eye(N - 1)   # position p asks for p - 1
    a["W_K"][0, 0, V:V + N, :N] = np.eye(N)
    a["W_V"][0, 0, :V, :] = np.eye(V)
    a["W_O"][0, 0, :, V + N:] = np.eye(V)
    a["W_Q"][1, 0, :V, :] = 100 * np.eye(V)                      # current token ...
    a["W_K"][1, 0, V + N:, :] = np.eye(V)                        # ... against previous tokens
    params["unembed"]["W_U"][:V] = np.eye(V)
    return jtlens.HookedTransformer(cfg, params)


@pytest.mark.slow
def test_induction_scores_find_a_hand_built_induction_head():
    model = hand_built_induction_model()
    scores = np.asarray(induction_scores(model, seq_len=12, n_prompts=2, prepend_bos=False))
    assert scores.shape == (2, 2)
    # Not 1: random tokens repeat within a prompt (12 draws of 63), and a repeated token splits
    # the induction head's attention between its earlier copies' successors.
    assert scores[1, 0] > 0.7 and np.delete(scores.ravel(), 2).max() < 0.3, scores


def test_induction_probe_rejects_sizes_it_cannot_build():
    model = hand_built_induction_model()                         # n_ctx 32
    with pytest.raises(ValueError, match=r"33 tokens \(a 16-token sequence twice after BOS\) "
                                         r"exceed n_ctx=32; use a smaller seq_len"):
        induction_scores(model, seq_len=16)
    assert induction_scores(model, seq_len=16, prepend_bos=False).shape == (2, 2)
    for bad in (dict(seq_len=0), dict(n_prompts=0)):
        with pytest.raises(ValueError, match="must be at least 1"):
            induction_scores(model, **bad)


@pytest.mark.slow
def test_report_shows_the_hand_built_induction_head():
    """The report's induction section names L1H0, and its picture is that head's stripe."""
    found = induction(hand_built_induction_model(), seq_len=12)
    assert found["best"] == (1, 0) and found["scores"].shape == (2, 2)
    assert found["str_tokens"][0] == "0" and len(found["str_tokens"]) == 25   # BOS + 2 x 12
    pattern = found["pattern"]
    q = np.arange(13, 25)
    assert pattern[q, q - 11].mean() > 0.7, pattern[q, q - 11]
    scores, stripe = induction_svgs({"induction": found})
    assert scores.count("<rect") == 2 * 2 + 2 and stripe.count("<rect") == 25 * 25 + 2


@pytest.mark.slow
def test_detect_head_reuses_a_cache(pair):
    from transformer_lens.head_detector import detect_head as tl_detect

    tl, model = pair
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(PROMPT, remove_batch_dim=True)  # as TL requires
    _, cache = model.run_with_cache(PROMPT)
    for c in (cache, cache.remove_batch_dim()):
        ours = detect_head(model, PROMPT, "previous_token_head", cache=c)
        assert max_diff(ours, tl_detect(tl, PROMPT, "previous_token_head", cache=tl_cache).numpy()) <= 1e-4
    with pytest.raises(ValueError, match="one cache cannot serve"):
        detect_head(model, [PROMPT, PROMPT], "induction_head", cache=cache)
