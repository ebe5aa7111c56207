"""The HookedTransformer facade against TransformerLens 3.9's on the same weights."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch


@functools.lru_cache(maxsize=None)
def pair(name):
    tl = tl_model(CONFIGS[name])
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params)


def tt(x):
    return torch.as_tensor(np.asarray(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_return_types_match(name):
    tl, model = pair(name)
    tokens = tokens_for(model.cfg)
    with torch.no_grad():
        ref_loss = tl(tt(tokens), return_type="loss").item()
        ref_tok = tl(tt(tokens), return_type="loss", loss_per_token=True).numpy()
        ref_resid = tl(tt(tokens), stop_at_layer=1).numpy()
    assert abs(float(model(tokens, return_type="loss")) - ref_loss) < 1e-5
    assert max_diff(model(tokens, return_type="loss", loss_per_token=True), ref_tok) < 1e-5
    both = model(tokens, return_type="both")
    assert max_diff(both.loss, ref_loss) < 1e-5 and both.logits.shape == (2, 12, model.cfg.d_vocab)
    assert max_diff(model(tokens, stop_at_layer=1), ref_resid) < 1e-5
    assert model(tokens, return_type=None) is None


@pytest.mark.slow
def test_run_with_hooks_matches_transformerlens():
    tl, model = pair("gpt2")
    tokens = tokens_for(model.cfg)

    def ablate_head(z, hook, head=2):
        assert hook.name == "blocks.1.attn.hook_z" and hook.layer() == 1
        return z.at[:, :, head].set(0.0) if isinstance(z, jnp.ndarray) else z.index_fill(2, torch.tensor([head]), 0.0)

    def scale_mlp(act, hook):
        return act * (1.0 + hook.layer())

    with torch.no_grad():
        ref = tl.run_with_hooks(tt(tokens), fwd_hooks=[("blocks.1.attn.hook_z", ablate_head),
                                                     (lambda n: n.endswith("mlp_out"), scale_mlp)]).numpy()
    ours = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate_head),
                                                   (lambda n: n.endswith("mlp_out"), scale_mlp)])
    assert max_diff(ours, ref) < 1e-4
    # hooks are gone afterwards
    assert max_diff(model(tokens), tl(tt(tokens)).detach().numpy()) < 1e-4


@pytest.mark.slow
def test_hooks_context_and_run_with_cache_filters():
    tl, model = pair("gpt2")
    tokens = tokens_for(model.cfg)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert cache.keys() == [f"blocks.{l}.attn.hook_pattern" for l in range(2)]
    _, cache = model.run_with_cache(tokens[:1], names_filter="blocks.0.hook_resid_post", remove_batch_dim=True)
    assert cache["resid_post", 0].shape == (12, 64)
    zero = lambda act, hook: jnp.zeros_like(act)
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero)]):
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_attn_out"])
    assert float(jnp.abs(cache["attn_out", 0]).max()) == 0.0
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_attn_out"])
    assert float(jnp.abs(cache["attn_out", 0]).max()) > 0.0


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_weight_properties_match(name):
    tl, model = pair(name)
    for attr in ["W_E", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
                 "W_in", "W_out", "b_in", "b_out"] + (["W_pos"] if name == "gpt2" else ["W_gate"]):
        assert max_diff(getattr(model, attr), getattr(tl, attr).detach().numpy()) == 0.0, attr
    for l in range(model.cfg.n_layers):
        assert max_diff(model.blocks[l].attn.W_V, tl.blocks[l].attn.W_V.detach().numpy()) == 0.0
        assert jnp.array_equal(model.blocks[l].attn.W_V, model.W_V[l])
        assert jnp.array_equal(model.blocks[l].mlp.W_in, model.W_in[l])


def test_bwd_hooks_point_to_jax_grad():
    _, model = pair("gpt2")
    with pytest.raises(NotImplementedError, match="jax.grad"):
        model.run_with_hooks(tokens_for(model.cfg), bwd_hooks=[("hook_embed", lambda g, h: g)])


def test_facade_checks_token_ids_before_compiling():
    _, model = pair("gpt2")
    bad = np.array([[1, 2, model.cfg.d_vocab]])
    for call in (model, model.run_with_cache, lambda t: model(t, return_type="loss")):
        with pytest.raises(ValueError, match=f"token id {model.cfg.d_vocab} is outside the vocabulary"):
            call(bad)
