"""The pure sweep: chunking, sharding over devices, metric position analysis."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
import jtlens.patching as jp
from jtlens.patching.planning import metric_positions
from tests.io.test_sharding import run_on_host_devices

CFG = jtlens.Config(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new")


def logit_diff(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


def test_metric_positions_only_trusts_static_slices():
    shape = (2, 6, 50)
    assert metric_positions(logit_diff, shape) == (5,)
    assert metric_positions(lambda l: l[:, -3:].sum() + l[:, 0, 1].sum(), shape) == (0, 3, 4, 5)
    assert metric_positions(lambda l: l.sum(), shape) is None
    assert metric_positions(lambda l: l[jnp.arange(2), jnp.array([1, 4]), 3].sum(), shape) is None  # gather
    assert metric_positions(lambda l: l[:, ::2].sum() + jnp.abs(l).max(), shape) is None


@pytest.mark.slow
def test_chunking_and_explicit_positions_do_not_change_results():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    model = jtlens.HookedTransformer(CFG, params)
    rng = np.random.default_rng(0)
    clean, corrupted = rng.integers(0, 50, (2, 6)), rng.integers(0, 50, (2, 6))
    _, cache = model.run_with_cache(clean)
    full = jp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, lambda l: l.mean(), progress=False)
    some = jp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, lambda l: l.mean(), chunk_size=5,
                                                 progress=False)
    assert np.abs(np.asarray(full) - np.asarray(some)).max() <= 1e-6
    auto = jp.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, progress=False)
    explicit = jp.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, logit_positions=[-1],
                                          progress=False)
    assert np.abs(np.asarray(auto) - np.asarray(explicit)).max() <= 1e-6
    with pytest.raises(ValueError, match="same batch"):
        jp.get_act_patch_resid_pre(model, corrupted[:, :5], cache, logit_diff, progress=False)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    import jtlens, jtlens.patching as jp
    from jtlens.patching import sweep
    assert jax.device_count() == 8
    cfg = jtlens.Config(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new")
    model = jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    clean, corrupted = rng.integers(0, 50, (2, 6)), rng.integers(0, 50, (2, 6))
    _, cache = model.run_with_cache(clean)
    metric = lambda l: (l[:, -1, 3] - l[:, -1, 7]).mean()
    mesh = Mesh(np.array(jax.devices()), ("patches",))
    for fn, kw in [(jp.get_act_patch_resid_pre, {}), (jp.get_act_patch_attn_head_out_by_pos, {}),
                   (jp.path_patch, dict(receivers=["blocks.1.hook_resid_post"]))]:
        one = fn(model, corrupted, cache, metric, progress=False, chunk_size=8, **kw)
        eight = fn(model, corrupted, cache, metric, progress=False, chunk_size=8, sharding=mesh, **kw)
        assert np.abs(np.asarray(one) - np.asarray(eight)).max() <= 1e-6, fn.__name__
    # key/value reuse: the cached keys/values and corrupted logits are shared by every device
    rows = np.indices([2, 6]).reshape(2, -1).T
    reuse = [jp.activation_sweep(model.params, cfg, corrupted, cache["blocks.*.hook_resid_pre"], metric,
                                 "hook_resid_pre", jp.layer_pos_patch_setter, rows, progress=False,
                                 chunk_size=8, sharding=s, reuse_kv=True) for s in (None, mesh)]
    assert np.abs(reuse[0] - reuse[1]).max() <= 1e-6
    # the chunk really runs on all eight devices
    idx = jax.device_put(np.zeros((8, 2), np.int32), sweep.chunk_sharding(mesh))
    resid = sweep.corrupted_residuals(model.params, jnp.asarray(corrupted), cfg)["hook_resid_pre"]
    out = sweep._patch_chunk(model.params, resid, cache["blocks.*.hook_resid_pre"], jnp.int32(0), idx, cfg=cfg,
                             template="hook_resid_pre", setter=jp.layer_pos_patch_setter, metric=metric,
                             logit_positions=None, expand_to=None)
    assert len(out.sharding.device_set) == 8
    try:
        jp.get_act_patch_resid_pre(model, corrupted, cache, metric, chunk_size=6, sharding=mesh, progress=False)
        raise SystemExit("no error for a chunk that does not split over the devices")
    except ValueError as e:
        assert "multiple of the 8 devices" in str(e)
    print("SHARDED OK")
""")


@pytest.mark.slow
def test_sweeps_shard_over_eight_devices_with_the_same_numbers():
    assert "SHARDED OK" in run_on_host_devices(SHARDED, n=8, timeout=300)
