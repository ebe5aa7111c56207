"""Adversarial inputs to the library API: each case is a one-line error naming the problem, or
the correct result. Case ids start with their outcome class (`error-` or `correct-`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens import masks as M
from jtlens import patching
from jtlens.checks import checked

BASE = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=10)
fwd = jax.jit(jtlens.forward, static_argnames=("cfg", "start_at_layer", "stop_at_layer"))


# ----------------------------------------------------------------------------- Config
CONFIG_ERRORS = [
    (dict(d_head=0), "d_head=0 must be positive"),
    (dict(d_head=-4), "d_head=-4 must be positive"),
    (dict(d_model=0), "d_model=0 must be positive"),
    (dict(d_model=-16), "d_model=-16 must be positive"),
    (dict(n_layers=-1), "n_layers=-1 must be >= 0"),
    (dict(n_layers="2"), "n_layers='2' must be an integer"),
    (dict(n_layers=2.0), "n_layers=2.0 must be an integer"),
    (dict(n_layers=True), "n_layers=True must be an integer"),
    (dict(n_ctx=0), "n_ctx=0 must be positive"),
    (dict(d_vocab=0), "d_vocab=0 must be positive"),
    (dict(d_mlp=0), "d_mlp=0 must be positive"),
    (dict(d_mlp=-8), "d_mlp=-8 must be positive"),
    (dict(n_heads=0), "n_heads=0 must be positive"),
    (dict(n_heads=-2), "n_heads=-2 must be positive"),
    (dict(n_heads=4, n_key_value_heads=3), "n_heads=4 is not a multiple of n_key_value_heads=3"),
    (dict(n_key_value_heads=0), "n_key_value_heads=0 must be positive"),
    (dict(act_fn="gelu2"), "act_fn='gelu2' is not one of"),
    (dict(normalization_type="BN"), "normalization_type='BN' is not one of"),
    (dict(positional_embedding_type="learned"), "positional_embedding_type='learned' is not one of"),
    (dict(attention_dir="left"), "attention_dir='left' must be 'causal' or 'bidirectional'"),
    (dict(dtype="int8"), "dtype='int8' is not one of"),
    (dict(gated_mlp="no"), "gated_mlp='no' must be True or False"),
    (dict(attn_only=1), "attn_only=1 must be True or False"),
    (dict(eps=0.0), "eps=0.0 must be positive"),
    (dict(eps="1e-5"), "eps='1e-5' must be a number"),
    (dict(d_model=16, d_head=5), "d_model=16 is not a multiple of d_head=5; pass n_heads"),
    (dict(positional_embedding_type="rotary", rotary_dim=3), "rotary_dim=3 must be even"),
    (dict(use_local_attn=True), "use_local_attn needs window_size and attn_types"),
    (dict(use_local_attn=True, window_size=2, attn_types=("local",)),
     "attn_types has 1 entries for 2 layers"),
    (dict(window_size=0), "window_size=0 must be positive"),
    (dict(post_ln=True, normalization_type="RMS"), "post_ln .* need normalization_type='LN'"),
    (dict(n_token_types=-1), "n_token_types=-1 must be >= 0"),
    (dict(mlm_head=True), "mlm_head are parts of a BERT encoder"),
]


@pytest.mark.parametrize("changes, message", CONFIG_ERRORS,
                         ids=[f"error-{'-'.join(f'{k}={v}' for k, v in c.items())}"
                              for c, _ in CONFIG_ERRORS])
def test_config_refuses(changes, message, one_line_error):
    with pytest.raises(ValueError) as e:
        jtlens.Config(**{**BASE, **changes})
    one_line_error(e, "^Config: .*" + message)


def test_config_from_dict_refuses_unknown_fields(one_line_error):  # error
    with pytest.raises(ValueError) as e:
        jtlens.Config.from_dict({**BASE, "n_layer": 2})
    one_line_error(e, r"unknown fields \['n_layer'\]")


@pytest.mark.parametrize("changes, check", [
    (dict(d_model=16, d_head=4, n_heads=2), lambda c: c.n_heads == 2),  # n_heads*d_head != d_model (Gemma)
    (dict(n_layers=np.int64(2), d_model=np.int32(16)), lambda c: c.n_layers == 2),
    (dict(eps=np.float32(1e-6)), lambda c: c.eps > 0),
    (dict(n_token_types=0), lambda c: c.n_token_types == 0),
], ids=["correct-explicit-n_heads", "correct-numpy-ints", "correct-numpy-eps", "correct-zero-types"])
def test_config_accepts(changes, check):
    assert check(jtlens.Config(**{**BASE, **changes}))


# ----------------------------------------------------------------------------- tokens
TOKEN_ERRORS = [
    (lambda t: t[0], "tokens must be \\[batch, pos\\]; got shape \\(6,\\)"),
    (lambda t: t[None], "tokens must be \\[batch, pos\\]; got shape \\(1, 2, 6\\)"),
    (lambda t: t[:, :0], "tokens of shape \\(2, 0\\) are empty"),
    (lambda t: t[:0], "tokens of shape \\(0, 6\\) are empty"),
    (lambda t: t.astype(jnp.float32), "tokens hold float32 values; token ids must be integers"),
    (lambda t: t > 3, "tokens hold bool values"),
    (lambda t: t.at[0, 2].set(-1), "token id -1 is outside the vocabulary \\[0, 50\\)"),
    (lambda t: t.at[1, 0].set(50), "token id 50 is outside the vocabulary \\[0, 50\\)"),
    (lambda t: jnp.zeros((1, 13), jnp.int32), "sequence of 13 tokens is longer than .* n_ctx=12"),
]


@pytest.mark.parametrize("edit, message", TOKEN_ERRORS,
                         ids=[f"error-tokens-{i}" for i in range(len(TOKEN_ERRORS))])
def test_bad_tokens_to_forward(tiny, edit, message, one_line_error):
    cfg, params, tokens = tiny
    with pytest.raises(ValueError) as e:
        jtlens.forward(params, edit(tokens), cfg)
    one_line_error(e, message)


@pytest.mark.parametrize("edit, message", TOKEN_ERRORS[1:],
                         ids=[f"error-facade-tokens-{i}" for i in range(1, len(TOKEN_ERRORS))])
def test_bad_tokens_to_the_facade(tiny, tiny_model, edit, message, one_line_error):
    with pytest.raises(ValueError) as e:
        tiny_model(edit(tiny[2]))
    one_line_error(e, message)


def test_facade_takes_one_sequence_as_a_batch_of_one(tiny, tiny_model):  # correct (as TransformerLens)
    cfg, params, tokens = tiny
    np.testing.assert_allclose(tiny_model(tokens[0]), fwd(params, tokens[:1], cfg=cfg), atol=1e-6)


@pytest.mark.parametrize("bad_id", [-1, 50, 10_000], ids=["error-jit-neg", "error-jit-vocab",
                                                        "error-jit-far"])
def test_traced_out_of_range_ids_give_nan_never_another_row(tiny, bad_id):
    """The pure forward's documented contract under jit: NaN logits, not a wrapped embedding."""
    cfg, params, tokens = tiny
    logits = np.asarray(fwd(params, tokens.at[0, 2].set(bad_id), cfg=cfg))
    assert np.isnan(logits[0, 2:]).all()  # the bad position and every later one (they attend to it)
    assert not np.isnan(logits[1]).any()  # the other sequence is untouched


