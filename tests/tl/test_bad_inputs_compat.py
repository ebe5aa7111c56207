"""Bad inputs a TransformerLens user tries first (issue 27, section 3): each is a one-line error
naming the argument, or the right result (a NaN weight reaches the logits; a zero-layer model
runs as TransformerLens builds it)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens import cli, patching
from jtlens.checkpoint_io import check_destination
from tests.oracle import tl_model, to_jtlens, tokenizer, torch

CFG = dict(n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=300, act_fn="gelu_new",
           normalization_type="LN")


@pytest.fixture(scope="module")
def model():
    m = jtlens.HookedTransformer(jtlens.Config(**CFG))
    m.set_tokenizer(tokenizer())
    return m


@pytest.fixture(scope="module")
def toks(model):
    return model.to_tokens("The cat sat on the mat")


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.slow
def test_nan_weight_reaches_logits(model, toks):
    W_Q = model.params["blocks"]["attn"]["W_Q"].at[0, 1, 3, 2].set(jnp.nan)
    params = {**model.params, "blocks": {**model.params["blocks"],
                                         "attn": {**model.params["blocks"]["attn"], "W_Q": W_Q}}}
    logits, cache = jtlens.forward_with_cache(params, toks, model.cfg,
                                              hooks=jtlens.Hooks(capture=True))
    assert np.isnan(np.asarray(cache["blocks.0.attn.hook_pattern"][0, 1])).all()
    assert np.isnan(np.asarray(logits)).any()


def test_left_padding_rows_still_attend_to_nothing(model):
    # The rows a NaN now reaches are only NaN scores: fully masked rows stay zero, as in TL.
    tokens, mask = model.to_tokens(["a", "The cat sat"], padding_side="left", return_mask=True)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert np.isfinite(np.asarray(logits)).all()
    assert float(np.abs(np.asarray(cache["pattern", 0][0, :, 0])).max()) == 0.0


def test_negative_layer_in_a_hook_name(model, toks):
    with pytest.raises(ValueError) as err:
        model.run_with_hooks(toks, fwd_hooks=[("blocks.-1.hook_resid_pre", lambda a, hook: a)])
    assert "TransformerLens has no blocks.-1" in _one_line(err)
    assert "blocks.1.hook_resid_pre" in str(err.value)


def test_negative_layer_in_a_tuple_key_counts_from_the_end(model, toks):
    delta = jnp.ones((1, toks.shape[1], CFG["d_model"]))
    by_tuple = jtlens.forward(model.params, toks, model.cfg,
                              hooks=jtlens.Hooks(add={("resid_pre", -1): delta}))
    by_name = jtlens.forward(model.params, toks, model.cfg,
                             hooks=jtlens.Hooks(add={"blocks.1.hook_resid_pre": delta}))
    np.testing.assert_array_equal(np.asarray(by_tuple), np.asarray(by_name))
    with pytest.raises(ValueError, match="layer -3 is out of range"):
        jtlens.forward(model.params, toks, model.cfg,
                       hooks=jtlens.Hooks(add={("resid_pre", -3): delta}))


def test_complex_patch_value(model, toks):
    value = jnp.ones((1, toks.shape[1], CFG["d_model"])) * 1j
    with pytest.raises(TypeError) as err:
        jtlens.forward(model.params, toks, model.cfg,
                       hooks=jtlens.Hooks(patch={"blocks.0.hook_resid_pre": (value, None)}))
    assert "complex values" in _one_line(err)


def test_hook_function_returning_complex(model, toks):
    with pytest.raises(TypeError) as err:
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: a * 1j)])
    assert "returned complex values" in _one_line(err)


def test_to_tokens_none(model):
    with pytest.raises(TypeError) as err:
        model.to_tokens(None)
    assert "text must be a string or a list of strings, got NoneType" in _one_line(err)


@pytest.mark.parametrize("tokens", [np.array([["1", "2"]]), np.array(["a", "b"], dtype=object)])
def test_string_token_array(model, tokens):
    with pytest.raises(TypeError) as err:
        model(tokens)
    assert "model.to_tokens(text)" in _one_line(err)


def test_integer_tokens_with_start_at_layer(model, toks):
    with pytest.raises(ValueError) as err:
        model(toks, start_at_layer=1)
    msg = _one_line(err)
    assert "start_at_layer=1 takes the residual stream" in msg and "stop_at_layer=1" in msg


@pytest.mark.slow
def test_patching_metric_returning_a_constant(model, toks):
    _, cache = model.run_with_cache(toks)
    with pytest.raises(TypeError) as err:
        patching.get_act_patch_resid_pre(model, toks, cache, lambda logits: 0.5)
    assert "a constant that does not depend on the logits" in _one_line(err)


def test_read_only_destination_is_refused(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as err:
            check_destination(out, overwrite=True)
        assert "is read-only" in _one_line(err)
    finally:
        out.chmod(0o755)


def test_patch_command_multi_token_answer(capsys):
    argv = ["patch", "--model", "jtlens-tiny", "--clean", "a b", "--corrupted", "a c",
            "--answer", " b c", "--wrong", " c"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--answer: ' b c' is 2 tokens, not one" in err and len(err.splitlines()) == 1


def test_zero_layer_model_matches_transformer_lens():
    cfg = dict(CFG, n_layers=0)
    reference = tl_model(cfg)
    model = jtlens.HookedTransformer(*to_jtlens(reference))
    tokens = np.array([[1, 5, 9, 200]])
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens)).numpy()
    logits, cache = model.run_with_cache(tokens)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)
    assert "hook_embed" in cache and not any(k.startswith("blocks.") for k in cache.keys())
