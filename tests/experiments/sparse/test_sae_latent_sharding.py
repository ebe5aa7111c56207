"""SAE training with latents split over a 4-device mesh (forced host devices, in a subprocess:
the device count is fixed when JAX starts) takes the same steps as on one device, and keeps
W_enc's columns and W_dec's rows split; latents that do not divide evenly are refused."""

import pytest

from tests.io.test_sharding import run_on_host_devices

CODE = """
import jax, numpy as np, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from jax.sharding import PartitionSpec as P
from jtlens.sharding import make_mesh
from jtlens.sparse.train import Hyper, TrainConfig, init_state, train_step
from jtlens.sparse.latent_sharding import shard_latents
mesh = make_mesh(model=4)
# two stacked TopK SAEs with dead latents (so AuxK's top-k runs over split latents), one JumpReLU
for arch, kw, hyper in [
        ("topk", dict(k_max=4, dead_feature_window=1),
         Hyper.stack([Hyper(lr=1e-2, k=2), Hyper(lr=1e-2, k=4)])),
        ("jumprelu", {}, jax.tree_util.tree_map(jnp.float32, Hyper(lr=1e-2, l0_coefficient=0.1)))]:
    tc = TrainConfig(arch, 8, 32, total_steps=5, **kw)
    ref = init_state(tc, hyper, jax.random.PRNGKey(0))
    split = shard_latents(init_state(tc, hyper, jax.random.PRNGKey(0)), mesh)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = jnp.asarray(rng.standard_normal((16, 8)).astype(np.float32))
        ref, _ = train_step(ref, hyper, x, tc)
        split, m = train_step(split, hyper, x, tc)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(split)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    lead = (None,) * (split.params["W_enc"].ndim - 2)
    assert split.params["W_enc"].sharding.spec == P(*lead, None, "model")
    assert split.params["W_dec"].sharding.spec == P(*lead, "model", None)
    assert split.opt_state.mu["W_dec"].sharding.spec == P(*lead, "model", None)
    assert split.params["W_enc"].addressable_shards[0].data.shape[-1] == 32 // 4
    print(arch, int(np.asarray(m["dead_features"]).sum()))
try:
    shard_latents(init_state(TrainConfig("standard", 8, 30, total_steps=1), Hyper(),
                             jax.random.PRNGKey(0)), mesh)
except ValueError as e:
    assert "do not split evenly" in str(e), e
    print("refused")
"""


@pytest.mark.slow
def test_latent_split_training_equals_one_device():
    out = run_on_host_devices(CODE, n=4, timeout=300).split()
    assert out[0] == "topk" and int(out[1]) > 0   # AuxK ran on dead latents
    assert out[2] == "jumprelu"
    assert out[4] == "refused"                      # 30 latents over 4 devices

