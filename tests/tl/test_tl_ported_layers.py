"""TransformerLens 3.x's tests/integration/test_start_at_layer.py and test_stop_at_layer.py,
ported (see tests/tl_port.py), on TransformerLens 3.9 and on jtlens."""

import copy

import numpy as np
import pytest

from tests.oracle import tokenizer
from tests.tl_port import lib, np_  # noqa: F401  (lib is the fixture)

SMALL = dict(n_layers=3, d_mlp=8, d_model=10, d_head=5, n_heads=2, n_ctx=20, d_vocab=50, act_fn="relu")


def _model(lib, **changes):
    return lib.HookedTransformer(lib.Config(**dict(SMALL, **changes)))


@pytest.fixture
def setup(lib):
    model = _model(lib)
    tokens = lib.tensor(np.random.default_rng(0).integers(0, 20, (2, 10)))
    embed, _, _, _ = model.input_to_embed(tokens)
    return model, tokens, embed


def keys(cache):
    return set(cache.keys())


def counter():
    calls = []
    return calls, lambda act, hook: calls.append(len(calls))


# ------------------------------------------------------------------ test_start_at_layer.py
@pytest.mark.slow
def test_start_at_layer_1(setup):
    model, _, embed = setup
    output, cache = model.run_with_cache(embed, start_at_layer=1)
    assert output is not None
    assert not keys(cache) & {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"}
    assert {"blocks.1.hook_resid_pre", "ln_final.hook_normalized"} <= keys(cache)


@pytest.mark.slow
def test_start_run_with_hooks(setup):
    model, _, embed = setup
    calls, count = counter()
    output = model.run_with_hooks(embed, start_at_layer=1, fwd_hooks=[
        ("hook_embed", count), ("blocks.0.attn.hook_k", count), ("blocks.1.mlp.hook_pre", count),
        ("blocks.2.attn.hook_k", count), ("blocks.2.mlp.hook_pre", count)])
    assert output is not None and len(calls) == 3


def test_start_manual_hooks(setup):
    model, _, embed = setup
    calls, count = counter()
    model.hook_embed.add_hook(count)
    model.blocks[0].hook_mlp_out.add_hook(count)
    model.blocks[1].hook_resid_mid.add_hook(count)
    model.blocks[2].attn.hook_z.add_hook(count)
    assert model(embed, start_at_layer=-2) is not None
    assert len(calls) == 2


def test_start_at_final(setup):
    model, _, embed = setup
    output, cache = model.run_with_cache(embed, start_at_layer=-1)
    assert output is not None
    assert not keys(cache) & {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre",
                              "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre",
                              "blocks.1.hook_resid_post", "blocks.3.hook_resid_pre"}
    assert {"blocks.2.hook_resid_pre", "blocks.2.hook_resid_post", "ln_final.hook_normalized"} <= keys(cache)


ALL = {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
       "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre",
       "blocks.2.hook_resid_post", "ln_final.hook_normalized"}


@pytest.mark.parametrize("return_type", ["logits", None])
@pytest.mark.parametrize("which", ["start_at_layer", "stop_at_layer"])
def test_no_start_or_stop(setup, which, return_type):
    """test_no_start_logit_output / _none_output and test_no_stop_logit_output / _none_output."""
    model, tokens, _ = setup
    output, cache = model.run_with_cache(tokens, return_type=return_type, **{which: None})
    if return_type is None:
        assert output is None
    else:
        assert tuple(output.shape) == (2, 10, 50)
    assert ALL <= keys(cache)


def test_start_and_stop(setup):
    model, _, embed = setup
    output, cache = model.run_with_cache(embed, start_at_layer=1, stop_at_layer=2)
    assert np.allclose(np_(output), np_(cache["blocks.1.hook_resid_post"]))
    assert {"blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"} <= keys(cache)
    assert not keys(cache) & {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre",
                              "blocks.0.hook_resid_post", "blocks.2.hook_resid_pre",
                              "blocks.2.hook_resid_post", "blocks.3.hook_resid_pre",
                              "ln_final.hook_normalized"}


@pytest.mark.slow
def test_start_at_layer_kwargs(lib, request):
    # TL builds the tokenizer from the hub (tokenizer_name="gpt2"); the offline one is set here.
    if lib.name == "jtlens":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "jtlens's input_to_embed returns no shortformer_pos_embed: the forward recomputes the "
            "shortformer positions from the attention mask, so it is not a forward argument")))
    model = _model(lib, d_vocab=300, positional_embedding_type="shortformer", n_ctx=40)
    model.set_tokenizer(copy.deepcopy(tokenizer()))  # a copy: the shared one must stay as it is
    model.tokenizer.padding_side = "left"
    text = "As soon as this ferry boat docks I'm headed to the church to play bingo."
    embed, tokens, shortformer_pos_embed, mask = model.input_to_embed(text)
    assert tokens is not None and shortformer_pos_embed is not None and mask is not None
    out = model(embed, tokens=tokens, shortformer_pos_embed=shortformer_pos_embed,
                attention_mask=mask, start_at_layer=0, return_type="loss")
    assert np.allclose(np_(out), np_(model(text, return_type="loss")))