@pytest.mark.slow
@pytest.mark.parametrize("how", ["jit", "vmap", "grad"])
@pytest.mark.parametrize("bad_id", [-1, 50], ids=["neg", "vocab"])
def test_checked_mode_names_bad_ids_under_transformations(tiny, how, bad_id, one_line_error):  # error
    cfg, params, tokens = tiny
    bad = tokens.at[1, 3].set(bad_id)
    if how == "jit":
        run = checked(lambda t: fwd(params, t, cfg=cfg))
    elif how == "vmap":
        run = checked(jax.vmap(lambda t: jtlens.forward(params, t[None], cfg)))
    else:
        run = checked(jax.grad(lambda p, t: jtlens.forward(p, t, cfg, return_type="loss")))
        run = (lambda r: lambda t: r(params, t))(run)
    with pytest.raises(ValueError) as e:
        run(bad)
    one_line_error(e, f"^token id {bad_id} is outside the vocabulary \\[0, 50\\)")


def test_checked_mode_is_the_plain_forward_on_good_ids(tiny):  # correct
    cfg, params, tokens = tiny
    np.testing.assert_array_equal(checked(lambda t: fwd(params, t, cfg=cfg))(tokens),
                                  fwd(params, tokens, cfg=cfg))


# ----------------------------------------------------------------------------- attention masks
MASK_ERRORS = [
    (lambda m: m.at[0, 1].set(2), "attention_mask value 2 is outside \\[0, 2\\)"),
    (lambda m: m * 2, "attention_mask value 2 is outside"),
    (lambda m: m.at[1, 0].set(-1), "attention_mask value -1 is outside"),
    (lambda m: m.astype(jnp.float32), "attention_mask holds float32 values; it must be integers"),
    (lambda m: m.astype(jnp.float32) * 0.5, "attention_mask holds float32 values"),
    (lambda m: m[:1], "attention_mask has shape \\(1, 6\\); it must match .* \\(2, 6\\)"),
    (lambda m: jnp.concatenate([m, m]), "attention_mask has shape \\(4, 6\\)"),
    (lambda m: m[:, :5], "attention_mask has shape \\(2, 5\\)"),
    (lambda m: m[0], "attention_mask has shape \\(6,\\)"),
]


