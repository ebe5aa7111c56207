"""Properties of the pure forward and the Hooks pytree (no reference needed: identities)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens

CFG = jtlens.Config(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=100, n_ctx=16,
                    act_fn="gelu_new", normalization_type="LN")
GQA = jtlens.Config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=100, n_ctx=16,
                    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                    n_key_value_heads=2, gated_mlp=True)
fwd = jax.jit(jtlens.forward, static_argnames="cfg")
fwc = jax.jit(jtlens.forward_with_cache, static_argnames="cfg")


@pytest.fixture(scope="module", params=[CFG, GQA], ids=["gpt2", "gqa"])
def setup(request):
    cfg = request.param
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, cfg.d_vocab)
    return cfg, params, tokens


@pytest.mark.slow
def test_all_false_mask_patch_is_no_patch(setup):
    cfg, params, tokens = setup
    base = fwd(params, tokens, cfg=cfg)
    value = jnp.ones((cfg.n_layers, 2, 10, cfg.n_heads, cfg.d_head))
    hooks = jtlens.Hooks(patch={"blocks.*.attn.hook_z": (value, jnp.zeros((cfg.n_layers, 1, 1, 1, 1), bool))})
    # where(False, v, act) is act exactly; the select only changes XLA's fusion: f32 rounding.
    np.testing.assert_allclose(fwd(params, tokens, cfg=cfg, hooks=hooks), base, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_zero_delta_is_identity(setup):
    cfg, params, tokens = setup
    base = fwd(params, tokens, cfg=cfg)
    hooks = jtlens.Hooks(add={"blocks.1.hook_resid_mid": jnp.zeros((2, 10, cfg.d_model)),
                              "hook_embed": jnp.zeros(cfg.d_model)})
    # x + 0 is exact, but the extra add changes XLA's fusion elsewhere: f32 rounding only.
    np.testing.assert_allclose(fwd(params, tokens, cfg=cfg, hooks=hooks), base, atol=1e-6, rtol=0)


def test_capture_leaves_logits_unchanged(setup):
    cfg, params, tokens = setup
    base = fwd(params, tokens, cfg=cfg)
    logits, cache = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=True))
    # Bit-identical for LN models; with rotary, XLA fuses the rotation differently when it is also
    # an output and the logits move by f32 rounding (~1e-6), never more.
    np.testing.assert_allclose(logits, base, atol=2e-6, rtol=0)
    if cfg.positional_embedding_type != "rotary":
        assert jnp.array_equal(logits, base)
    assert cache.keys() == jtlens.hook_names(cfg)


def test_patch_changes_only_downstream(setup):
    cfg, params, tokens = setup
    _, clean = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=True))
    patched_val = jnp.zeros((2, 10, cfg.d_model))
    _, cache = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(
        capture=True, patch={"blocks.1.hook_resid_pre": (patched_val, None)}))
    assert jnp.array_equal(cache["resid_post", 0], clean["resid_post", 0])
    assert jnp.array_equal(cache["resid_pre", 1], patched_val)
    assert not jnp.allclose(cache["resid_post", -1], clean["resid_post", -1])


@pytest.mark.slow
def test_vmap_over_masks_equals_separate_runs(setup):
    cfg, params, tokens = setup
    _, clean = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=["blocks.*.attn.hook_z"]))
    corrupted = jnp.roll(tokens, 1, axis=1)
    z = clean["blocks.*.attn.hook_z"]
    masks = jnp.zeros((8, cfg.n_layers, 1, 1, cfg.n_heads, 1), bool)
    for i in range(8):
        masks = masks.at[i, i % cfg.n_layers, 0, 0, i % cfg.n_heads, 0].set(True)
    run = lambda m: jtlens.forward(params, corrupted, cfg,
                                   hooks=jtlens.Hooks(patch={"blocks.*.attn.hook_z": (z, m)}))
    batched = jax.jit(jax.vmap(run))(masks)
    for i in range(8):
        np.testing.assert_allclose(batched[i], jax.jit(run)(masks[i]), atol=1e-5)


@pytest.mark.slow
def test_grad_through_add_delta_equals_finite_difference(setup):
    cfg, params, tokens = setup

    def metric(delta):
        logits = jtlens.forward(params, tokens, cfg, hooks=jtlens.Hooks(add={"blocks.1.hook_resid_pre": delta}))
        return logits[0, -1, 3] - logits[0, -1, 5]

    delta = jnp.zeros((2, 10, cfg.d_model))
    g = jax.jit(jax.grad(metric))(delta)
    direction = jax.random.normal(jax.random.PRNGKey(3), delta.shape)
    eps = 1e-3
    with jax.default_matmul_precision("highest"):
        fd = (metric(eps * direction) - metric(-eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g, direction)), float(fd), rtol=2e-3)


@pytest.mark.slow
def test_hook_fns_match_patch(setup):
    cfg, params, tokens = setup
    zero = lambda act, hook: act.at[:, :, 1].set(0.0)
    by_fn = fwd(params, tokens, cfg=cfg, hooks=jtlens.Hooks(fns={"blocks.1.attn.hook_z": zero}))
    mask = jnp.zeros((1, 1, cfg.n_heads, 1), bool).at[:, :, 1].set(True)
    by_patch = fwd(params, tokens, cfg=cfg, hooks=jtlens.Hooks(
        patch={"blocks.1.attn.hook_z": (jnp.zeros(()), mask)}))
    np.testing.assert_allclose(by_fn, by_patch, atol=1e-6)
    unrolled = jtlens.forward(params, tokens, cfg, hooks=jtlens.Hooks(fns={"blocks.1.attn.hook_z": zero}),
                              scan=False)
    np.testing.assert_allclose(unrolled, by_patch, atol=1e-5)


@pytest.mark.slow
def test_start_and_stop_at_layer_compose(setup):
    cfg, params, tokens = setup
    last = cfg.n_layers - 1
    resid = jtlens.forward(params, tokens, cfg, stop_at_layer=last)
    _, cache = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=["resid_pre"]))
    np.testing.assert_allclose(resid, cache["resid_pre", last], atol=1e-6)
    logits = jtlens.forward(params, resid, cfg, start_at_layer=last)
    np.testing.assert_allclose(logits, fwd(params, tokens, cfg=cfg), atol=1e-5)


@pytest.mark.slow
def test_cache_indexing_forms(setup):
    cfg, params, tokens = setup
    _, cache = fwc(params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=True))
    z1 = cache["blocks.1.attn.hook_z"]
    assert jnp.array_equal(cache["z", 1], z1)
    assert jnp.array_equal(cache["z", -1], cache[f"blocks.{cfg.n_layers - 1}.attn.hook_z"])
    assert jnp.array_equal(cache["blocks.*.attn.hook_z"][1], z1)
    assert jnp.array_equal(cache["pattern", 0, "attn"], cache["blocks.0.attn.hook_pattern"])
    assert jnp.array_equal(cache["scale"], cache["ln_final.hook_scale"])
    assert "blocks.0.hook_resid_pre" in cache and "blocks.0.attn.hook_result" not in cache
    leaves = jax.tree_util.tree_leaves(jax.device_get(cache))
    assert len(leaves) == len(cache.stacked) + len(cache.outer)
    single = cache.apply_slice_to_batch_dim(slice(0, 1)).remove_batch_dim()
    assert single["resid_pre", 0].shape == (10, cfg.d_model)


def test_unknown_hook_name_lists_nearest():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"Unknown hook name 'blocks.0.attn.hook_patern'.*blocks.0.attn.hook_pattern"):
        jtlens.forward(params, jnp.zeros((1, 3), int), CFG, hooks=jtlens.Hooks(capture=["blocks.0.attn.hook_patern"]))
    with pytest.raises(ValueError, match="hook_rot_q"):
        jtlens.forward(params, jnp.zeros((1, 3), int), CFG, hooks=jtlens.Hooks(capture=["blocks.0.attn.hook_rot_q"]))
    with pytest.raises(ValueError, match="out of range"):
        jtlens.forward(params, jnp.zeros((1, 3), int), CFG, hooks=jtlens.Hooks(capture=["blocks.7.hook_resid_pre"]))


def test_wrong_patch_shape_names_hook_and_shapes():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    bad = jtlens.Hooks(patch={"blocks.0.hook_resid_pre": (jnp.zeros((1, 3, 7)), None)})
    with pytest.raises(ValueError, match=r"blocks.0.hook_resid_pre.*\(1, 3, 7\).*\(1, 3, 32\)"):
        jtlens.forward(params, jnp.zeros((1, 3), int), CFG, hooks=bad)


def test_bad_tokens_are_clear_errors():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        jtlens.forward(params, jnp.full((1, 3), 100), CFG)
    with pytest.raises(ValueError, match="longer than the model's context"):
        jtlens.forward(params, jnp.zeros((1, 17), int), CFG)


@pytest.mark.slow
def test_compile_does_not_grow_with_depth():
    """The blocks are one scanned body: the jaxpr has the same size at 2 and 24 layers."""
    sizes = []
    for n in (2, 24):
        cfg = CFG.replace(n_layers=n)
        params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
        jaxpr = jax.make_jaxpr(lambda p, t: jtlens.forward(p, t, cfg))(params, jnp.zeros((1, 4), int))
        sizes.append(len(str(jaxpr)))
    assert abs(sizes[0] - sizes[1]) < 200


@pytest.mark.slow
def test_params_round_trip_through_flax_serialization(setup):
    from flax import serialization

    cfg, params, tokens = setup
    template = jax.tree_util.tree_map(jnp.zeros_like, params)
    restored = serialization.from_bytes(template, serialization.to_bytes(params))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, params, restored))


@pytest.mark.slow
def test_bfloat16_forward_tracks_float32(setup):
    cfg, params, tokens = setup
    ref = jax.nn.log_softmax(fwd(params, tokens, cfg=cfg))
    cfg16 = cfg.replace(dtype="bfloat16")
    params16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    out = fwd(params16, tokens, cfg=cfg16)
    assert out.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits: log-probs of unit scale agree to a few 1e-2.
    assert float(jnp.abs(jax.nn.log_softmax(out.astype(jnp.float32)) - ref).max()) < 0.1
