"""Python hook functions called back from the compiled forward (jtlens/tl/host_hooks.py): the
numbers of the eager layer-by-layer run, one compiled program for any number of fresh
closures, TransformerLens's view of the hook (concrete activation, int layer, ctx), errors
raised as the hook raised them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.tl import hooked_transformer


@pytest.fixture(scope="module")
def model():
    cfg = jtlens.Config(n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=40,
                        n_ctx=12, act_fn="gelu_new")
    return jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(3)))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 7)))


def _ablate(z, hook, head):
    return z.at[:, :, head].set(0.0)


def _eager(model, fwd_hooks):
    model._host_callbacks = False
    try:
        return model.run_with_hooks(TOKENS, fwd_hooks=fwd_hooks)
    finally:
        del model._host_callbacks


def test_hooked_runs_equal_the_eager_ones(model):
    hooks = [("blocks.1.attn.hook_z", functools.partial(_ablate, head=1)),
             ("blocks.2.hook_resid_pre", lambda x, hook: x * 0.5),
             ("hook_embed", lambda x, hook: x + 1.0)]
    got, want = model.run_with_hooks(TOKENS, fwd_hooks=hooks), _eager(model, hooks)
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max())
    assert float(jnp.abs(got - model(TOKENS)).max()) > 1e-3  # the hooks did something


def test_fresh_closures_reuse_one_compiled_program(model):
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_z", functools.partial(_ablate, head=0))])
    size = hooked_transformer._forward_jit._cache_size()
    outs = [model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_z",
                                                     functools.partial(_ablate, head=h))])
            for h in range(2)]
    assert hooked_transformer._forward_jit._cache_size() == size
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-4  # each call ran its own function


def test_the_hook_sees_what_transformer_lens_shows(model):
    seen = []

    def look(x, hook):
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1
        seen.append((hook.name, hook.layer(), type(hook.layer()), np.asarray(x), hook.ctx["calls"]))

    model.add_hook(lambda name: name.endswith("hook_resid_post"), look)
    try:
        _, cache = model.run_with_cache(TOKENS)
        model(TOKENS)
    finally:
        model.reset_hooks()
    assert [s[:3] for s in seen[:3]] == [(f"blocks.{l}.hook_resid_post", l, int) for l in range(3)]
    for name, _, _, x, _ in seen[:3]:
        np.testing.assert_array_equal(x, cache[name])
    assert [s[4] for s in seen] == [1, 1, 1, 2, 2, 2]  # each point's ctx persists across calls


def test_two_hooks_on_one_point_apply_in_order(model):
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: x + 1.0),
             ("blocks.0.hook_resid_post", lambda x, hook: x * 3.0)]
    got, want = model.run_with_hooks(TOKENS, fwd_hooks=hooks), _eager(model, hooks)
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max())


def test_a_hook_error_is_raised_as_the_hook_raised_it(model):
    def broken(x, hook):
        raise KeyError("no such feature")

    with pytest.raises(KeyError, match="no such feature"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", broken)])
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x[0])])
    with pytest.raises(TypeError, match="in place"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_z", _in_place)])
    assert float(jnp.abs(model(TOKENS) - model(TOKENS)).max()) == 0.0  # nothing left registered


def _in_place(z, hook):
    z[:, :, 0] = 0.0


def test_a_hook_may_run_the_model(model):
    inner = []

    def run_again(x, hook):
        if not inner:  # the inner run fires this hook too (it is still registered), as in TL
            inner.append(None)
            inner[0] = model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda e, h: e * 0.0)])
        return x

    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.2.hook_resid_pre", run_again)])
    want = model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda e, h: e * 0.0)])
    np.testing.assert_allclose(inner[0], want, rtol=0, atol=1e-6)