# ------------------------------------------------------------------ test_stop_at_layer.py
def test_stop_at_embed(setup):
    model, tokens, _ = setup
    _, normal = model.run_with_cache(tokens)
    output, cache = model.run_with_cache(tokens, stop_at_layer=0)
    assert np.allclose(np_(output), np_(normal["blocks.0.hook_resid_pre"]))
    assert {"hook_embed", "hook_pos_embed"} <= keys(cache)
    assert not keys(cache) & {"blocks.0.hook_resid_pre", "ln_final.hook_normalized"}


def test_stop_run_with_hooks(setup):
    model, tokens, _ = setup
    calls, count = counter()
    output = model.run_with_hooks(tokens, stop_at_layer=1, fwd_hooks=[
        ("hook_embed", count), ("blocks.0.attn.hook_k", count), ("blocks.1.mlp.hook_pre", count)])
    _, normal = model.run_with_cache(tokens, stop_at_layer=1)
    # jtlens runs Python hook functions eagerly (layers unrolled) and run_with_cache compiled;
    # XLA rounds the two programs' float32 sums differently (max 2.4e-7 measured), so this one
    # comparison allows 1e-6 where torch.allclose's default atol is 1e-8.
    assert np.allclose(np_(output), np_(normal["blocks.0.hook_resid_post"]), atol=1e-6)
    assert len(calls) == 2


def test_stop_manual_hooks(setup):
    model, tokens, _ = setup
    _, normal = model.run_with_cache(tokens)
    calls, count = counter()
    model.hook_embed.add_hook(count)
    model.blocks[0].hook_mlp_out.add_hook(count)
    model.blocks[1].hook_resid_mid.add_hook(count)
    model.blocks[2].attn.hook_z.add_hook(count)
    output = model(tokens, stop_at_layer=-1)
    assert np.allclose(np_(output), np_(normal["blocks.1.hook_resid_post"]))
    assert len(calls) == 3


def test_stop_at_layer_1(setup):
    model, tokens, _ = setup
    _, normal = model.run_with_cache(tokens)
    output, cache = model.run_with_cache(tokens, stop_at_layer=1)
    # two compiled programs (one layer, three): XLA may round their float32 sums differently
    # (max 2.4e-7 measured, on an entry of 1.04), so 1e-6 where torch.allclose's atol is 1e-8
    assert np.allclose(np_(output), np_(normal["blocks.0.hook_resid_post"]), atol=1e-6)
    assert {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"} <= keys(cache)
    assert all(k.startswith("blocks.0") or k in ("hook_embed", "hook_pos_embed") for k in keys(cache))


@pytest.mark.slow
def test_stop_at_final(lib):
    model = _model(lib, n_layers=4)
    tokens = lib.tensor(np.random.default_rng(0).integers(0, 20, (2, 10)))
    _, normal = model.run_with_cache(tokens)
    output, cache = model.run_with_cache(tokens, stop_at_layer=-1)
    assert np.allclose(np_(output), np_(normal["blocks.2.hook_resid_post"]))
    assert (ALL - {"ln_final.hook_normalized"}) <= keys(cache)
    assert not keys(cache) & {"blocks.3.hook_resid_pre", "ln_final.hook_normalized"}