@pytest.mark.parametrize("edit, message", MASK_ERRORS,
                         ids=[f"error-mask-{i}" for i in range(len(MASK_ERRORS))])
@pytest.mark.parametrize("entry", ["forward", "facade"])
def test_bad_attention_masks(tiny, tiny_model, edit, message, entry, one_line_error):
    cfg, params, tokens = tiny
    bad = edit(jnp.ones(tokens.shape, jnp.int32))
    with pytest.raises(ValueError) as e:
        if entry == "forward":
            jtlens.forward(params, tokens, cfg, attention_mask=bad)
        else:
            tiny_model(tokens, attention_mask=bad)
    one_line_error(e, message)


def test_mask_of_batch_two_for_tokens_of_batch_one(tiny, one_line_error):  # error (it used to broadcast)
    cfg, params, tokens = tiny
    with pytest.raises(ValueError) as e:
        jtlens.forward(params, tokens[:1], cfg, attention_mask=jnp.ones((2, 6), jnp.int32))
    one_line_error(e, "attention_mask has shape \\(2, 6\\); it must match the tokens' .* \\(1, 6\\)")


def test_traced_mask_of_twos_is_named_in_checked_mode(tiny, one_line_error):  # error
    cfg, params, tokens = tiny
    run = checked(jax.jit(lambda m: jtlens.forward(params, tokens, cfg, attention_mask=m)))
    with pytest.raises(ValueError) as e:
        run(jnp.full(tokens.shape, 2, jnp.int32))
    one_line_error(e, "^attention_mask value 2 is outside")


def test_boolean_mask_equals_integer_mask(tiny):  # correct
    cfg, params, tokens = tiny
    m = jnp.ones(tokens.shape, jnp.int32).at[0, :2].set(0)
    np.testing.assert_array_equal(jtlens.forward(params, tokens, cfg, attention_mask=m.astype(bool)),
                                  jtlens.forward(params, tokens, cfg, attention_mask=m))


# ----------------------------------------------------------------------------- layer ranges
def _resid(params, tokens, cfg, name):
    _, cache = jtlens.forward_with_cache(params, tokens, cfg, jtlens.Hooks(capture=[name]))
    return cache[name]


