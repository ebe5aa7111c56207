"""Property tests (hypothesis): Hooks patches and deltas against a loop of single edits, Config
validation over arbitrary field values, and the tokenizer's round trip. Outcome class: correct
(each property holds on every generated example). Forwards run unrolled (scan=False): each
example's hook functions are new, and a scan would compile them anew every time."""

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jtlens

forward = functools.partial(jtlens.forward, scan=False)

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- Hooks
@st.composite
def patch_cases(draw):
    """(template, layer, boolean mask [batch, pos] as Python lists, seed) for a [2, 6] batch."""
    template = draw(st.sampled_from(["hook_resid_pre", "hook_resid_mid", "hook_mlp_out",
                                     "attn.hook_z", "mlp.hook_post"]))
    layer = draw(st.integers(0, 1))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=2, max_size=2))
    return template, layer, mask, draw(st.integers(0, 2**16))


@SETTINGS
@given(case=patch_cases())
@pytest.mark.slow
def test_a_masked_patch_equals_a_loop_of_single_position_patches(tiny, case):
    cfg, params, tokens = tiny
    template, layer, mask, seed = case
    name = f"blocks.{layer}.{template}"
    _, cache = jtlens.forward_with_cache(params, tokens, cfg, jtlens.Hooks(capture=[name]),
                                         scan=False)
    value = np.random.default_rng(seed).normal(size=cache[name].shape).astype(np.float32)
    m = np.asarray(mask)
    where = m.reshape(m.shape + (1,) * (value.ndim - 2))
    patched = forward(params, tokens, cfg, jtlens.Hooks(patch={name: (value, where)}))

    def one_at_a_time(act, hook):
        for b, p in zip(*np.nonzero(m)):
            act = act.at[b, p].set(value[b, p])
        return act

    looped = forward(params, tokens, cfg, jtlens.Hooks(fns={name: one_at_a_time}))
    np.testing.assert_allclose(patched, looped, atol=1e-6)


@SETTINGS
@given(layer=st.integers(0, 1), seed=st.integers(0, 2**16), scale=st.floats(-3, 3))
def test_a_blocks_star_delta_equals_per_layer_deltas(tiny, layer, seed, scale):
    cfg, params, tokens = tiny
    delta = scale * np.random.default_rng(seed).normal(size=(2, 1, 1, 16)).astype(np.float32)
    stacked = forward(params, tokens, cfg, jtlens.Hooks(add={"blocks.*.hook_resid_pre": delta}))
    per_layer = forward(params, tokens, cfg, jtlens.Hooks(
        add={f"blocks.{l}.hook_resid_pre": delta[l] for l in range(2)}))
    np.testing.assert_allclose(stacked, per_layer, atol=1e-5)
    by_fn = forward(params, tokens, cfg, jtlens.Hooks(
        fns={f"blocks.{l}.hook_resid_pre": (lambda d: lambda a, h: a + d)(delta[l]) for l in range(2)}))
    np.testing.assert_allclose(stacked, by_fn, atol=1e-5)


# ----------------------------------------------------------------------------- Config
INT_LIKE = st.one_of(st.integers(-3, 40), st.sampled_from(["2", 2.0, None, True]))


@settings(max_examples=300, deadline=None)
@given(n_layers=INT_LIKE, d_model=INT_LIKE, d_head=INT_LIKE, n_heads=INT_LIKE, d_mlp=INT_LIKE,
       d_vocab=INT_LIKE, n_ctx=INT_LIKE, kv=INT_LIKE)
def test_config_is_valid_or_a_one_line_config_error(n_layers, d_model, d_head, n_heads, d_mlp,
                                                    d_vocab, n_ctx, kv):
    fields = dict(n_layers=n_layers, d_model=d_model, d_head=d_head, n_heads=n_heads, d_mlp=d_mlp,
                  d_vocab=d_vocab, n_ctx=n_ctx, n_key_value_heads=kv)
    try:
        cfg = jtlens.Config(**fields)
    except ValueError as err:  # never a ZeroDivisionError, TypeError or numpy message
        assert str(err).startswith("Config: ") and "\n" not in str(err)
        return
    for name in ("n_layers", "d_model", "d_head", "n_heads", "d_vocab", "n_ctx", "n_kv_heads"):
        v = getattr(cfg, name)
        assert type(v) is int and v > 0, (name, v)
    assert cfg.d_mlp is None or (type(cfg.d_mlp) is int and cfg.d_mlp > 0)
    assert cfg.n_heads % cfg.n_kv_heads == 0
    if n_heads == -1:
        assert cfg.n_heads * cfg.d_head == cfg.d_model


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer_model(shipped):
    return shipped


@pytest.mark.slow
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=60))
def test_tokenizer_round_trip(shipped, text):
    ids = shipped.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert shipped.tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    if len(ids) + 1 > shipped.cfg.n_ctx:  # past the context: kept whole (as TransformerLens) or cut
        assert shipped.to_tokens(text, truncate=False)[0, 1:].tolist() == ids
        assert shipped.to_tokens(text).shape == (1, shipped.cfg.n_ctx)
        return
    tokens = shipped.to_tokens(text, prepend_bos=False, truncate=False)
    assert tokens.dtype == np.int32 and tokens[0].tolist() == ids
    assert shipped.to_string(tokens[0]) == text
    with_bos = shipped.to_tokens(text)
    assert int(with_bos[0, 0]) == shipped.tokenizer.bos_token_id
    np.testing.assert_array_equal(with_bos[0, 1:], tokens[0])
