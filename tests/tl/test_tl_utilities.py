"""TransformerLens's utilities under their own names: utils helpers, FactoredMatrix operands,
head-detector patterns, evals.induction_loss, and jtlens.grads taking a model and text."""

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens import evals, grads, head_detector, utils
from tests.oracle import CONFIGS, max_diff, pair, tl_model, to_jtlens, torch


def test_utils_helpers_match_transformer_lens():
    import transformer_lens.utils as tl_utils

    tl, model = pair("left")
    tokens = model.to_tokens(["The cat sat on the mat.", "A dog"])
    ref = tl_utils.get_attention_mask(tl.tokenizer, torch.as_tensor(np.asarray(tokens)), True, "left")
    ours = utils.get_attention_mask(model.tokenizer, tokens, True, "left")
    assert np.array_equal(np.asarray(ours), ref.numpy())
    x = np.random.default_rng(0).normal(size=(1, 4, 5)).astype(np.float32)
    t = torch.as_tensor(x)
    assert np.array_equal(utils.get_corner(x, 2), tl_utils.get_corner(t, 2).numpy())
    assert np.array_equal(utils.remove_batch_dim(x), tl_utils.remove_batch_dim(t).numpy())
    assert np.array_equal(np.asarray(utils.transpose(x)), tl_utils.transpose(t).numpy())


def test_factored_matrix_scalars_leading_dims_and_torch_operands():
    from transformer_lens import FactoredMatrix as TLFactoredMatrix

    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(2, 5, 3)).astype(np.float32), rng.normal(size=(2, 3, 5)).astype(np.float32)
    ours, theirs = jtlens.FactoredMatrix(A, B), TLFactoredMatrix(torch.as_tensor(A), torch.as_tensor(B))
    assert ours.has_leading_dims == theirs.has_leading_dims is True
    assert not jtlens.FactoredMatrix(A[0], B[0]).has_leading_dims
    scaled = ours * np.array([2.0])
    assert max_diff(scaled.AB, (theirs * torch.tensor([2.0])).AB.numpy()) <= 1e-5
    right = torch.as_tensor(rng.normal(size=(5, 4)).astype(np.float32))
    assert max_diff((ours @ right).AB, (theirs @ right).AB.numpy()) <= 1e-5
    with pytest.raises(ValueError, match="scalar"):
        ours * np.ones(2)


def test_head_detector_patterns_match_transformer_lens():
    from transformer_lens import head_detector as tl_hd

    tokens = np.array([[3, 5, 7, 3, 5, 7, 9, 3]])
    for name in ("get_previous_token_head_detection_pattern",
                 "get_duplicate_token_head_detection_pattern",
                 "get_induction_head_detection_pattern"):
        ref = getattr(tl_hd, name)(torch.as_tensor(tokens[0]))
        assert np.array_equal(np.asarray(getattr(head_detector, name)(tokens[0])), ref.numpy()), name


def test_induction_loss_matches_transformer_lens_on_the_same_tokens():
    from transformer_lens import evals as tl_evals

    tl = tl_model(dict(CONFIGS["gpt2"], d_vocab=20000, d_model=32, d_head=8, n_heads=4))
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg.replace(default_prepend_bos=False), params)
    tl.cfg.default_prepend_bos = False
    torch.manual_seed(0)
    with torch.no_grad():
        ref = float(tl_evals.induction_loss(tl, batch_size=2, subseq_len=8, device="cpu"))
    torch.manual_seed(0)
    half = torch.randint(100, 20000, (2, 8)).numpy()
    ours = float(evals.induction_loss(model, subseq_len=8, tokens=np.concatenate([half, half], 1)))
    assert abs(ours - ref) <= 1e-4
    assert np.isfinite(float(evals.induction_loss(model, batch_size=2, subseq_len=8)))


@pytest.mark.slow
def test_grads_take_a_model_and_text_or_params_and_cfg():
    _, model = pair("right")
    metric = lambda logits: logits[:, -1, 5].sum()  # noqa: E731
    from_text = grads.grad_wrt(model, "The cat sat", metric, ["hook_embed"])["hook_embed"]
    tokens = model.to_tokens("The cat sat")
    from_params = grads.grad_wrt(model.params, model.cfg, tokens, metric, ["hook_embed"])["hook_embed"]
    assert max_diff(from_text, from_params) == 0
    v1, g1 = grads.grad_cache(model, "The cat sat", metric, "hook_embed")
    v2, g2 = grads.grad_cache(model.params, model.cfg, tokens, metric, "hook_embed")
    assert float(v1) == float(v2) and max_diff(g1["hook_embed"], g2["hook_embed"]) == 0
    assert jnp.allclose(grads.grad_times_activation(model, tokens, metric, "hook_embed")["hook_embed"],
                        grads.grad_times_activation(model.params, model.cfg, tokens, metric,
                                                    "hook_embed")["hook_embed"])