@pytest.mark.slow
@pytest.mark.parametrize("stop, same_as", [(-5, "blocks.0.hook_resid_pre"), (-2, "blocks.0.hook_resid_pre"),
                                           (-1, "blocks.1.hook_resid_pre"), (0, "blocks.0.hook_resid_pre"),
                                           (2, "blocks.1.hook_resid_post"),
                                           (5, "blocks.1.hook_resid_post")],
                         ids=["correct-stop-5", "correct-stop-2", "correct-stop-1", "correct-stop0",
                              "correct-stop2", "correct-stop5"])
def test_stop_at_layer_is_python_slicing(tiny, stop, same_as):
    cfg, params, tokens = tiny
    np.testing.assert_allclose(fwd(params, tokens, cfg=cfg, stop_at_layer=stop),
                               _resid(params, tokens, cfg, same_as), atol=1e-6)


@pytest.mark.parametrize("start", [-1, 1], ids=["correct-start-1", "correct-start1"])
def test_start_at_layer_negative_counts_from_the_end(tiny, start):
    cfg, params, tokens = tiny
    resid = _resid(params, tokens, cfg, "blocks.1.hook_resid_pre")
    np.testing.assert_allclose(fwd(params, resid, cfg=cfg, start_at_layer=start),
                               fwd(params, tokens, cfg=cfg), atol=1e-5)


def test_start_at_n_layers_runs_only_the_unembed(tiny):  # correct
    cfg, params, tokens = tiny
    resid = _resid(params, tokens, cfg, "blocks.1.hook_resid_post")
    np.testing.assert_allclose(fwd(params, resid, cfg=cfg, start_at_layer=2),
                               fwd(params, tokens, cfg=cfg), atol=1e-5)


def test_start_after_stop_runs_no_block(tiny):  # correct (Python slicing: blocks[1:0] is empty)
    cfg, params, tokens = tiny
    resid = _resid(params, tokens, cfg, "blocks.1.hook_resid_pre")
    np.testing.assert_array_equal(jtlens.forward(params, resid, cfg, start_at_layer=1,
                                                 stop_at_layer=0), resid)


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(start_at_layer=3), ValueError, "start_at_layer=3 is beyond the model's 2 layers"),
    (dict(start_at_layer=99), ValueError, "start_at_layer=99 is beyond"),
    (dict(start_at_layer=1.5), TypeError, "start_at_layer=1.5 must be an int or None"),
    (dict(stop_at_layer="1"), TypeError, "stop_at_layer='1' must be an int or None"),
    (dict(stop_at_layer=True), TypeError, "stop_at_layer=True must be an int"),
], ids=["error-start3", "error-start99", "error-start-float", "error-stop-str", "error-stop-bool"])
def test_bad_layer_ranges(tiny, kwargs, exc, message, one_line_error):
    cfg, params, tokens = tiny
    inp = tokens if "start_at_layer" not in kwargs else jnp.zeros((2, 6, 16))
    with pytest.raises(exc) as e:
        jtlens.forward(params, inp, cfg, **kwargs)
    one_line_error(e, message)


@pytest.mark.parametrize("kwargs, message", [
    (dict(return_type="logit"), "return_type='logit'; use 'logits', 'loss', 'both' or None"),
    (dict(token_type_ids=jnp.zeros((2, 6), jnp.int32)), "token_type_ids given, but this model has no"),
], ids=["error-return-type", "error-token-types-on-decoder"])
def test_bad_forward_options(tiny, kwargs, message, one_line_error):
    cfg, params, tokens = tiny
    with pytest.raises(ValueError) as e:
        jtlens.forward(params, tokens, cfg, **kwargs)
    one_line_error(e, message)


# ----------------------------------------------------------------------------- hooks
def _fn_returning(value):
    return lambda act, hook: value


