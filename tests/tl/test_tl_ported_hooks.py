"""TransformerLens 3.x's tests/integration/test_hooks.py, ported (see tests/tl_port.py) on a small
random model of solu-1l's kind (TL loads solu-1l from the hub), on TransformerLens 3.9 and on
jtlens.

Two differences are jtlens's by design and are checked as its documented equivalents:
backward hooks (jtlens has no autograd hooks: gradients at an activation come from `jax.grad`,
`jtlens.grads.grad_cache`), and in-place edits of an activation (JAX arrays are immutable: a
hook returns an edited copy)."""

import numpy as np
import pytest

import jtlens
from tests.tl_port import lib, model as make_model, np_  # noqa: F401  (lib is the fixture)

PROMPT = "Hello World!"


def embed(name):
    return name == "hook_embed"


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, *args, **kwargs):
        self.count += 1


@pytest.fixture
def model(lib):
    return make_model(lib, n_layers=1, act_fn="solu_ln")


def n_hooks(model, name="hook_embed"):
    return len(model.hook_dict[name].fwd_hooks)


@pytest.mark.slow
def test_hook_attaches_normally(model):
    c = Counter()
    model.run_with_hooks(PROMPT, fwd_hooks=[(embed, c.inc)])
    assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())
    assert c.count == 1


def test_perma_hook_attaches_normally(model):
    c = Counter()
    model.add_perma_hook(embed, c.inc)
    assert n_hooks(model) == 1
    model.run_with_hooks(PROMPT, fwd_hooks=[])
    assert n_hooks(model) == 1 and c.count == 1


def test_hook_context_manager(model):
    c = Counter()
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        assert n_hooks(model) == 1
        model.forward(PROMPT)
    assert n_hooks(model) == 0 and c.count == 1


def test_nested_hook_context_manager(model):
    c = Counter()
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        model.forward(PROMPT)
        assert n_hooks(model) == 1 and c.count == 1
        with model.hooks(fwd_hooks=[(embed, c.inc)]):
            assert n_hooks(model) == 2
            model.forward(PROMPT)
            assert c.count == 3
        assert n_hooks(model) == 1
    assert n_hooks(model) == 0 and c.count == 3


def test_context_manager_run_with_cache(model):
    c = Counter()
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        model.run_with_cache(PROMPT)
        assert n_hooks(model) == 1
    assert n_hooks(model) == 0 and c.count == 1


@pytest.mark.parametrize("returns", ["tuple", "bare", "none"])
@pytest.mark.slow
def test_backward_hook(lib, model, returns):
    """test_backward_hook_runs_successfully / _returning_bare_tensor / _returning_none."""
    name = "hook_embed" if returns == "tuple" else "blocks.0.hook_resid_post"
    c = Counter()

    def hook(grad, hook):
        c.inc()
        return {"tuple": (grad,), "bare": grad, "none": None}[returns]

    if lib.name == "jtlens":
        # No autograd hooks: the gradient at the activation is what jax.grad gives.
        with pytest.raises(NotImplementedError, match="grad"):
            with model.hooks(bwd_hooks=[(name, hook)]):
                pass
        tokens = model.to_tokens(PROMPT)
        value, grads = jtlens.grads.grad_cache(model.params, model.cfg, tokens,
                                               lambda logits: logits.sum(), names_filter=name)
        assert np.isfinite(np_(value)) and np_(grads[name]).shape[-1] == model.cfg.d_model
        return
    with model.hooks(bwd_hooks=[(name, hook)]):
        out = model(PROMPT)
        assert c.count == 0
        out.sum().backward()
    assert c.count == 1


def test_hook_context_manager_with_permanent_hook(model):
    c = Counter()
    model.add_perma_hook(embed, c.inc)
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        assert n_hooks(model) == 2
        model.forward(PROMPT)
    assert n_hooks(model) == 1 and c.count == 2


def test_nested_context_manager_with_failure(model):
    def fail_hook(z, hook):
        raise ValueError("fail")

    c = Counter()
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        with pytest.raises(ValueError):
            with model.hooks(fwd_hooks=[(embed, fail_hook)]):
                assert n_hooks(model) == 2
                model.forward(PROMPT)
        assert n_hooks(model) == 1 and c.count == 1
    assert n_hooks(model) == 0


def test_reset_hooks_in_context_manager(model):
    c = Counter()
    with model.hooks(fwd_hooks=[(embed, c.inc)]):
        model.reset_hooks()
        assert n_hooks(model) == 0
    assert n_hooks(model) == 0


def test_remove_hook(model):
    c = Counter()
    model.add_perma_hook(embed, c.inc)
    model.remove_all_hook_fns()
    assert n_hooks(model) == 1
    model.remove_all_hook_fns(including_permanent=True)
    assert n_hooks(model) == 0
    model.run_with_hooks(PROMPT, fwd_hooks=[])
    assert c.count == 0


@pytest.mark.slow
def test_conditional_hooks(model):
    def identity_hook(z, hook):
        return z

    for name, setter in [("blocks.0.attn.hook_result", model.set_use_attn_result),
                         ("blocks.0.hook_q_input", model.set_use_split_qkv_input),
                         ("blocks.0.hook_mlp_in", model.set_use_hook_mlp_in),
                         ("blocks.0.hook_attn_in", model.set_use_attn_in)]:
        model.reset_hooks()
        setter(False)
        with pytest.raises(AssertionError):
            model.add_hook(name, identity_hook)
        setter(True)
        model.add_hook(name, identity_hook)
        setter(False)
    n_pos = np_(model.to_tokens(PROMPT)).shape[1]
    shapes = {3: (1, n_pos, model.cfg.d_model), 4: (1, n_pos, model.cfg.n_heads, model.cfg.d_model)}
    for name, setter, ndim in [("blocks.0.hook_q_input", model.set_use_split_qkv_input, 4),
                               ("blocks.0.hook_attn_in", model.set_use_attn_in, 4),
                               ("blocks.0.hook_mlp_in", model.set_use_hook_mlp_in, 3)]:
        model.reset_hooks()
        setter(True)
        cache = model.run_with_cache(PROMPT, names_filter=lambda x: x == name)[1]
        assert list(cache.keys()) == [name]
        assert tuple(cache[name].shape) == shapes[ndim]
        setter(False)


@pytest.mark.parametrize("zero_attach_pos, prepend", [(z, p) for z in range(2) for p in (True, False)])
@pytest.mark.slow
def test_prepending_hooks(lib, model, zero_attach_pos, prepend):
    # TL zeroes in place (`z[:] = 0.0`); jtlens hooks return the edited copy (arrays are
    # immutable), which TL accepts too, so one body runs on both.
    rng = np.random.default_rng(0)

    def set_to_zero(z, hook):
        return z * 0

    def set_to_randn(z, hook):
        return lib.tensor(rng.standard_normal(tuple(z.shape)).astype(np.float32) * 0.1)

    model.reset_hooks()
    for hook_idx in range(2):
        model.add_hook("blocks.0.hook_resid_post",
                       set_to_zero if hook_idx == zero_attach_pos else set_to_randn, prepend=prepend)
    logits = np_(model(lib.tensor(np.arange(5)[None, :])))
    is_bias = (zero_attach_pos == 1) != prepend
    assert np.allclose(logits, np_(model.unembed.b_U)[None, :]) == is_bias
