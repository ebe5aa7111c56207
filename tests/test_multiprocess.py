"""Two processes on localhost (jax.distributed, 4 CPU devices each, one 8-device mesh) run the
head sweep on sharded params and get the single-process result."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jtlens
from jtlens import patching as jp

ROOT = Path(__file__).resolve().parent.parent
CFG = jtlens.Config(n_layers=2, d_model=32, n_heads=8, d_head=4, d_mlp=64, n_ctx=16, d_vocab=64,
                    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                    gated_mlp=True, n_key_value_heads=4, initializer_range=0.2)
PROMPTS = np.random.default_rng(0).integers(0, 64, (2, 4, 6))


def metric(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


def head_sweep(model, sharding=None):
    clean, corrupted = PROMPTS
    _, cache = model.run_with_cache(clean)
    return jp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric, chunk_size=8,
                                                  sharding=sharding, progress=False)


CHILD = """
import json, sys
import jax
process_id, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           local_device_ids=list(range(4)), initialization_timeout=120)
jax.config.update("jax_default_matmul_precision", "highest")
import jtlens
from jtlens.sharding import make_mesh, to_host
from tests.test_multiprocess import CFG, head_sweep
assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
mesh = make_mesh(data=2, model=4)
params = jtlens.shard_params(jtlens.init_params(CFG, jax.random.PRNGKey(1)), CFG, mesh)
assert not params["blocks"]["attn"]["W_Q"].is_fully_addressable
result = to_host(head_sweep(jtlens.HookedTransformer(CFG, params), mesh))
print("RESULT", json.dumps(result.tolist()), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_sweep_like_one():
    jax.config.update("jax_default_matmul_precision", "highest")
    want = np.asarray(head_sweep(jtlens.HookedTransformer(CFG, jtlens.init_params(CFG, jax.random.PRNGKey(1)))))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    port = _free_port()
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(port)], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    outs = []
    try:
        deadline = time.monotonic() + 600
        for child in children:
            outs.append(child.communicate(timeout=max(1, deadline - time.monotonic())))
    finally:
        for child in children:  # a hung or failed peer must not outlive the test
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (out, err) in zip(children, outs):
        assert child.returncode == 0, err[-4000:]
    for out, _ in outs:  # every process holds the whole result
        got = np.asarray(json.loads(out.split("RESULT", 1)[1]))
        assert got.shape == want.shape == (CFG.n_layers, CFG.n_heads)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