HOOK_ERRORS = [
    (dict(fns={"blocks.0.hook_resid_pre": _fn_returning(0.5)}), TypeError,
     "hook function at 'blocks.0.hook_resid_pre' returned a float; return an array"),
    (dict(fns={"blocks.0.hook_resid_pre": _fn_returning([1.0])}), TypeError, "returned a list"),
    (dict(fns={"hook_embed": lambda a, h: a[:, :1]}), ValueError,
     "hook function at 'hook_embed' returned shape \\(2, 1, 16\\); the activation has shape"),
    (dict(patch={"blocks.0.hook_resid_pre": (jnp.zeros((2, 6, 16)), jnp.full((1, 6, 1), 0.5))}),
     TypeError, "patch mask holds float32 values; it must be boolean"),
    (dict(patch={"blocks.0.hook_resid_pre": (jnp.zeros((2, 6, 16)), jnp.ones((1, 6, 1), jnp.int32))}),
     TypeError, "patch mask holds int32 values; it must be boolean"),
    (dict(patch={"blocks.0.hook_resid_pre": (jnp.zeros((3, 6, 16)), None)}), ValueError,
     "value of shape \\(3, 6, 16\\) does not broadcast to the activation's shape \\(2, 6, 16\\)"),
    (dict(patch={"blocks.*.hook_resid_pre": (jnp.zeros((6, 16)), None)}), ValueError,
     "needs a leading layer axis of size 2"),
    (dict(add={"blocks.1.hook_resid_post": jnp.zeros((7,))}), ValueError,
     "delta of shape \\(7,\\) does not broadcast"),
    (dict(patch={"blocks.5.hook_resid_pre": (0.0, None)}), ValueError,
     "layer 5 is out of range for a model with 2 layers"),
    (dict(add={"blocks.0.hook_resid_pr": 0.0}), ValueError,
     "Unknown hook name 'blocks.0.hook_resid_pr'.*Nearest valid names"),
    (dict(capture=42), TypeError, "names_filter / capture=42: give True, a hook name"),
    (dict(capture=3.5), TypeError, "capture=3.5"),
    (dict(capture="hook_nothing"), ValueError, "Unknown hook name"),
]


@pytest.mark.parametrize("hooks, exc, message", HOOK_ERRORS,
                         ids=[f"error-hooks-{i}" for i in range(len(HOOK_ERRORS))])
def test_bad_hooks(tiny, hooks, exc, message, one_line_error):
    cfg, params, tokens = tiny
    with pytest.raises(exc) as e:
        jtlens.forward_with_cache(params, tokens, cfg, jtlens.Hooks(**hooks))
    one_line_error(e, message)


@pytest.mark.parametrize("names_filter, exc, message", [
    (42, TypeError, "names_filter / capture=42"),
    (3.0, TypeError, "capture=3.0"),
    ("resid_prex", ValueError, "Unknown hook name"),
], ids=["error-names_filter-int", "error-names_filter-float", "error-names_filter-typo"])
def test_run_with_cache_bad_names_filter(tiny_model, tiny, names_filter, exc, message, one_line_error):
    with pytest.raises(exc) as e:
        tiny_model.run_with_cache(tiny[2], names_filter=names_filter)
    one_line_error(e, message)


def test_run_with_hooks_hook_returning_float(tiny_model, tiny, one_line_error):  # error
    with pytest.raises(TypeError) as e:
        tiny_model.run_with_hooks(tiny[2], fwd_hooks=[("blocks.0.attn.hook_z", _fn_returning(1.0))])
    one_line_error(e, "returned a float")


def test_names_filter_none_captures_everything(tiny_model, tiny):  # correct
    _, cache = tiny_model.run_with_cache(tiny[2], names_filter=None)
    assert set(cache.keys()) == set(jtlens.hook_names(tiny[0]))


def test_negative_layer_tuple_counts_from_the_end(tiny):  # correct
    cfg, params, tokens = tiny
    run = functools.partial(jtlens.forward_with_cache, params, tokens, cfg)
    _, by_tuple = run(jtlens.Hooks(capture=[("resid_pre", -1)]))
    _, by_name = run(jtlens.Hooks(capture=["blocks.1.hook_resid_pre"]))
    np.testing.assert_array_equal(by_tuple["blocks.1.hook_resid_pre"], by_name["blocks.1.hook_resid_pre"])


