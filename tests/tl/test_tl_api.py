"""TransformerLens's HookedTransformer API on the facade: hook points, permanent hooks, config
toggles, module pieces and state dicts, compared with TransformerLens 3.9 on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

GPT2 = dict(CONFIGS["gpt2"], use_attn_result=False, use_split_qkv_input=False, use_hook_mlp_in=False)


@pytest.fixture(scope="module")
def pair():
    tl = tl_model(GPT2)
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params)


def _t(x):
    return torch.as_tensor(np.asarray(x))


def test_hook_dict_names_match_transformer_lens(pair):
    tl, model = pair
    assert set(model.hook_dict) == set(tl.hook_dict)
    assert set(model.hook_dict) <= set(model.mod_dict)


@pytest.mark.slow
def test_permanent_hooks_survive_a_plain_reset(pair):
    _, model = pair
    tokens = tokens_for(model.cfg)
    base = model(tokens)
    seen = []
    model.add_hook("blocks.0.attn.hook_z", lambda z, hook: z * 0, is_permanent=True)
    model.hook_embed.add_hook(lambda x, hook: seen.append(hook.name))
    zeroed = model(tokens)
    assert seen == ["hook_embed"] and max_diff(zeroed, base) > 1e-3
    model.reset_hooks()
    seen.clear()
    assert max_diff(model(tokens), zeroed) == 0 and seen == []  # the permanent hook stays
    model.reset_hooks(including_permanent=True)
    assert max_diff(model(tokens), base) == 0


def test_add_hook_prepend_and_attribute_hook_points(pair):
    _, model = pair
    order = []
    z = model.blocks[1].attn.hook_z
    z.add_hook(lambda a, hook: order.append("second"))
    z.add_hook(lambda a, hook: order.append("first"), prepend=True)
    assert len(z.fwd_hooks) == 2
    model(tokens_for(model.cfg))
    assert order == ["first", "second"]
    model.remove_all_hook_fns()
    assert z.fwd_hooks == []


def test_hooks_context_manager_and_perma_hook(pair):
    _, model = pair
    tokens = tokens_for(model.cfg)
    calls = []
    model.add_perma_hook("hook_pos_embed", lambda a, hook: calls.append("perma"))
    with model.hooks(fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda a, hook: calls.append(hook.name))]):
        model(tokens)
    model(tokens)
    assert calls == ["perma", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "perma"]
    model.reset_hooks(including_permanent=True)


def test_hook_ctx_persists_across_runs_until_reset(pair):
    _, model = pair
    def count(a, hook):
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1
    model.add_hook("blocks.0.hook_resid_pre", count)
    model(tokens_for(model.cfg))
    model(tokens_for(model.cfg))
    assert model.blocks[0].hook_resid_pre.ctx == {"n": 2}
    model.reset_hooks()
    assert model.blocks[0].hook_resid_pre.ctx == {}


def test_in_place_assignment_in_a_hook_teaches_at_set(pair):
    _, model = pair
    def zero_head(z, hook):
        z[:, :, 0] = 0
    with pytest.raises(TypeError, match=r"z|act\.at\[:, :, 0\]\.set\(0\)"):
        model.run_with_hooks(tokens_for(model.cfg), fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])


def test_bwd_hooks_point_to_grads(pair):
    _, model = pair
    with pytest.raises(NotImplementedError, match=r"jtlens\.grads\.grad_wrt\(model, tokens"):
        model.run_with_hooks(tokens_for(model.cfg), bwd_hooks=[("hook_embed", lambda g, hook: g)])
    with pytest.raises(NotImplementedError, match="jax.grad"):
        model.add_hook("hook_embed", lambda g, hook: g, dir="bwd")


def test_set_use_attn_result_matches_transformer_lens():
    tl = tl_model(GPT2)
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    tl.set_use_attn_result(True)
    model.set_use_attn_result(True)
    tl.set_use_split_qkv_input(True)
    model.set_use_split_qkv_input(True)
    tokens = tokens_for(cfg)
    with torch.no_grad():
        _, ref = tl.run_with_cache(_t(tokens))
    _, cache = model.run_with_cache(tokens)
    assert set(cache.keys()) == set(ref.keys())
    for name in ("blocks.1.attn.hook_result", "blocks.0.hook_q_input"):
        assert max_diff(cache[name], ref[name].numpy()) <= 1e-4


def test_frozen_config_error_names_the_supported_path(pair):
    _, model = pair
    with pytest.raises(AttributeError, match=r"model\.cfg = model\.cfg\.replace\(default_prepend_bos=False\)"):
        model.cfg.plain().default_prepend_bos = False  # a Config on its own stays frozen
    assert jtlens.HookedTransformerConfig.unwrap(model.cfg.to_dict()) == model.cfg
    assert jtlens.Config.unwrap(tl_model(GPT2).cfg) == model.cfg.replace(model_name=model.cfg.model_name)
    assert not model.cfg.is_layer_norm_activation()


@pytest.mark.slow
def test_state_dict_matches_transformer_lens_names_and_values(pair):
    tl, model = pair
    ours = model.state_dict()
    theirs = {k: v for k, v in tl.state_dict().items() if not k.endswith(("IGNORE", ".mask"))}
    assert set(ours) == set(theirs)
    for k in theirs:
        assert max_diff(ours[k], theirs[k].numpy()) == 0, k
    assert [n for n, _ in model.named_parameters()] == list(ours)
    fresh = jtlens.HookedTransformer(model.cfg)
    fresh.load_state_dict(tl.state_dict())
    assert max_diff(fresh(tokens_for(model.cfg)), model(tokens_for(model.cfg))) == 0
    with pytest.raises(ValueError, match="strict"):
        fresh.load_state_dict(tl.state_dict(), strict=False)


def test_module_pieces_match_transformer_lens(pair):
    tl, model = pair
    tokens = tokens_for(model.cfg)
    x = np.random.default_rng(0).normal(size=(2, 12, model.cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        ref = {"embed": tl.embed(_t(tokens)), "pos_embed": tl.pos_embed(_t(tokens)),
               "ln_final": tl.ln_final(_t(x)), "unembed": tl.unembed(_t(x)),
               "attn": tl.blocks[1].attn(_t(x), _t(x), _t(x)), "mlp": tl.blocks[0].mlp(_t(x)),
               "ln1": tl.blocks[0].ln1(_t(x)), "block": tl.blocks[1](_t(x)),
               "input_to_embed": tl.input_to_embed(_t(tokens))[0]}
    ours = {"embed": model.embed(tokens), "pos_embed": model.pos_embed(tokens),
            "ln_final": model.ln_final(x), "unembed": model.unembed(x),
            "attn": model.blocks[1].attn(x, x, x), "mlp": model.blocks[0].mlp(x),
            "ln1": model.blocks[0].ln1(x), "block": model.blocks[1](x),
            "input_to_embed": model.input_to_embed(tokens)[0]}
    for k in ref:
        assert max_diff(ours[k], ref[k].numpy()) <= 1e-4, k
    assert max_diff(model.unembed.W_U, tl.unembed.W_U.detach().numpy()) == 0


def test_process_weights_and_flat_steps_match_transformer_lens():
    tl = tl_model(GPT2)
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    folded = model.fold_layer_norm(model.state_dict())
    ref = tl.fold_layer_norm({k: v.clone() for k, v in tl.state_dict().items()})
    for k in folded:
        assert max_diff(folded[k], ref[k].numpy()) <= 1e-5, k
    tl.process_weights_()
    model.process_weights_()
    assert model.cfg.normalization_type == tl.cfg.normalization_type == "LNPre"
    tokens = tokens_for(cfg)
    with torch.no_grad():
        assert max_diff(model(tokens), tl(_t(tokens)).numpy()) <= 1e-4


@pytest.mark.slow
def test_torch_module_methods():
    model = jtlens.HookedTransformer(jtlens.Config(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=5))
    assert model.eval() is model and model.train() is model and model.cpu() is model
    assert model.cfg.device == jax.devices()[0].platform
    assert jax.tree_util.tree_leaves(model.params)[0].devices() == {jax.devices("cpu")[0]}
    model.to("bfloat16")
    assert model.W_E.dtype == jnp.bfloat16 and model.cfg.dtype == "bfloat16"


def test_tokenizer_padding_side_set_on_the_tokenizer_is_respected():
    from tests.oracle import pair as tl_pair

    tl, model = tl_pair("right")
    texts = ["The cat sat on the mat.", "A dog"]
    before = model.tokenizer.padding_side, tl.tokenizer.padding_side
    try:
        model.tokenizer.padding_side = tl.tokenizer.padding_side = "left"
        ours = model.to_tokens(texts)
        assert np.array_equal(np.asarray(ours), tl.to_tokens(texts).numpy())
        assert int(ours[1, 0]) == model.tokenizer.pad_token_id  # padded on the left
        with torch.no_grad():
            ref = tl(texts).numpy()
        assert max_diff(model(texts)[:, -1], ref[:, -1]) <= 1e-4
    finally:
        model.tokenizer.padding_side, tl.tokenizer.padding_side = before


@pytest.mark.slow
def test_set_tokenizer_and_d_vocab_from_the_tokenizer():
    from tests.oracle import tokenizer

    tok = tokenizer()
    model = jtlens.HookedTransformer(dict(n_layers=1, d_model=16, n_ctx=32, d_head=4), tokenizer=tok)
    assert model.cfg.d_vocab == max(tok.get_vocab().values()) + 1 == model.cfg.d_vocab_out
    bare = jtlens.HookedTransformer(model.cfg, model.params)
    bare.set_tokenizer(tok)
    assert np.array_equal(np.asarray(bare.to_tokens("The cat")), np.asarray(model.to_tokens("The cat")))


def test_tokens_to_residual_directions_of_one_token_is_d_model(pair):
    tl, model = pair
    for tokens in (np.array([5]), np.array([[5]]), 5):
        ref = tl.tokens_to_residual_directions(torch.as_tensor(tokens))
        ours = model.tokens_to_residual_directions(tokens)
        assert ours.shape == tuple(ref.shape) == (model.cfg.d_model,)
        assert max_diff(ours, ref.detach().numpy()) == 0