# ----------------------------------------------------------------------------- tokenization
@pytest.mark.parametrize("call, exc, message", [
    (lambda m: m.to_tokens(["a b", "c"], padding_side="middle"), ValueError,
     "padding_side='middle'; use 'left' or 'right'"),
    (lambda m: m.to_tokens([]), ValueError, "no text given"),
    (lambda m: m.to_tokens("", prepend_bos=False), ValueError, "the text is empty and prepend_bos=False"),
    (lambda m: m.to_tokens(["a", 3]), TypeError, "text must be a string or a list of strings"),
    (lambda m: m.to_single_token(" the cat sat"), ValueError, "^' the cat sat' is \\d+ tokens, not one"),
    (lambda m: m(m.to_tokens("word " * 200, truncate=False)), ValueError,
     "sequence of \\d+ tokens is longer than the model's context n_ctx=64"),
], ids=["error-padding-middle", "error-no-text", "error-empty-text", "error-non-string",
        "error-multi-token-answer", "error-too-long"])
def test_bad_text(shipped, call, exc, message, one_line_error):
    with pytest.raises(exc) as e:
        call(shipped)
    one_line_error(e, message)


def test_model_without_tokenizer_refuses_text(tiny_model, one_line_error):  # error
    with pytest.raises(ValueError) as e:
        tiny_model("some text")
    one_line_error(e, "this model has no tokenizer: pass token ids")


@pytest.mark.parametrize("side", ["left", "right"], ids=["correct-left", "correct-right"])
def test_padding_sides(shipped, side):
    tokens = shipped.to_tokens(["the cat sat on the mat", "a"], padding_side=side)
    alone = shipped.to_tokens("a")[0]
    row = np.asarray(tokens[1])
    got = row[-len(alone):] if side == "left" else row[:len(alone)]
    np.testing.assert_array_equal(got, alone)


def test_long_text_truncates_to_n_ctx(shipped):  # correct
    assert shipped.to_tokens("word " * 200, truncate=True).shape == (1, shipped.cfg.n_ctx)


# ----------------------------------------------------------------------------- patching
def last_logit(logits):
    return logits[:, -1, 0].mean()


def vector_metric(logits):
    return logits[:, -1, 0]


@pytest.fixture(scope="module")
def patch_setup(tiny_model, tiny):
    tokens = tiny[2]
    corrupted = jnp.roll(tokens, 1, axis=1)
    _, cache = tiny_model.run_with_cache(tokens)
    return tiny_model, corrupted, cache


PATCH_ERRORS = [
    (dict(chunk_size=0), "chunk_size=0 must be a positive integer"),
    (dict(chunk_size=-3), "chunk_size=-3 must be a positive integer"),
    (dict(chunk_size=2.5), "chunk_size=2.5 must be a positive integer"),
    (dict(chunk_size=True), "chunk_size=True must be a positive integer"),
    (dict(logit_positions=(99,)), "logit_positions=\\(99,\\): give positions in \\[-6, 6\\)"),
    (dict(logit_positions=(-7,)), "logit_positions=\\(-7,\\)"),
    (dict(logit_positions=()), "logit_positions=\\(\\)"),
    (dict(index_df=np.array([[0, 6]])), "patch index column 1 has values 6..6, outside \\[0, 6\\)"),
    (dict(index_df=np.array([[0, -1]])), "patch index column 1 has values -1..-1"),
    (dict(index_df=np.array([[2, 0]])), "index column 'axis_0' has values outside \\[0, 2\\)"),
    (dict(index_df=np.array([[-1, 0]])), "index column 'axis_0' has values outside \\[0, 2\\)"),
    (dict(index_df=np.array([0, 1])), "index_df must be a non-empty \\[n, k\\] table of integers"),
    (dict(index_df=np.array([[0, 1.7]])), "index_df must be .* integers.*float64"),
    (dict(index_df=np.zeros((0, 2), np.int64)), "index_df must be a non-empty"),
    (dict(index_df=np.array([[0]])), "reads 2 index columns"),
]


@pytest.mark.parametrize("kwargs, message", PATCH_ERRORS,
                         ids=[f"error-patch-{i}" for i in range(len(PATCH_ERRORS))])
def test_bad_patching_options(patch_setup, kwargs, message, one_line_error):
    model, corrupted, cache = patch_setup
    with pytest.raises(ValueError) as e:
        patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False,
                                         **kwargs)
    one_line_error(e, message)


def test_patching_bad_token_id(patch_setup, one_line_error):  # error
    model, corrupted, cache = patch_setup
    with pytest.raises(ValueError) as e:
        patching.get_act_patch_resid_pre(model, corrupted.at[0, 0].set(-1), cache, last_logit,
                                         progress=False)
    one_line_error(e, "token id -1 is outside")


def test_patching_clean_of_another_length(patch_setup, one_line_error):  # error
    model, corrupted, cache = patch_setup
    with pytest.raises(ValueError) as e:
        patching.get_act_patch_resid_pre(model, corrupted[:, :5], cache, last_logit, progress=False)
    one_line_error(e, "clean hook_resid_pre has shape .* but the corrupted run's is")


def test_patching_metric_returning_a_vector(patch_setup, one_line_error):  # error
    model, corrupted, cache = patch_setup
    with pytest.raises(ValueError) as e:
        patching.get_act_patch_resid_pre(model, corrupted, cache, vector_metric, progress=False)
    one_line_error(e, "patching_metric must return a scalar")


@pytest.mark.slow
def test_index_df_rows_equal_the_full_sweep(patch_setup):  # correct
    model, corrupted, cache = patch_setup
    full = patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False)
    rows = np.array([[1, 5], [0, 0], [1, 2]])
    picked = patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, index_df=rows,
                                              progress=False)
    np.testing.assert_allclose(picked, full[rows[:, 0], rows[:, 1]], atol=1e-5)


@pytest.mark.parametrize("positions", [(-1,), (5,)], ids=["correct-last-neg", "correct-last-pos"])
def test_logit_positions_in_range_match_the_default(patch_setup, positions):
    model, corrupted, cache = patch_setup
    full = patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False)
    only = patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False,
                                            logit_positions=positions)
    np.testing.assert_allclose(only, full, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 3, 100], ids=["correct-chunk1", "correct-chunk3", "correct-chunk100"])
def test_chunk_sizes_agree(patch_setup, chunk):
    model, corrupted, cache = patch_setup
    full = patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False)
    np.testing.assert_allclose(
        patching.get_act_patch_resid_pre(model, corrupted, cache, last_logit, progress=False,
                                         chunk_size=chunk), full, atol=1e-5)


# ----------------------------------------------------------------------------- component masks
def mean_logit(logits):
    return logits[:, -1].mean()


@pytest.mark.parametrize("masks, reference, message", [
    ({"blocks.0.attn.hook_z": jnp.ones((2, 2))}, None, "masks cover every layer"),
    ({"pattern": jnp.ones((2, 2))}, None, "attn.hook_pattern is not laid out \\[batch, pos"),
    ({"z": jnp.ones((2, 2))}, {"post": 0.0}, "reference given for unmasked hooks \\['post'\\]"),
    ({"z": jnp.ones((2, 3))}, None,
     "mask for blocks.\\*.attn.hook_z has shape \\(2, 3\\); it needs \\[n_layers, \\*component\\] = \\(2, 2\\)"),
], ids=["error-mask-one-layer", "error-mask-pattern", "error-mask-reference", "error-mask-shape"])
def test_bad_component_masks(tiny, masks, reference, message, one_line_error):
    cfg, params, tokens = tiny
    with pytest.raises(ValueError) as e:
        M.masked_metric(params, cfg, tokens, mean_logit, masks, reference)
    one_line_error(e, message)


def test_all_ones_mask_is_the_model(tiny):  # correct
    cfg, params, tokens = tiny
    value = M.masked_metric(params, cfg, tokens, mean_logit, {"z": jnp.ones((2, 2))})
    np.testing.assert_allclose(value, mean_logit(jtlens.forward(params, tokens, cfg)), atol=1e-6)
